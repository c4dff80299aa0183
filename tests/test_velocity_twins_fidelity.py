"""Fidelity of the velocity edits on SD3 (classifier-free guidance) and Wan 2.1 video: the pack's nodes on shrunk
real host models (tests/rf_families.py) against the independent references of tests/velocity_reference.py run on
diffusers' SD3Transformer2DModel and WanTransformer3DModel with the same weights (tests/rf_twins.py). At the
official settings and away from them (step counts not dividing 1000, a non-square 6x10 latent (3x5 tokens), two
target prompts, 3 latent frames, CFG on and off), with a mutation per comparison that shows it can fail. The
host batches cond and uncond into one model call under CFG; the velocities stay exact through it."""
from __future__ import annotations

import pytest
import torch
from comfy_extras.nodes_custom_sampler import CFGGuider, RandomNoise, SamplerCustomAdvanced

import rf_families as rf
import rf_twins
import velocity_reference as ref
from comfyui_pnp.nodes import velocity as nodes
from host import run_node

TOLERANCE = 1e-3  # relative, model space (measured: about 1e-6)


# Fewer blocks than the real models (the edits read velocities only; the twins' agreement at the real block
# counts is tests/test_rf_families.py's): SD3.5-medium's layout with 4 blocks (2 with dual attention), Wan 2.1
# 1.3B's with 6.
@pytest.fixture(scope="module")
def sd3():
    model = rf.make("sd3", num_blocks=4, x_block_self_attn_layers=[0, 1])
    return model, rf_twins.make_twin(model)


@pytest.fixture(scope="module")
def wan():
    model = rf.make("wan21_t2v", num_layers=6)
    return model, rf_twins.make_twin(model)


def side(twin, model, conditioning, guidance=None):
    """A reference velocity callable (x, t) on the twin."""
    return lambda x, t: rf_twins.twin_velocity(twin, model, x, float(t.reshape(-1)[0]), conditioning, guidance)


def cat_prompts(*conditionings):
    context = torch.cat([c[0][0] for c in conditionings])
    extras = dict(conditionings[0][0][1])
    if extras.get("pooled_output") is not None:
        extras["pooled_output"] = torch.cat([c[0][1]["pooled_output"] for c in conditionings])
    return [[context, extras]]


def draws(shape, seed, count):
    """FlowEdit's noise as the nodes draw it: Random Noise's (the seed's first draw), then the same generator."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(count)]


def model_space(model, latent):
    return model.model.process_latent_in(latent)


def rel(a, b):
    return rf_twins.rel(a, b)


def counting(model):
    rows = []
    handle = model.model.diffusion_model.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    return rows, handle


@pytest.mark.parametrize("case", ["official", "away"])
def test_flowedit_is_the_official_flowedit_sd3(sd3, case):
    """SD3_exp.yaml (50 steps, n_max 33, CFG 3.5 / 13.5 with a negative prompt) and away (13 steps, n_max 9, n_min 2,
    n_avg 2, CFG 2 / 6, two target prompts). The host evaluates each side's cond and uncond in ONE call of 2 rows
    (counted) and matches the reference, which evaluates them apart. Mutation: the reference with the scales
    swapped differs by more than 1%."""
    model, twin = sd3
    steps, n_max, n_min, n_avg, scales = (50, 33, 0, 1, (3.5, 13.5)) if case == "official" else (13, 9, 2, 2, (2.0, 6.0))
    latent = rf.latent(model, seed=2)
    source, negative = rf.conditioning(model, seed=1), rf.conditioning(model, seed=8)
    targets = [rf.conditioning(model, seed=5)] + ([] if case == "official" else [rf.conditioning(model, seed=6)])
    rows, handle = counting(model)
    try:
        out = nodes.PnPFlowEdit.execute(model, {"samples": latent}, source, cat_prompts(*targets), steps, n_max, n_min,
                                        n_avg, *scales, 17, negative=negative).result[0]["samples"]
    finally:
        handle.remove()
    assert rows and all(r == 2 * len(targets) for r in rows)  # each side's cond and uncond share a call
    x_src, noise = model_space(model, latent), draws(latent.shape, 17, n_max * n_avg + 1)
    for row, target in enumerate(targets):
        expected = ref.flowedit_sd3_cfg(x_src, side(twin, model, source), side(twin, model, negative),
                                        side(twin, model, target), side(twin, model, negative), noise,
                                        src_guidance_scale=scales[0], tar_guidance_scale=scales[1],
                                        T_steps=steps, n_avg=n_avg, n_min=n_min, n_max=n_max)
        assert rel(model_space(model, out[row:row + 1]), expected) < TOLERANCE
    swapped = ref.flowedit_sd3_cfg(x_src, side(twin, model, source), side(twin, model, negative), side(twin, model, targets[0]),
                                   side(twin, model, negative), noise, src_guidance_scale=scales[1],
                                   tar_guidance_scale=scales[0], T_steps=steps, n_avg=n_avg,
                                   n_min=n_min, n_max=n_max)
    assert rel(model_space(model, out[:1]), swapped) > 0.01


def test_flowedit_without_cfg_on_sd3(sd3):
    """CFG off (scales 1, no negative prompt: one row per call): the reference on the plain velocities."""
    model, twin = sd3
    latent = rf.latent(model, seed=3)
    source, target = rf.conditioning(model, seed=1), rf.conditioning(model, seed=5)
    out = nodes.PnPFlowEdit.execute(model, {"samples": latent}, source, target, 7, 5, 0, 1, 1.0, 1.0,
                                    4).result[0]["samples"]
    expected = ref.flowedit_sd3(model_space(model, latent), side(twin, model, source), side(twin, model, target),
                                draws(latent.shape, 4, 5), T_steps=7, n_max=5)
    assert rel(model_space(model, out), expected) < TOLERANCE


@pytest.mark.parametrize("case", ["official", "away"])
def test_uniedit_is_the_official_diffusers_schedulers_on_sd3(sd3, case):
    """demo_edit.py on SD3 (15 steps, alpha 0.6, omega 5, guidance 1, the empty inversion prompt; the schedulers'
    rule) and away (11 steps, alpha 0.7, omega 2, two target prompts). Mutation: the FLUX code's rule on the same
    run differs by more than 1%."""
    model, twin = sd3
    steps, alpha, omega = (15, 0.6, 5.0) if case == "official" else (11, 0.7, 2.0)
    latent = rf.latent(model, seed=4)
    empty, source = rf.conditioning(model, seed=9, tokens=4), rf.conditioning(model, seed=1)
    targets = [rf.conditioning(model, seed=5)] + ([] if case == "official" else [rf.conditioning(model, seed=6)])
    out = nodes.PnPUniEdit.execute(model, {"samples": latent}, empty, source, cat_prompts(*targets), steps, alpha,
                                   omega, -1, "auto").result[0]["samples"]
    x0 = model_space(model, latent)
    for row, target in enumerate(targets):
        expected = ref.unieditflow_diffusers(x0, side(twin, model, empty), side(twin, model, source),
                                             side(twin, model, target), pipeline="sd3", num_inference_steps=steps,
                                             alpha=alpha, omega=omega)[:1]
        assert rel(model_space(model, out[row:row + 1]), expected) < TOLERANCE
    flux_rule = nodes.PnPUniEdit.execute(model, {"samples": latent}, empty, source, targets[0], steps, alpha, omega,
                                         -1, "flux").result[0]["samples"]
    assert rel(flux_rule, out[:1]) > 0.01


@pytest.mark.parametrize("case", ["official", "away"])
def test_uniedit_is_the_official_wan_video_demo(wan, case):
    """demo_wan_video_edit.py (15 steps, alpha 0.6, omega 5, flow shift 3, guidance 1) on 3 latent frames of 6x10,
    and away (9 steps, alpha 0.8, omega 4, 2 latent frames). Mutation: a reference with omega 0 differs by more
    than 1%."""
    model, twin = wan
    steps, alpha, omega, frames = (15, 0.6, 5.0, 3) if case == "official" else (9, 0.8, 4.0, 2)
    latent = rf.latent(model, seed=5, frames=frames)
    empty, source, target = (rf.conditioning(model, seed=9, tokens=4), rf.conditioning(model, seed=1),
                             rf.conditioning(model, seed=5))
    out = nodes.PnPUniEdit.execute(model, {"samples": latent}, empty, source, target, steps, alpha, omega, -1,
                                   "auto").result[0]["samples"]
    x0 = model_space(model, latent)
    args = (x0, side(twin, model, empty), side(twin, model, source), side(twin, model, target))
    expected = ref.unieditflow_diffusers(*args, pipeline="wan", num_inference_steps=steps, alpha=alpha, omega=omega)
    assert out.shape == latent.shape and rel(model_space(model, out), expected[:1]) < TOLERANCE
    no_correction = ref.unieditflow_diffusers(*args, pipeline="wan", num_inference_steps=steps, alpha=alpha, omega=0.0)
    assert rel(model_space(model, out), no_correction[:1]) > 0.01


@pytest.mark.parametrize("family", ["sd3", "wan"])
def test_flowedit_and_rf_inversion_on_the_official_schedules_through_samplercustomadvanced(sd3, wan, family):
    """The parts in SamplerCustomAdvanced with the reference's schedule as SIGMAS: FlowEdit (7 steps, n_max 5, CFG
    3.5 / 13.5 with the host's cond and uncond in one call) and RF-Inversion (7 steps, gamma 0.5, eta 0.9 over
    [0, 0.25), CFG 1) on SD3 and on 3 latent frames of Wan 2.1, against the references on the twins. Mutation:
    RF-Inversion's pull toward the source moved one step later differs by more than 0.1%."""
    model, twin = sd3 if family == "sd3" else wan
    latent = rf.latent(model, seed=6, frames=None if family == "sd3" else 3)
    source, target, negative, empty = (rf.conditioning(model, seed=1), rf.conditioning(model, seed=5),
                                       rf.conditioning(model, seed=8), rf.conditioning(model, seed=9, tokens=4))
    x0 = model_space(model, latent)
    _, sigmas = ref.flowedit_sd3_schedule(7)
    guider = nodes.PnPEditGuider.execute(model, source, target, 3.5, 13.5, negative=negative).result[0]
    sampler = nodes.PnPFlowEditSampler.execute(5, 0, 1).result[0]
    out = run_node(SamplerCustomAdvanced, run_node(RandomNoise, 21)[0], guider, sampler, sigmas,
                   {"samples": latent})[0]["samples"]
    expected = ref.flowedit_sd3_cfg(x0, side(twin, model, source), side(twin, model, negative), side(twin, model, target),
                                    side(twin, model, negative), draws(latent.shape, 21, 6), src_guidance_scale=3.5,
                                    tar_guidance_scale=13.5, T_steps=7,
                                    n_max=5)
    assert rel(model_space(model, out), expected) < TOLERANCE

    y1 = draws(latent.shape, 22, 1)[0]
    inversion, noise, edit_sigmas = nodes.PnPRFInversionInvert.execute(model, {"samples": latent}, empty,
                                                                       run_node(RandomNoise, 22)[0], sigmas, 0.5,
                                                                       0.0).result
    target_guider = run_node(CFGGuider, model, target, negative, 1.0)[0]
    rf_sampler = nodes.PnPRFInversionSampler.execute(inversion, 0.9, 0.0, 0.25).result[0]
    out = run_node(SamplerCustomAdvanced, noise, target_guider, rf_sampler, edit_sigmas, {"samples": latent})[0]["samples"]
    inverted = inversion_reference(x0, side(twin, model, empty), y1, sigmas, 0.5)
    expected = edit_reference(inverted, x0, side(twin, model, target), sigmas, 0.9, range(0, 1))
    assert rel(model_space(model, out), expected) < TOLERANCE
    later = edit_reference(inverted, x0, side(twin, model, target), sigmas, 0.9, range(1, 2))
    assert rel(model_space(model, out), later) > 1e-3


def inversion_reference(y0, v_inv, y1, sigmas, gamma):
    """RF-Inversion's `invert` loop (velocity_reference.rf_inversion_invert) on a given schedule."""
    n = len(sigmas)
    y = y0
    for i in range(n - 1):
        t = torch.tensor(i / n)
        u = v_inv(y, t.reshape(1))
        y = y + (u + gamma * ((y1 - y) / (1 - t) - u)) * (sigmas[i] - sigmas[i + 1])
    return y


def edit_reference(inverted, y0, v_edit, sigmas, eta, controlled):
    """RF-Inversion's `__call__` loop (velocity_reference.rf_inversion_edit) on a given schedule."""
    x = inverted
    for i in range(len(sigmas) - 1):
        v_t = -v_edit(x, sigmas[i].reshape(1))
        if i in controlled:
            v_t = v_t + eta * ((y0 - x) / sigmas[i] - v_t)
        x = x + v_t * (sigmas[i] - sigmas[i + 1])
    return x
