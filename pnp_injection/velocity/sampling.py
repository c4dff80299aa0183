"""The one-node edits (FlowEdit, UniEdit-Flow, RF-Inversion): their settings left at "auto", their mask, and
the sampling run through the host with its live preview."""
from __future__ import annotations

import latent_preview
import torch

from .. import passes, region

AUTO = -1  # an integer or float widget's "official" value


def chosen(value, official):
    """A knob's value: the official one where the widget was left at AUTO."""
    return official if value == AUTO else value


def edit_mask(mask: torch.Tensor | None, latent: dict, rows: int) -> torch.Tensor | None:
    """The edit's region: the node's MASK, else the source latent's noise_mask (Set Latent Noise Mask), checked and
    at the latent's size; None edits everywhere."""
    chosen_mask = mask if mask is not None else latent.get("noise_mask")
    if chosen_mask is None:
        return None
    return region.check_mask(chosen_mask, latent["samples"].shape, rows)


def run(guider, latent: torch.Tensor, sampler, sigmas: torch.Tensor, noise: torch.Tensor | None = None, seed: int = 0,
        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sample `latent` (user space) with `guider` and an edit `sampler` on `sigmas`, with the live preview."""
    preview = latent_preview.prepare_callback(guider.model_patcher, len(sigmas) - 1)
    return passes.sample(guider, latent, sampler, sigmas, noise=noise, seed=seed, callback=preview, denoise_mask=mask)
