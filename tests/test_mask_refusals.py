"""Masks that would edit nothing are refused alike on every path (issue 27): a mask black everywhere,
and one whose white region vanishes when resized to the latent (one white pixel), through every node
that takes a mask or a latent's noise_mask, before any model work (pnp_injection/region.py
check_mask, which KV-Edit's `foreground` calls too)."""
import pytest
import torch

import flux_harness as fh
import harness
from comfyui_pnp.nodes.flux import (PnPFluxApplyInjection, PnPFluxFireFlowInversion, PnPFluxFireFlowSampler,
                                    PnPFluxInversion, PnPFluxSampler)
from comfyui_pnp.nodes.flux_kv_edit import PnPFluxKVEditInversion
from comfyui_pnp.nodes.injection import PnPApplyInjection, PnPSampler
from comfyui_pnp.nodes.inversion import PnPInversion
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.unet import bank as unet_banks
from comfyui_pnp.pnp_injection.unet import inversion as unet_inversion
from comfyui_pnp.pnp_injection.unet import sampling as unet_sampling

SIZE = 16  # latent cells a side: 128 px
VANISHED = (r"The mask's white region vanishes at the latent's resolution: resized from 128x128 to the latent's "
            r"16x16 cells \(8 px each\), no cell is above 0, so nothing would be edited\. Grow the mask by at least "
            r"8 px \(GrowMask, expand 8\), or draw a larger region\.")
BLACK = (r"The mask is black everywhere \(all 0\), so nothing would be edited: paint the region to edit white \(Load "
         r"Image's mask editor\), or check that the mask is not inverted \(InvertMask\)\.")


def one_white_pixel() -> torch.Tensor:
    """A mask at the source image's size with one white pixel, at (10, 10): the bilinear resize to the
    latent reads pixels 3 and 4 of every 8, so it has no cell above 0 there."""
    mask = torch.zeros(1, SIZE * 8, SIZE * 8)
    mask[0, 10, 10] = 1
    return mask


MASKS = {"one white pixel": (one_white_pixel, VANISHED), "black": (lambda: torch.zeros(1, SIZE, SIZE), BLACK)}


@pytest.fixture(scope="module")
def env():
    sd15 = harness.make_model("sd15")
    empty, target = harness.conditioning(seed=5), harness.conditioning(seed=1)
    source = harness.latent()
    unet_bank = unet_banks.capture(sd15, unet_inversion.invert(sd15, source, empty, steps=3, evaluations=3))
    flux = fh.make_flux(seed=3, double=1, single=2)
    flux_source, flux_prompt = fh.latent(), fh.conditioning(seed=5)
    (rf,) = PnPFluxInversion.execute(flux, {"samples": flux_source}, flux_prompt, 3, 2, 1.0, "rf-solver-edit",
                                     "rf_solver", "simple", "single.0-1:v").result
    (fire,) = PnPFluxFireFlowInversion.execute(flux, {"samples": flux_source}, flux_prompt, 3, 1, 1.0, "replace_v",
                                               "simple", "single.0-1:v").result
    return dict(sd15=sd15, empty=empty, target=target, source=source, unet_bank=unet_bank, flux=flux,
                flux_source=flux_source, flux_prompt=flux_prompt, rf=rf, fire=fire, flux_target=fh.conditioning(seed=1))


def unet_apply(e, mask):
    (patched,) = PnPApplyInjection.execute(e["sd15"], e["unet_bank"], 0.8, 0.5, mask).result
    start = unet_sampling.start_latent(e["sd15"], e["unet_bank"])["samples"]
    return harness.plain_sample(patched, start, e["unet_bank"].sigmas, e["target"], e["empty"], 7.5)


def flux_apply(e, mask):
    (patched,) = PnPFluxApplyInjection.execute(e["flux"], e["rf"], 2, mask).result
    return fh.custom_advanced(patched, e["rf"], e["flux_target"])


# Every node that takes a mask (or a latent's noise_mask), and the model it would run.
PATHS = {
    "PnP Sampler": ("sd15", lambda e, m: PnPSampler.execute(e["sd15"], e["unet_bank"], e["target"], e["empty"], 7.5,
                                                            0.8, 0.5, "ddim", mask=m)),
    "PnP Apply Feature Injection": ("sd15", unet_apply),
    "PnP DDIM Inversion (noise_mask)": ("sd15", lambda e, m: PnPInversion.execute(
        e["sd15"], {"samples": e["source"], "noise_mask": m}, e["empty"], 3, 3, "ddim_uniform")),
    "PnP Flux/Chroma/HunyuanVideo Sampler": ("flux", lambda e, m: PnPFluxSampler.execute(e["flux"], e["rf"], e["flux_target"], 5.0, 2, m)),
    "PnP Flux/Chroma/HunyuanVideo Sampler (FireFlow)": ("flux", lambda e, m: PnPFluxFireFlowSampler.execute(
        e["flux"], e["fire"], e["flux_target"], 2.0, 1, m)),
    "PnP Flux/Chroma/HunyuanVideo Apply Feature Injection": ("flux", flux_apply),
    "PnP Flux/Chroma/HunyuanVideo Inversion (noise_mask)": ("flux", lambda e, m: PnPFluxInversion.execute(
        e["flux"], {"samples": e["flux_source"], "noise_mask": m}, e["flux_prompt"], 3, 2, 1.0, "rf-solver-edit",
        "rf_solver", "simple", "single.0-1:v")),
    "PnP Flux Inversion (KV-Edit)": ("flux", lambda e, m: PnPFluxKVEditInversion.execute(
        e["flux"], {"samples": e["flux_source"]}, e["flux_prompt"], 3, 1, 1.5, "simple", m)),
}


@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("path", list(PATHS))
def test_a_mask_that_edits_nothing_is_refused_on_every_path(env, path, mask):
    """One white pixel (it vanishes at the latent's 16x16 cells) and an all-zero mask, on each node:
    refused before any model evaluation, naming the sizes and the fix. Fails if a path samples (PnP
    Sampler and PnP Flux/Chroma/HunyuanVideo Sampler returned the source in silence; KV-Edit called the pixel mask "black
    everywhere"; an all-zero mask returned the source on the samplers but was refused by KV-Edit)."""
    model_key, run = PATHS[path]
    make, message = MASKS[mask]
    with harness.CountCalls(env[model_key]) as counter, pytest.raises(PnPError, match=f"^{message}$"):
        run(env, make())
    assert counter.calls == 0


def test_one_black_row_of_a_batch_of_masks_is_named(env):
    """A batch of two masks, the second black: refused naming that mask. Fails if the row edits
    nothing in silence or the message does not say which mask."""
    masks = torch.stack([torch.ones(SIZE, SIZE), torch.zeros(SIZE, SIZE)])
    with pytest.raises(PnPError, match=r"^Mask 1 of the batch is black everywhere"):
        PnPSampler.execute(env["sd15"], env["unet_bank"], harness.conditioning(seed=1, batch=2), env["empty"], 7.5,
                           0.8, 0.5, "ddim", mask=masks)


def test_a_region_that_survives_the_resize_still_edits(env):
    """The same pixel grown by 8 px (what the message advises, GrowMask expand 8) survives the resize and
    edits: the result differs from the unmasked source path inside and is the source far from it. Fails
    if the check refuses masks that have cells above 0 at the latent's size."""
    from comfy_extras.nodes_mask import GrowMask
    (grown,) = GrowMask().expand_mask(one_white_pixel(), 8, True)
    (out,) = PnPSampler.execute(env["sd15"], env["unet_bank"], env["target"], env["empty"], 7.5, 0.8, 0.5, "ddim",
                                mask=grown).result
    source = env["source"]
    assert harness.rel(out["samples"][..., 8:, 8:], source[..., 8:, 8:]) < 1e-5  # far from the pixel: the source
    assert harness.rel(out["samples"][..., :3, :3], source[..., :3, :3]) > 1e-3  # around it: edited
