"""The sampling schedules of the flow wing's edits: RF-Solver-Edit's on Flux.1, exact at every step
count and image size, and its video edit's on HunyuanVideo (`video_sigmas`).

Official code (wangjiangshan0725/RF-Solver-Edit at 3388e29), FLUX_Image_Edit/src/flux/sampling.py:
`get_schedule` (line 58) takes `linspace(1, 0, steps + 1)` (line 66) and shifts it by
`time_shift(mu, 1, t) = e^mu / (e^mu + (1/t - 1))` (lines 46-47, 72), with mu linear in the
image's token count through (256, 0.5) and (4096, 1.15) (`get_lin_function`, lines 50-55;
base_shift 0.5 and max_shift 1.15 are get_schedule's defaults, lines 61-62, line 71). edit.py
calls it with the packed image's token count and no shift for flux-schnell (src/edit.py
lines 148 and 161).

ComfyUI's `simple` scheduler reads its sigmas from a 10,000-entry table, which equals this only
when the step count divides 10,000 (and only with ModelSamplingFlux set to the image size):
`official` computes the schedule itself, from the source latent's size.
"""
from __future__ import annotations

import math

import comfy.samplers
import comfy.supported_models as sm
import torch

from .. import schedule
from ..errors import PnPError
from . import families

OFFICIAL = "official"
SCHEDULERS = [OFFICIAL, *comfy.samplers.SCHEDULER_NAMES]


def image_tokens(latent_shape, patch: int = 2) -> int:
    """Flux's image tokens for a latent [B, C, H, W]: one per 2x2 patch (ComfyUI pads odd sizes)."""
    return math.ceil(latent_shape[-2] / patch) * math.ceil(latent_shape[-1] / patch)


def official_sigmas(steps: int, tokens: int, shift: bool = True) -> torch.Tensor:
    """get_schedule(steps, tokens, shift=shift): 1 ... 0, steps + 1 points (the core's Flux.1 schedule)."""
    return schedule.flux_sigmas(steps, tokens, shift)


def sampling_sigmas(model_patcher, scheduler: str, steps: int, latent_shape) -> torch.Tensor:
    """The schedule of a Flux edit: `official` (RF-Solver-Edit's, from the latent's size; no
    shift for Flux.1 schnell, as edit.py), or one of ComfyUI's schedulers on the model's own
    sampling settings (ModelSamplingFlux). HunyuanVideo's `official` is its video edit's schedule
    (`video_sigmas`); Chroma and Flux.2 have no official edit code: `official` is the model's own
    `simple` schedule there."""
    family = families.family_of(model_patcher)
    if scheduler == OFFICIAL and family is families.HUNYUAN_VIDEO:
        return video_sigmas(steps)
    if scheduler == OFFICIAL and family is not families.FLUX1:
        scheduler = "simple"
    if scheduler == OFFICIAL:
        schnell = isinstance(model_patcher.model.model_config, sm.FluxSchnell)
        return official_sigmas(steps, image_tokens(latent_shape), shift=not schnell)
    if scheduler not in SCHEDULERS:
        raise PnPError(f"Unknown scheduler {scheduler!r}; choose one of {SCHEDULERS}.")
    return schedule.sampling_sigmas(model_patcher.get_model_object("model_sampling"), scheduler, steps)


# RF-Solver-Edit's video edit on HunyuanVideo (wangjiangshan0725/RF-Solver-Edit at 3388e29,
# Hunyuanvideo_Video_Edit): sigmas linspace(1, 0, N + 1) (hyvideo/diffusion/schedulers/
# scheduling_flow_match_discrete.py lines 145-161), shifted by sd3_time_shift, shift * s / (1 + (shift - 1) * s)
# (lines 193-194), with --flow-shift 7.0 (hyvideo/config.py lines 185-190).
VIDEO_SHIFT = 7.0


def video_sigmas(steps: int, shift: float = VIDEO_SHIFT) -> torch.Tensor:
    if steps < 1:
        raise PnPError("`steps` must be at least 1.")
    s = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    return (shift * s / (1 + (shift - 1) * s)).float()
