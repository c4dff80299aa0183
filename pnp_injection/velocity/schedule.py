"""The schedules of the velocity edits: each method's official one where its code ran on the family, else the
model's own.

- "flux": Flux.1's schedule, shifted for the image's token count (core `schedule.flux_sigmas`): FlowEdit
  (FlowEdit_utils.py lines 263-279), UniEdit-Flow's FLUX code (src/edit.py lines 163 and 187) and
  RF-Inversion (pipeline_flux_rf_inversion.py `__call__` and `invert`, sigmas linspace(1, 1/N, N) with the
  FLUX.1-dev scheduler's dynamic shift).
- "linear": Flux.1 schnell, unshifted (UniEdit-Flow src/edit.py line 163: `shift=(name != "flux-schnell")`).
- "shift3": diffusers' scheduler with a static shift of 3 (core `schedule.shifted_sigmas`): SD3's scheduler
  config, which FlowEditSD3 (FlowEdit_utils.py line 127) and UniEdit-Flow's demo_edit.py (lines 47-49) use,
  and UniEdit-Flow's Wan demo (demo_wan_video_edit.py lines 22 and 45-46: --flow_shift 3.0).
- "model": no official code for this method on the family: ComfyUI's `simple` scheduler on the model's own
  sampling settings (its ModelSampling node, if any).
"""
from __future__ import annotations

import math

import torch

from .. import schedule
from . import families

KINDS = ("flux", "linear", "shift3", "model")


def edit_sigmas(model_patcher, kind: str, steps: int, latent_shape) -> torch.Tensor:
    """sigma_0 = 1 (or the model's top) > ... > sigma_N = 0 for an edit of a latent of `latent_shape`."""
    if kind == "flux":
        return schedule.flux_sigmas(steps, image_tokens(latent_shape))
    if kind == "linear":
        return schedule.flux_sigmas(steps, 0, shift=False)
    if kind == "shift3":
        return schedule.shifted_sigmas(steps, 3.0)
    return schedule.sampling_sigmas(model_patcher.get_model_object("model_sampling"), "simple", steps)


def image_tokens(latent_shape) -> int:
    """Flux.1's image tokens: one per 2x2 latent cells (ComfyUI pads odd sizes)."""
    return math.ceil(latent_shape[-2] / 2) * math.ceil(latent_shape[-1] / 2)


def official_kind(table: dict[str, str], family: families.Family) -> str:
    """A method's schedule kind on `family` from its table of families with official code (else "model")."""
    return table.get(family.name, "model")
