"""KV-Edit (Zhu et al. 2025): the background tokens' keys and values are kept from the inversion,
and only the masked (foreground) tokens are generated. Official code: Xilluill/KV-Edit at 77129a2
("fix start img bug"); defaults of its demo, gradio_kv_edit.py.

- Mask (models/kv_edit.py lines 165-173): resized bilinearly to the latent, every value above 0
  set to 1; a token (2x2 latent cells) is foreground when any of its cells is set.
- Inversion (lines 150-156, flux/sampling.py lines 137-179): Euler steps up the official schedule
  (flux/sampling.py lines 78-94) from the source, the source prompt at guidance 1.5
  (gradio_kv_edit.py line 315), all 28 steps (line 298; the demo inverts without skipping, line
  91). The step from sigma_{i+1} up to sigma_i stores, under sigma_i, the latent before the step
  (flux/sampling.py lines 159-163) and the image tokens' K and V of every block (flux/modules/
  layers.py lines 291-295, 358-362): the bank's path and tables (euler slots, `inversion_slot`).
  Only the background tokens' K and V are kept here, and only from the skipped step on: the
  editing reads nothing else (layers.py lines 305-310 overwrite the foreground's with its own).
- Editing (models/kv_edit.py lines 160-202, flux/sampling.py lines 157-178): the schedule from
  step `skip` (4, gradio_kv_edit.py line 314), Euler steps with the target prompt at guidance 5.5
  (line 316). Step i reads key sigma_i: before the call, the foreground tokens' cells outside the
  mask take the stored latent (sampling.py lines 164-167: the path at sigma_{i+1}); the call sees
  the stored background K and V and adds `attn_scale` (1, line 317) to their attention logits
  (models/kv_edit.py lines 48-62, 189-193). The edited tokens start from the latent stored under
  sigma_0 (lines 185-187, the authors' last fix: the path at sigma_1), whatever the skip. The
  result is the source with the foreground's masked cells from the edit (line 198).
- Left out, as the demo leaves them off (lines 320-321): `re_init` (foreground restarted from new
  noise) and `attn_mask` (an inversion whose background does not see the foreground).

The foreground is generated here by running every token and replacing the background's K and V
in every block: the foreground's outputs then depend on the background only through those K and V,
as in the official code, which runs the foreground tokens alone.
"""
from __future__ import annotations

import comfy.model_management
import comfy.samplers
import latent_preview
import torch
from tqdm.auto import trange

from .. import passes, region
from ..errors import PnPError
from ..inputs import check_finite, check_whole_latent
from ..model_calls import HOST_SIGMA, target_rows
from . import families
from . import schedule as flux_schedule
from .bank import FeatureBank
from .inversion import invert as invert_flux
from .inversion import with_guidance
from .patches import apply_kv_injection
from .sampling import check_prompt

STEPS, SKIP, INVERSION_GUIDANCE, GUIDANCE, ATTN_SCALE = 28, 4, 1.5, 5.5, 1.0  # gradio_kv_edit.py lines 298, 314-317


def foreground(mask: torch.Tensor, latent_shape) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask's cells ([1, 1, H, W], 0 or 1: every value above 0 is 1) and the background tokens'
    indices (`background`)."""
    if latent_shape[-2] % 2 or latent_shape[-1] % 2:
        raise PnPError(f"KV-Edit keeps Flux's 2x2-cell tokens whole, and this source's latent is "
                       f"{latent_shape[-1]}x{latent_shape[-2]} cells: give a source whose sides are multiples of 16 px "
                       f"(e.g. crop or scale it with ImageScale).")
    cells = region.check_mask(mask, latent_shape, 1, single="KV-Edit keeps one background for the whole batch")
    cells = (cells > 0).float()
    return cells, background(cells)


def background(cells: torch.Tensor) -> torch.Tensor:
    """The indices of the tokens (2x2 cells) with no cell of `cells` ([1, 1, H, W], 0 or 1) set."""
    per_token = torch.nn.functional.max_pool2d(cells, 2)  # 1 where any of the token's cells is set
    return (per_token.flatten() == 0).nonzero().flatten()


def invert(model_patcher, latent: torch.Tensor, conditioning, mask: torch.Tensor | None, steps: int = STEPS,
           skip: int = SKIP, guidance: float = INVERSION_GUIDANCE, scheduler: str = flux_schedule.OFFICIAL,
           bank: str = "auto") -> FeatureBank:
    """KV-Edit's inversion of `latent` (user space) under `mask` (the region to edit); the bank lives where `bank`
    says (placement.MODES)."""
    if mask is None:
        raise PnPError("KV-Edit edits the masked region only: connect a mask (Load Image's mask editor on the source) "
                       "or give the source latent a noise_mask (Set Latent Noise Mask).")
    if not 0 <= skip < steps:
        raise PnPError(f"`skip_steps` is {skip}; KV-Edit edits the steps after the skipped ones: give 0 to "
                       f"{steps - 1}.")
    families.check_flux1(model_patcher, "KV-Edit")
    cells, background = foreground(mask, latent.shape)
    return invert_flux(model_patcher, latent, conditioning, steps, steps - skip, "", every_block(model_patcher),
                       "euler", scheduler, guidance, mask=cells, first_step=skip, tokens=background, bank=bank,
                       what="PnP Flux Inversion (KV-Edit)")


def every_block(model_patcher) -> str:
    """KV-Edit's layers: the image tokens' K and V of every block of this model, double
    (flux/modules/layers.py lines 291-295: the image stream's img_k, img_v) and single (lines
    351-362: the tokens after the text); 19 and 38 blocks in Flux.1."""
    net = model_patcher.model.diffusion_model
    return f"double.0-{len(net.double_blocks) - 1}:k,v; single.0-{len(net.single_blocks) - 1}:k,v@image"


def kv_sampler(bank: FeatureBank):
    """KV-Edit's editing loop as a ComfyUI SAMPLER on the bank's sigmas from the skipped step."""
    cells, path = bank.mask, bank.path

    @torch.no_grad()
    def sample_kv_edit(model, x, sigmas, extra_args=None, callback=None, disable=None):
        call = passes.model_call(model, extra_args or {})
        rows = x.shape[0]
        m = cells.to(x)
        levels = sigmas.tolist()  # one read of the device per run

        def at(level):  # the source's path, one row per target row
            return region.rows_of(path[level], rows).to(x)
        x = at(1)  # the latent stored under sigma_0 (models/kv_edit.py lines 185-187)
        for i in trange(len(sigmas) - 1, disable=disable):
            comfy.model_management.throw_exception_if_processing_interrupted()
            sigma, sigma_next = levels[i], levels[i + 1]
            x = at(bank.first_step + i + 1) * (1 - m) + x * m
            denoised = call(x, sigma * x.new_ones(rows), **{HOST_SIGMA: sigma})
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
            x = x + (sigma_next - sigma) * (x - denoised) / sigma
        return at(len(path) - 1) * (1 - m) + x * m
    return comfy.samplers.KSAMPLER(sample_kv_edit)


def sample(model_patcher, bank: FeatureBank, positive, guidance: float = GUIDANCE,
           attn_scale: float = ATTN_SCALE) -> torch.Tensor:
    """KV-Edit's editing: the target prompt in the bank's masked region. Returns a LATENT's samples."""
    if not bank.is_kv_edit:
        raise PnPError("This bank was not kept for KV-Edit: invert the source with PnP Flux Inversion (KV-Edit), or "
                       "sample this bank with PnP Flux/Chroma/HunyuanVideo Sampler.")
    if bank.path is None:
        raise PnPError("This KV-Edit bank holds no source path (a damaged or foreign bank file): invert the source "
                       "again with PnP Flux Inversion (KV-Edit).")
    check_finite(guidance=guidance, attn_scale=attn_scale)
    check_whole_latent(positive, "The target prompt (PnP Flux Sampler (KV-Edit)'s `positive`)")
    patched = apply_kv_injection(model_patcher, bank, attn_scale)
    check_prompt(bank, positive)
    rows = target_rows(bank.noise.shape[0], positive)
    conditioning = with_guidance(positive, guidance)
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)
    sigmas = bank.sigmas[bank.first_step:]
    preview = latent_preview.prepare_callback(patched, len(sigmas) - 1)
    latent = torch.zeros((rows, *bank.noise.shape[1:]))  # unused: the loop starts from the bank's path
    return passes.sample(guider, latent, kv_sampler(bank), sigmas, callback=preview)
