"""The one-node edits (FlowEdit, UniEdit-Flow, RF-Inversion): their settings left at "auto", their mask, and
the sampling run through the host with its live preview."""
from __future__ import annotations

import comfy.sample
import latent_preview
import torch

from .. import passes
from .masks import check_mask

AUTO = -1  # an integer or float widget's "official" value


def chosen(value, official):
    """A knob's value: the official one where the widget was left at AUTO."""
    return official if value == AUTO else value


def edit_mask(mask: torch.Tensor | None, latent: dict, shape, rows: int) -> torch.Tensor | None:
    """The edit's region: the node's MASK, else the source latent's noise_mask (Set Latent Noise Mask), checked and
    at the size of the latent of `shape`; None edits everywhere."""
    chosen_mask = mask if mask is not None else latent.get("noise_mask")
    if chosen_mask is None:
        return None
    return check_mask(chosen_mask, shape, rows)


def source_samples(model_patcher, latent: dict) -> torch.Tensor:
    """The source latent's samples as the model takes them (a 4-D latent becomes the 1-frame 5-D latent of models
    with 3-D latents, such as Qwen-Image, as the host's samplers do)."""
    return comfy.sample.fix_empty_latent_channels(model_patcher, latent["samples"])


def run(guider, latent: torch.Tensor, sampler, sigmas: torch.Tensor, noise: torch.Tensor | None = None, seed: int = 0,
        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sample `latent` (user space) with `guider` and an edit `sampler` on `sigmas`, with the live preview."""
    preview = latent_preview.prepare_callback(guider.model_patcher, len(sigmas) - 1)
    return passes.sample(guider, latent, sampler, sigmas, noise=noise, seed=seed, callback=preview, denoise_mask=mask)
