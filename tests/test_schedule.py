"""Schedules and sigma keys (docs/pnp.md, sections 1, 2, 4)."""
import pytest
import torch

import harness
from comfyui_pnp.pnp_injection import PnPError, schedule
from comfyui_pnp.pnp_injection.unet import schedule as unet_schedule


@pytest.fixture(scope="module")
def model_sampling():
    return harness.make_model("sd15").get_model_object("model_sampling")


def timesteps(ms, sigmas):
    return [int(ms.timestep(s)) for s in sigmas]


def test_ddim_uniform_50_lands_on_official_timesteps(model_sampling):
    sigmas = schedule.sampling_sigmas(model_sampling, "ddim_uniform", 50)
    assert timesteps(model_sampling, sigmas[:-1]) == list(range(981, 0, -20))
    assert float(sigmas[-1]) == 0.0


def test_faithful_inversion_visits_every_timestep_up_to_sigma_0(model_sampling):
    sigmas = schedule.sampling_sigmas(model_sampling, "ddim_uniform", 50)
    fine, record = unet_schedule.inversion_sigmas(model_sampling, sigmas, 999)
    assert timesteps(model_sampling, fine) == list(range(0, 982))  # starts at timestep 0
    assert [timesteps(model_sampling, fine[[i]])[0] for i in record] == list(range(1, 982, 20))


def test_fast_inversion_is_the_sampling_schedule(model_sampling):
    sigmas = schedule.sampling_sigmas(model_sampling, "ddim_uniform", 50)
    fine, record = unet_schedule.inversion_sigmas(model_sampling, sigmas, 50)
    assert timesteps(model_sampling, fine) == [0] + list(range(1, 982, 20))
    assert record == list(range(1, 51))


def test_intermediate_inversion_contains_every_sampling_sigma(model_sampling):
    sigmas = schedule.sampling_sigmas(model_sampling, "karras", 12)
    fine, record = unet_schedule.inversion_sigmas(model_sampling, sigmas, 200)
    assert len(fine) - 1 == 200
    assert torch.all(fine[1:] > fine[:-1])
    assert torch.allclose(fine[record], sigmas[:-1].flip(0))


def test_inversion_steps_below_steps_is_refused(model_sampling):
    sigmas = schedule.sampling_sigmas(model_sampling, "ddim_uniform", 20)
    with pytest.raises(PnPError, match="Raise `inversion_steps` to at least 20"):
        unet_schedule.inversion_sigmas(model_sampling, sigmas, 10)


def test_injected_steps_follow_the_official_rule():
    assert schedule.injected_steps(50, 0.8, "f") == 40
    assert schedule.injected_steps(50, 0.5, "a") == 25
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(PnPError, match=r"give a value in \[0, 1\]"):
            schedule.injected_steps(50, bad, "feature_injection")


def test_step_keys_by_sigma_and_between_points(model_sampling):
    sigmas = schedule.sampling_sigmas(model_sampling, "ddim_uniform", 10)
    for i in range(10):
        assert schedule.step_at(sigmas, float(sigmas[i])) == i
    mid = float((sigmas[2] + sigmas[3]) / 2)  # a second-order sampler's midpoint: the step being taken
    assert schedule.step_at(sigmas, mid) == 2
    assert schedule.step_at(sigmas, float(sigmas[0]) * 1.5) is None
