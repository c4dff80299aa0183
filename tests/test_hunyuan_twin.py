"""HunyuanVideo's test fixtures (tests/hunyuan_reference.py): the host's model (20 double + 40 single
blocks, shrunk in width) agrees with its diffusers twin, and RF-Solver-Edit's official video edit on
the twin is finite and moved by the injection."""
import pytest
import torch

import harness
import hunyuan_reference as ref

STEPS, INJECT = 4, 2


@pytest.fixture(scope="module")
def hunyuan():
    model = ref.make_hunyuan_video()
    return model, ref.diffusers_twin(model)


def test_the_diffusers_twin_gives_the_host_velocity(hunyuan):
    """One velocity of the host model (extra_conds, apply_model) on a random 3-latent-frame video vs the
    twin's, at embedded guidance 6 (measured 5.6e-7)."""
    model, net = hunyuan
    assert ref.assert_twin_agrees(model, net=net) < 1e-5


def test_the_reference_video_edit_is_finite_and_moved_by_injection(hunyuan):
    """3 latent frames of 8x8, 4 steps of the official (shift 7) schedule, inject 2, guidance 6, both prompts padded
    to the official 256 tokens: finite, and more than 1% away from the same edit without injection (measured 3.4%).
    A prompt longer than 256 tokens is refused (the official tokenizer cuts it there)."""
    model, net = hunyuan
    source = ref.video_latent(seed=2, frames=3, size=8)
    source_prompt, target = ref.conditioning_for(model, seed=5), ref.conditioning_for(model, seed=1)
    sigmas = ref.official_sigmas(STEPS)
    out = ref.rf_solver_edit_video(model, source, source_prompt, target, sigmas, INJECT, ref.GUIDANCE, net=net)
    plain = ref.rf_solver_edit_video(model, source, source_prompt, target, sigmas, 0, ref.GUIDANCE, net=net)
    assert out.shape == source.shape and torch.isfinite(out).all()
    assert harness.rel(out, plain) > 0.01
    with pytest.raises(ValueError, match="the official code cuts prompts at 256"):
        ref.rf_solver_edit_video(model, source, ref.conditioning_for(model, seed=5, tokens=257), target, sigmas,
                                 INJECT, ref.GUIDANCE, net=net)
