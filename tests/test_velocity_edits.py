"""The velocity edits (FlowEdit, UniEdit-Flow, RF-Inversion) as nodes on a shrunk real Flux.1: both routes agree,
the relations each method must satisfy, batches, masks, evaluation counts and the refusals that come before any
model work. Fidelity to the official code is tests/test_velocity_fidelity.py; every family, test_velocity_families.py."""
from __future__ import annotations

import pytest
import torch
from comfy_extras.nodes_custom_sampler import (BasicGuider, DisableNoise, KSamplerSelect, RandomNoise,
                                               SamplerCustomAdvanced)
from comfy_extras.nodes_flux import FluxGuidance

import comfy.model_management
import comfy.patcher_extension as ext
import flux_harness as fh
import harness
from comfyui_pnp.nodes import velocity as nodes
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.passes import run_loop
from comfyui_pnp.pnp_injection.velocity import calls
from host import run_node

STEPS = 6


@pytest.fixture(scope="module")
def flux():
    return fh.make_flux(double=2, single=4)


@pytest.fixture(scope="module")
def prompts():
    return {"source": fh.conditioning(seed=1), "target": fh.conditioning(seed=5), "empty": fh.conditioning(seed=9, tokens=4),
            "pair": fh.conditioning(seed=5, batch=2)}


def source(size=(8, 12)):
    return {"samples": fh.latent(size=16)[..., : size[0], : size[1]].contiguous()}


def flowedit(model, latent, p, target=None, **kw):
    args = dict(steps=STEPS, n_max=5, n_min=0, n_avg=1, source_scale=-1, target_scale=-1, seed=3)
    args.update(kw)
    return nodes.PnPFlowEdit.execute(model, latent, p["source"], target or p["target"], args["steps"], args["n_max"],
                                     args["n_min"], args["n_avg"], args["source_scale"], args["target_scale"],
                                     args["seed"], mask=kw.get("mask")).result[0]["samples"]


def uniedit(model, latent, p, target=None, **kw):
    return nodes.PnPUniEdit.execute(model, latent, p["empty"], p["source"], target or p["target"], kw.get("steps", STEPS),
                                    kw.get("alpha", 0.6), kw.get("omega", 5.0), -1, "auto",
                                    mask=kw.get("mask")).result[0]["samples"]


def rf_inversion(model, latent, p, target=None, **kw):
    return nodes.PnPRFInversion.execute(model, latent, p["empty"], target or p["target"], kw.get("steps", STEPS), 0.5,
                                        0.9, 0.0, 0.25, -1, 4, mask=kw.get("mask")).result[0]["samples"]


EDITS = {"flowedit": flowedit, "uniedit": uniedit, "rf_inversion": rf_inversion}


def test_the_node_and_the_samplercustomadvanced_route_give_the_same_edit(flux, prompts):
    """Each one-node edit equals its parts in SamplerCustomAdvanced (edit guider or BasicGuider, the method's
    SAMPLER, Random Noise or the inversion's noise, PnP Edit Sigmas), bit for bit: fails if either route departs
    from the other (a schedule, a scale, a noise draw, a start latent)."""
    latent, p = source(), prompts
    guider = nodes.PnPEditGuider.execute(flux, p["source"], p["target"], -1, -1).result[0]

    sigmas = nodes.PnPEditSigmas.execute(flux, latent, "FlowEdit", STEPS).result[0]
    sampler = nodes.PnPFlowEditSampler.execute(5, 0, 1).result[0]
    advanced = run_node(SamplerCustomAdvanced, run_node(RandomNoise, 3)[0], guider, sampler, sigmas, latent)[0]
    assert torch.equal(advanced["samples"], flowedit(flux, latent, p))

    sigmas = nodes.PnPEditSigmas.execute(flux, latent, "UniEdit-Flow", STEPS).result[0]
    inversion, noise, edit_sigmas = nodes.PnPUniInversion.execute(flux, latent, p["empty"], sigmas, 0.6, "auto",
                                                                  1.0).result
    sampler = nodes.PnPUniEditSampler.execute(inversion, 5.0).result[0]
    advanced = run_node(SamplerCustomAdvanced, noise, guider, sampler, edit_sigmas, latent)[0]
    assert torch.equal(advanced["samples"], uniedit(flux, latent, p))

    sigmas = nodes.PnPEditSigmas.execute(flux, latent, "RF-Inversion", STEPS).result[0]
    inversion, noise, edit_sigmas = nodes.PnPRFInversionInvert.execute(flux, latent, p["empty"],
                                                                       run_node(RandomNoise, 4)[0], sigmas, 0.5,
                                                                       0.0).result
    sampler = nodes.PnPRFInversionSampler.execute(inversion, 0.9, 0.0, 0.25).result[0]
    target = run_node(BasicGuider, flux, run_node(FluxGuidance, p["target"], 3.5)[0])[0]
    advanced = run_node(SamplerCustomAdvanced, noise, target, sampler, edit_sigmas, latent)[0]
    assert torch.equal(advanced["samples"], rf_inversion(flux, latent, p))


def test_flowedit_of_the_source_prompt_is_the_source(flux, prompts):
    """With the source prompt as the target at the same scale, every velocity difference is 0 and FlowEdit returns
    the source (measured 2e-6); the real edit moves it by more than 10% (measured ~1.5x). Fails if the edit's
    start, its noise coupling z_tar = z + z_src - x_src, or the difference's sign is wrong."""
    latent = source()
    same = flowedit(flux, latent, prompts, target=prompts["source"], source_scale=2.0, target_scale=2.0)
    assert harness.rel(same, latent["samples"]) < 1e-5
    assert harness.rel(flowedit(flux, latent, prompts), latent["samples"]) > 0.1


@pytest.mark.parametrize("method", list(EDITS))
def test_a_batch_of_target_prompts_gives_each_prompt_its_edit(flux, prompts, method):
    """Two target prompts give two edits; row r equals the edit with prompt r alone (FlowEdit draws one noise per
    source image, shared by its prompts). Fails if rows mix, if the batch changes the noise, or if only the first
    prompt is used (the host truncates a conditioning batch larger than the latent's)."""
    latent, edit = source(), EDITS[method]
    both = edit(flux, latent, prompts, target=prompts["pair"])
    assert both.shape[0] == 2
    for row in range(2):
        context, extras = prompts["pair"][0]
        alone = edit(flux, latent, prompts, target=[[context[row:row + 1],
                                                     {"pooled_output": extras["pooled_output"][row:row + 1]}]])
        assert harness.rel(both[row:row + 1], alone) < 1e-5
    assert harness.rel(both[0:1], both[1:2]) > 0.01


@pytest.mark.parametrize("method", list(EDITS))
def test_outside_the_mask_the_result_is_the_source(flux, prompts, method):
    """A mask of the left 5 of 12 latent columns, drawn at the image's size: outside it the result equals the
    source (to float rounding) while the unmasked edit moves there; inside it moves by more than 5%. Fails if the
    edit leaks outside the mask or the mask does nothing."""
    latent, src = source(), source()["samples"]
    mask = torch.zeros(1, 64, 96)
    mask[:, :, :40] = 1.0
    out = EDITS[method](flux, latent, prompts, mask=mask)
    assert (out[..., 5:] - src[..., 5:]).abs().max() < 1e-5
    assert harness.rel(out[..., :5], src[..., :5]) > 0.05
    assert harness.rel(EDITS[method](flux, latent, prompts)[..., 5:], src[..., 5:]) > 0.05


def test_model_evaluations_per_edit_are_the_official_counts(flux, prompts):
    """FlowEdit: 2 n_avg per edited step (n_max - n_min) plus one per plain step (FlowEdit_utils.py lines
    339-399); UniEdit-Flow: k + 1 for Uni-Inv and 2k for Uni-Edit, k = round(0.6 N) (FLUX sampling.py lines
    411-503); RF-Inversion: N + N (pipeline `invert` and `__call__`)."""
    latent = source()
    assert harness.count_rows(flux, lambda: flowedit(flux, latent, prompts, n_max=5, n_min=0, n_avg=2)) == 2 * 2 * 5
    assert harness.count_rows(flux, lambda: flowedit(flux, latent, prompts, n_max=5, n_min=2, n_avg=1)) == 2 * 3 + 2
    k = round(0.6 * STEPS)
    assert harness.count_rows(flux, lambda: uniedit(flux, latent, prompts)) == (k + 1) + 2 * k
    assert harness.count_rows(flux, lambda: rf_inversion(flux, latent, prompts)) == 2 * STEPS


def refused_before_any_model_call(model, fn, match):
    with harness.CountCalls(model) as calls_made:
        with pytest.raises(PnPError, match=match):
            fn()
    assert calls_made.calls == 0


def test_refusals_come_before_any_model_work(flux, prompts):
    """Each misuse is a PnPError naming the fix, raised before the network runs: a U-Net (not rectified flow),
    the edit guider with a plain sampler, an edit sampler with a plain guider, Disable Noise for FlowEdit, n_min
    above n_max, an inversion's sampler on other sigmas or another noise, and CFG above 1 without a negative
    prompt on a model with CFG."""
    latent, p = source(), prompts
    unet = harness.make_model("sd15")
    refused_before_any_model_call(unet, lambda: flowedit(unet, {"samples": harness.latent()},
                                                         {**p, "source": harness.conditioning(),
                                                          "target": harness.conditioning(seed=3)}),
                                  "rectified flow.*PnP DDIM Inversion")
    guider = nodes.PnPEditGuider.execute(flux, p["source"], p["target"], -1, -1).result[0]
    sigmas = nodes.PnPEditSigmas.execute(flux, latent, "FlowEdit", STEPS).result[0]
    euler = run_node(KSamplerSelect, "euler")[0]
    noise = run_node(RandomNoise, 3)[0]
    refused_before_any_model_call(flux, lambda: run_node(SamplerCustomAdvanced, noise, guider, euler, sigmas, latent),
                                  "FlowEdit Sampler \\(PnP\\) or UniEdit Sampler")
    plain = run_node(BasicGuider, flux, p["target"])[0]
    flowedit_sampler = nodes.PnPFlowEditSampler.execute(5, 0, 1).result[0]
    refused_before_any_model_call(flux, lambda: run_node(SamplerCustomAdvanced, noise, plain, flowedit_sampler, sigmas,
                                                         latent), "PnP Edit Guider")
    refused_before_any_model_call(flux, lambda: run_node(SamplerCustomAdvanced, run_node(DisableNoise)[0], guider,
                                                         flowedit_sampler, sigmas, latent), "Random Noise")
    refused_before_any_model_call(flux, lambda: flowedit(flux, latent, p, n_max=2, n_min=3), "n_min")

    uni_sigmas = nodes.PnPEditSigmas.execute(flux, latent, "UniEdit-Flow", STEPS).result[0]
    inversion, inverted_noise, edit_sigmas = nodes.PnPUniInversion.execute(flux, latent, p["empty"], uni_sigmas, 0.6,
                                                                           "auto", 1.0).result
    sampler = nodes.PnPUniEditSampler.execute(inversion, 5.0).result[0]
    refused_before_any_model_call(flux, lambda: run_node(SamplerCustomAdvanced, inverted_noise, guider, sampler,
                                                         uni_sigmas, latent), "sigmas")
    refused_before_any_model_call(flux, lambda: run_node(SamplerCustomAdvanced, noise, guider, sampler, edit_sigmas,
                                                         latent), "noise")
    cfg_model = harness.make_flux()  # a Flux without guidance embedding: classifier-free guidance
    refused_before_any_model_call(cfg_model, lambda: flowedit(cfg_model, latent, p, source_scale=3.5),
                                  "negative")


def test_the_velocity_at_sigma_0_is_read_from_the_network(flux, prompts):
    """At sigma 0 the host's denoised estimate is x whatever the velocity; the inversions' first evaluation reads
    the network's raw output instead (calls.with_raw_velocity). Fails if that read is lost (the velocity would be
    0) or leaves its wrapper on the user's model."""
    net_out, got = [], []
    handle = flux.model.diffusion_model.register_forward_hook(lambda m, a, out: net_out.append(out.float()))

    def loop(call, x, sigmas):
        got.append(calls.velocities(call)(x, 0.0))
        return x
    try:
        run_loop(calls.with_raw_velocity(flux), prompts["empty"], fh.latent(size=8), torch.zeros(2), loop)
    finally:
        handle.remove()
    assert len(net_out) == 1 and torch.allclose(got[0], net_out[0], atol=1e-6) and got[0].abs().max() > 0.1
    assert flux.get_wrappers(ext.WrappersMP.APPLY_MODEL, calls.RAW_KEY) == []


def test_an_interrupt_stops_each_edit_promptly(flux, prompts):
    """ComfyUI's interrupt ends an edit at the next model evaluation."""
    latent = source()
    for method, edit in EDITS.items():
        made = fh.interrupted_after(flux, 3, lambda: edit(flux, latent, prompts))
        assert made <= 4, method
    assert not comfy.model_management.processing_interrupted()
