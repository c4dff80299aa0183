"""Fidelity: our Flux nodes against an independent implementation of RF-Solver-Edit.

The reference (tests/flux_reference.py, `RFSolverEdit`) is written from the official algorithm (wangjiangshan0725/RF-Solver-Edit,
FLUX_Image_Edit/src/flux/sampling.py and modules/layers.py) on a diffusers
FluxTransformer2DModel that holds the same random weights as the ComfyUI Flux (mapped with
ComfyUI's own key mapping, comfy.utils.flux_to_diffusers): packed tokens, the official
get_schedule, inversion from t = 0 to 1 at guidance 1 with the RF-Solver step, the values of
single blocks 20-37 kept in a dict keyed like the official one (the inversion under the
step's upper end, sampling under its current level, first and second evaluation apart) and
put back while sampling the target at guidance 5. Fails if any of schedule, solver, layers,
token range, keys or guidance differs.
"""
import math

import pytest
import torch

import flux_harness as fh
import harness
from flux_reference import official_schedule, rf_solver_edit as reference_edit
from comfyui_pnp.nodes.flux import PnPFluxApplyInjection, PnPFluxInversion, PnPFluxSampler

pytest.importorskip("diffusers")

STEPS, INJECT = 25, 20            # official defaults (edit.py: --num_steps 25, --inject 20)


def test_schedule_is_the_official_get_schedule():
    """The Flux model's own simple schedule, shifted for the image size as ModelSamplingFlux
    does, is the official get_schedule(25, image_seq_len). Fails if either differs."""
    for size in (16, 128):  # 64 and 4096 image tokens
        model = fh.with_shift(fh.make_flux(single=1, double=1), size * 8, size * 8)
        import comfy.samplers

        ours = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS)
        official = torch.tensor(official_schedule(STEPS, (size // 2) ** 2))
        assert torch.allclose(ours.float(), official.float(), rtol=1e-5, atol=1e-6), (ours, official)


@pytest.mark.slow  # the official defaults end to end (about 35 s); the 15-step edits below test the same machinery
def test_nodes_match_an_independent_diffusers_implementation(record_property):
    model = fh.with_shift(fh.make_flux(seed=3), 128, 128)
    source, source_prompt, target_prompt = fh.latent(), fh.conditioning(seed=5), fh.conditioning(seed=1)

    expected = reference_edit(model, source, source_prompt, target_prompt, INJECT)
    (bank,) = PnPFluxInversion.execute(model, {"samples": source}, source_prompt, STEPS, INJECT, 1.0,
                                       "rf-solver-edit", "rf_solver", "simple").result
    (got,) = PnPFluxSampler.execute(model, bank, target_prompt, 5.0, INJECT).result
    error = harness.rel(got["samples"], expected)
    record_property("relative_error", error)
    print(f"\nFlux RF-Solver-Edit, {STEPS} steps, inject {INJECT}: relative error {error:.2e}")
    assert error < 1e-3

    (plain,) = PnPFluxSampler.execute(model, bank, target_prompt, 5.0, 0).result
    effect = harness.rel(got["samples"], plain["samples"])
    record_property("injection_effect", effect)
    print(f"injection effect: {effect:.3f} relative")
    assert effect > 0.10


@pytest.mark.parametrize("steps", [15, 28, 30])
@pytest.mark.parametrize("size", [(24, 16), (16, 40), (128, 128)])
def test_official_schedule_at_any_step_count_and_size(steps, size):
    """The `official` schedule is get_schedule(steps, image tokens) for every step count and
    image size, on a model without ModelSamplingFlux. ComfyUI's `simple` (a 10,000-entry table)
    is not, at these counts: that is why `official` exists. Fails if the shift, the token
    count (odd sizes pad) or the spacing differs."""
    from comfyui_pnp.pnp_injection.flow import schedule as flux_schedule

    model = fh.make_flux(single=1, double=1)
    shape = (1, 16, *size)
    ours = flux_schedule.sampling_sigmas(model, "official", steps, shape)
    official = torch.tensor(official_schedule(steps, math.ceil(size[0] / 2) * math.ceil(size[1] / 2)))
    assert len(ours) == steps + 1
    assert torch.allclose(ours, official, rtol=1e-6, atol=1e-7), (ours - official).abs().max()

    import comfy.samplers
    shifted = fh.with_shift(model, size[1] * 8, size[0] * 8)
    simple = comfy.samplers.calculate_sigmas(shifted.get_model_object("model_sampling"), "simple", steps).float()
    assert (simple - official).abs().max() > 1e-5  # the table's rounding: the defect `official` removes


EDIT_STEPS, EDIT_INJECT = 15, 12  # the non-square edit below


@pytest.fixture(scope="module")
def edit_at_15_steps():
    """What both routes of the test below compare with, computed once: the independent RF-Solver-Edit
    of a 24x16 latent at 15 steps (inject 12) on a model without ModelSamplingFlux, our bank of that
    source (PnP Flux/Chroma/HunyuanVideo Inversion, `official` schedule) and PnP Flux/Chroma/HunyuanVideo Sampler's plain run (inject 0)."""
    model = fh.make_flux(seed=3)
    source = fh.latent(size=24)[..., :16]
    source_prompt, target_prompt = fh.conditioning(seed=5), fh.conditioning(seed=1)
    expected = reference_edit(model, source, source_prompt, target_prompt, EDIT_INJECT, EDIT_STEPS)
    (bank,) = PnPFluxInversion.execute(model, {"samples": source}, source_prompt, EDIT_STEPS, EDIT_INJECT, 1.0,
                                       "rf-solver-edit", "rf_solver", "official").result
    (plain,) = PnPFluxSampler.execute(model, bank, target_prompt, 5.0, 0).result
    return model, bank, target_prompt, expected, plain["samples"]


@pytest.mark.parametrize("route", ["sampler", "advanced"])
def test_an_edit_at_15_steps_on_a_non_square_latent_matches_the_official_algorithm(route, edit_at_15_steps,
                                                                                   record_property):
    """15 steps on a 24x16 latent, where ComfyUI's simple schedule is off by 2.8e-3: both routes
    (PnP Flux/Chroma/HunyuanVideo Sampler, and SamplerCustomAdvanced with PnP Flux/Chroma/HunyuanVideo Noise and the RF-Solver sampler)
    equal an independent RF-Solver-Edit to 1e-3, on a model without ModelSamplingFlux. Also
    shows that injection moves the result. The reference, the bank and the plain run are shared
    by the two routes (module fixture); each route samples from the bank itself."""
    model, bank, target_prompt, expected, plain = edit_at_15_steps
    if route == "sampler":
        (out,) = PnPFluxSampler.execute(model, bank, target_prompt, 5.0, EDIT_INJECT).result
        got = out["samples"]
    else:
        (patched,) = PnPFluxApplyInjection.execute(model, bank, EDIT_INJECT).result
        got = fh.custom_advanced(patched, bank, target_prompt)
    error = harness.rel(got, expected)
    record_property("relative_error", error)
    print(f"\nFlux RF-Solver-Edit, {EDIT_STEPS} steps on 24x16, {route}: relative error {error:.2e}")
    assert error < 1e-3
    assert harness.rel(got, plain) > 0.10
