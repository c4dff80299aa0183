"""Regional edits: a mask says where PnP edits (1) and where the source stays (0); a soft value m
gives m of the edit and 1 - m of the source, so a feather blends. Shared by the wings.

Outside the mask every model call of the sampling run sees the source's own path at the call's
sigma (the U-Net trajectory of PnP DDIM Inversion or PnP Generate Source, the inverted path kept
by PnP Flux/Chroma/HunyuanVideo Inversion), and gets back the prediction whose first-order step (DDIM, Euler,
RF-Solver) lands on the path's next level, so the sampler's own latent stays on the path too.
The final latent outside the mask is the path's end: the source. Inside (wherever the mask is
above 0), the edit runs as without a mask, injection included; soft values then blend the edit
with the source at the end.

This is ComfyUI's inpainting blend (comfy/samplers.py KSamplerX0Inpaint) with the source's
path in place of the source noised along a straight line: the host's blend is kept out of the
run (the mask is taken from it), and a mask function on the model (Differential Diffusion's
`denoise_mask_function`) is applied at each call as the host applies it; its own rule then decides
what soft values do (Differential Diffusion: a cell of value m is edited over the last fraction m
of the steps), and only cells of 0 are set to the source at the end.

Which mask: the sampler node's MASK input, else the noise_mask of the latent given to the
sampler (Set Latent Noise Mask, SamplerCustomAdvanced route), else the noise_mask the source
latent carried into the inversion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import comfy.model_patcher
import comfy.patcher_extension as ext
import comfy.utils
import torch

from .errors import PnPError
from .inputs import VAE_SCALE
from .model_calls import call_sigma, source_rows, with_clock
from .schedule import SIGMA_RTOL, check_same_schedule

RUN_KEY = "pnp_region"  # transformer_options entry: (mask, SourcePath) of the masked run in progress, on its device


@dataclass(frozen=True, eq=False)
class SourcePath:
    """The source's latent at every sampling sigma, in the model's space; the last is the source."""

    sigmas: torch.Tensor    # (N+1,) descending to 0
    latents: torch.Tensor   # (N+1, B, C, H, W)

    def __deepcopy__(self, memo):  # immutable: never duplicate its tensors
        return self

    def level(self, sigma: float) -> torch.Tensor:
        """The path at `sigma`: a schedule level, or linear in sigma between its two neighbours
        (samplers that evaluate between levels)."""
        s = self.sigmas
        if sigma >= float(s[0]) * (1 - SIGMA_RTOL):
            return self.latents[0]
        j = int((s <= sigma * (1 + SIGMA_RTOL)).nonzero()[0])
        if math.isclose(sigma, float(s[j]), rel_tol=SIGMA_RTOL):
            return self.latents[j]
        w = (sigma - float(s[j])) / (float(s[j - 1]) - float(s[j]))
        return torch.lerp(self.latents[j], self.latents[j - 1], w)

    def next_level(self, sigma: float) -> tuple[float, torch.Tensor]:
        """The first schedule level strictly below `sigma`, and the path there."""
        below = (self.sigmas < sigma * (1 - SIGMA_RTOL)).nonzero()
        j = int(below[0]) if len(below) else len(self.sigmas) - 1
        return float(self.sigmas[j]), self.latents[j]


def check_mask(mask: torch.Tensor, latent_shape, rows: int, *, single: str | None = None) -> torch.Tensor:
    """`mask` as [1 or rows, 1, H, W] at the latent's size, resized as ComfyUI resizes noise
    masks (comfy.utils.reshape_mask, bilinear); a PnPError naming the fix otherwise. It may be
    drawn at the latent's size or the source image's (8 px per cell; VAE Encode drops up to 7).
    Masks edit images: a video latent refuses one. A mask with no cell above 0 at the latent's
    size would edit nothing: refused, on every path alike, whether it was black everywhere or its
    white region fell between the cells the resize samples. `single`: why only one mask is taken
    (a method with one mask for the whole batch)."""
    if len(latent_shape) == 5:
        raise PnPError("Masks edit images; this latent is a video: disconnect the mask (or remove the latent's "
                       "noise_mask) to edit the whole clip.")
    if not isinstance(mask, torch.Tensor) or mask.numel() == 0:
        raise PnPError("The mask is empty: draw it on the source image (Load Image's mask editor) or make it with a "
                       "mask node (e.g. Solid Mask, Image To Mask), or disconnect it for an edit of the whole image.")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    elif mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise PnPError(f"The mask has shape {tuple(mask.shape)}; a MASK is [batch, height, width]: connect a MASK "
                       f"output (Load Image's mask, a mask node).")
    mask = mask.float()
    low, high = torch.aminmax(mask)
    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
        raise PnPError("The mask contains NaN or infinite values: draw it again, or rebuild it with mask nodes.")
    if float(low) < 0 or float(high) > 1:
        raise PnPError(f"The mask's values run from {float(low):.3g} to {float(high):.3g}; a mask holds 0 (keep the "
                       f"source) to 1 (edit): clamp or normalise it (e.g. with ThresholdMask or InvertMask).")
    height, width = latent_shape[-2], latent_shape[-1]
    mh, mw = mask.shape[-2:]
    pixels = height * VAE_SCALE <= mh < (height + 1) * VAE_SCALE and width * VAE_SCALE <= mw < (width + 1) * VAE_SCALE
    if (mh, mw) != (height, width) and not pixels:
        raise PnPError(f"The mask is {mw}x{mh} but the source is {width * VAE_SCALE}x{height * VAE_SCALE} px (latent "
                       f"{width}x{height}): draw the mask on the source image (Load Image's mask editor), or scale it "
                       f"to the source's size first (e.g. Upscale Image on the mask as an image).")
    if single is not None and mask.shape[0] != 1:
        raise PnPError(f"{single}, and the mask holds {mask.shape[0]} masks: give one mask.")
    if mask.shape[0] not in (1, rows):
        raise PnPError(f"The mask holds {mask.shape[0]} masks but the batch has {rows} rows: give one mask for all "
                       f"rows, or one mask per row.")
    cells = comfy.utils.reshape_mask(mask, (mask.shape[0], 1, height, width))
    for row in range(mask.shape[0]):
        if not bool(cells[row].any()):
            which = f"Mask {row} of the batch" if mask.shape[0] > 1 else "The mask"
            raise _nothing_to_edit(which, bool(mask[row].any()), (mw, mh), (width, height))
    return cells


def _nothing_to_edit(which: str, white: bool, drawn, latent) -> PnPError:
    if white:  # white pixels, all between the pixels the bilinear resize reads (2 of every 8 per side)
        return PnPError(f"{which}'s white region vanishes at the latent's resolution: resized from {drawn[0]}x"
                        f"{drawn[1]} to the latent's {latent[0]}x{latent[1]} cells ({VAE_SCALE} px each), no cell is "
                        f"above 0, so nothing would be edited. Grow the mask by at least {VAE_SCALE} px (GrowMask, "
                        f"expand {VAE_SCALE}), or draw a larger region.")
    return PnPError(f"{which} is black everywhere (all 0), so nothing would be edited: paint the region to edit white "
                    f"(Load Image's mask editor), or check that the mask is not inverted (InvertMask).")


def rows_of(t: torch.Tensor, rows: int) -> torch.Tensor:
    return t if t.shape[0] == rows else t.expand(rows, *t.shape[1:])


class Region:
    """The wrappers of a masked edit: OUTER_SAMPLE takes the mask (the node's, else the sampled
    latent's noise_mask, else the source's) and checks it before any model work, keeps the
    host's own inpainting blend out, and puts the source's end outside the mask on the result;
    PREDICT_NOISE holds the latent outside the mask on the source's path. Without any mask the
    run is untouched. Immutable: clones of the model share it."""

    def __init__(self, path: SourcePath | None, mask: torch.Tensor | None, fix_path: str, fix_schedule: str):
        self.path, self.mask, self.fix_path, self.fix_schedule = path, mask, fix_path, fix_schedule

    def __deepcopy__(self, memo):
        return self

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, *args, **kwargs):
        chosen = self.mask if self.mask is not None else denoise_mask
        if chosen is None:
            return executor(noise, latent_image, sampler, sigmas, denoise_mask, *args, **kwargs)
        mask = check_mask(chosen, noise.shape, noise.shape[0])  # before the path: a video refuses any mask
        if self.path is None:
            raise PnPError(f"A mask keeps the source outside it by following the source's path, and this bank does "
                           f"not hold that path (a bank file saved by an earlier version of this pack). "
                           f"{self.fix_path}")
        source_rows(self.path.latents.shape[1], noise.shape[0], "latent batch")
        check_same_schedule(self.path.sigmas, sigmas, len(self.path.sigmas), "masked edit's source path",
                            self.fix_schedule)
        guider = executor.class_obj
        original = guider.model_options
        guider.model_options = comfy.model_patcher.create_model_options_clone(original)
        device = guider.model_patcher.load_device  # the run's mask and path move there once, not at every call
        run = (mask.to(device), SourcePath(self.path.sigmas, self.path.latents.to(device)))
        guider.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
        try:
            out = with_clock(executor, noise, latent_image, sampler, sigmas, None, *args, **kwargs)
        finally:
            guider.model_options = original
        end = rows_of(guider.model_patcher.model.process_latent_out(self.path.latents[-1].float()), out.shape[0]).to(out)
        m = rows_of(mask, out.shape[0]).to(out)
        if "denoise_mask_function" in guider.model_options:  # its own soft semantics: only 0 is the source
            return torch.where(m > 0, out, end)
        # A feathered composite: m of the edit, 1 - m of the source (each in full at 1 and 0). PnP keeps
        # the source's layout, so the two agree in structure and the cross-fade shows no double edges.
        return out * m + end * (1 - m)

    def predict_noise(self, executor, x, timestep, model_options={}, seed=None):
        options = model_options.get("transformer_options", {})
        run = options.get(RUN_KEY)
        if run is None:
            return executor(x, timestep, model_options, seed)
        mask, path = run
        sigma = call_sigma(options, timestep)
        m = rows_of(mask, x.shape[0]).to(x).expand(x.shape)
        guider, sigmas = executor.class_obj, options.get("sample_sigmas")
        adjust = model_options.get("denoise_mask_function")
        if adjust is not None:  # Differential Diffusion and the like, called as the host calls it
            m = adjust(timestep, m, extra_options={"model": guider, "sigmas": sigmas})
        else:  # the mask's support: soft cells are blended at the end (outer_sample)
            m = (m > 0).to(m.dtype)
        here = rows_of(path.level(sigma), x.shape[0]).to(x)
        out = executor(x * m + here * (1 - m), timestep, model_options, seed)
        sigma_next, target = path.next_level(sigma)
        target = rows_of(target, x.shape[0]).to(x)
        # The prediction whose first-order step from x (x + (x - D) / sigma * (sigma_next - sigma))
        # lands on the path's next level; at the last step (sigma_next 0) it is the source itself.
        along = x - (target - x) * (sigma / (sigma_next - sigma))
        return out * m + along * (1 - m)


def apply(patched, path: SourcePath | None, mask: torch.Tensor | None, key: str, fix_path: str,
          fix_schedule: str) -> None:
    """Install the masked-edit wrappers on `patched` (a clone the caller owns) under `key`;
    `fix_path` and `fix_schedule` name the wing's nodes for a bank without the source's path
    and for a sampler on other sigmas."""
    region = Region(path, mask, fix_path, fix_schedule)
    patched.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, key, region.outer_sample)
    patched.add_wrapper_with_key(ext.WrappersMP.PREDICT_NOISE, key, region.predict_noise)
