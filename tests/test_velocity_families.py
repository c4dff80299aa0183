"""Every rectified-flow family the host defines (tests/rf_families.py: shrunk real host models with their real
block structure) runs the three velocity edits end to end through the nodes: a finite result of the source's
shape, an edit that differs from plain sampling of the target prompt by a meaningful amount, and, on image
families, the source unchanged where a mask keeps it. Fidelity to the official code is in
test_velocity_fidelity.py (Flux.1) and test_velocity_twins_fidelity.py (SD3, Wan 2.1)."""
from __future__ import annotations

import pytest
import torch

import comfy.samplers
import rf_families as rf
from comfyui_pnp.nodes import velocity as nodes
from comfyui_pnp.pnp_injection import PnPError

STEPS = 3
MEANINGFUL = 0.02  # relative distance of an edit from plain sampling and from the source (measured: 0.1 to 2)


def rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module", params=rf.FAMILIES)
def family(request):
    model = rf.make(request.param)
    latent = rf.latent(model, seed=2)
    extra = {"start": latent} if request.param == "wan21_i2v" else {}
    prompts = {name: rf.conditioning(model, seed=seed, **extra) for name, seed in
               (("source", 1), ("target", 5), ("negative", 8))}
    prompts["empty"] = rf.conditioning(model, seed=9, tokens=4, **extra)
    return request.param, model, {"samples": latent}, prompts


def plain(model, latent, prompts, sigmas):
    """Plain Euler sampling of the target prompt, from the seed's noise."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(prompts["target"], prompts["negative"])
    guider.set_cfg(1.0 if rf.guidance_distilled(model) else 3.5)
    samples = latent["samples"]
    noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(7))
    return guider.sample(noise, samples, comfy.samplers.sampler_object("euler"), sigmas, disable_pbar=True, seed=7)


def edits(model, latent, p, mask=None):
    negative = p["negative"]
    yield "FlowEdit", nodes.PnPFlowEdit.execute(model, latent, p["source"], p["target"], STEPS, -1, 0, 1, -1, -1, 7,
                                                negative=negative, mask=mask)
    yield "UniEdit-Flow", nodes.PnPUniEdit.execute(model, latent, p["empty"], p["source"], p["target"], STEPS, 0.6, 5.0,
                                                   -1, "auto", negative=negative, mask=mask)
    yield "RF-Inversion", nodes.PnPRFInversion.execute(model, latent, p["empty"], p["target"], STEPS, 0.5, 0.9, 0.0,
                                                       0.25, -1, 7, negative=negative, mask=mask)


def test_each_edit_runs_and_edits(family):
    """Each method: finite, the source's shape, and more than 2% away from both the source and plain sampling of
    the target (an edit, not a copy of either). Fails if a family's velocity is misread (sign, time scale,
    guidance), if a method silently returns its input, or if a family's conditioning is dropped."""
    name, model, latent, prompts = family
    source = latent["samples"]
    generated = plain(model, latent, prompts, nodes.PnPEditSigmas.execute(model, latent, "FlowEdit", STEPS).result[0])
    for method, output in edits(model, latent, prompts):
        out = output.result[0]["samples"]
        assert out.shape == source.shape and torch.isfinite(out).all(), (name, method)
        assert rel(out, source) > MEANINGFUL, (name, method)
        assert rel(out, generated) > MEANINGFUL, (name, method)


def test_outside_a_mask_the_source_stays(family):
    """A mask of the left 2 of 10 latent columns (at the image's size, 8 px per cell): outside it FlowEdit's result
    is the source (to float rounding) and inside it moves (all three methods on Flux.1: test_velocity_edits.py).
    Video families refuse a mask with an error naming the fix (masks edit images); Qwen-Image's one-frame latent
    is an image."""
    name, model, latent, prompts = family
    source = latent["samples"]
    height, width = source.shape[-2:]
    mask = torch.zeros(1, height * 8, width * 8)
    mask[:, :, :16] = 1.0
    if rf.is_video(model):
        with pytest.raises(PnPError, match="video"):
            next(edits(model, latent, prompts, mask))
        return
    method, output = next(edits(model, latent, prompts, mask))
    out = output.result[0]["samples"]
    assert (out[..., 2:] - source[..., 2:]).abs().max() < 1e-4 * source.abs().max(), (name, method)
    assert rel(out[..., :2], source[..., :2]) > MEANINGFUL, (name, method)
