"""Regional velocity edits: a mask says where the edit acts (1) and where the source stays (0).

The mask reaches an edit sampler as ComfyUI's denoise mask (a node's MASK, or the noise_mask of the latent
given to SamplerCustomAdvanced), else as the noise_mask the source carried into an inversion. The host's own
inpainting blend is kept out of the calls (a FlowEdit latent is not a noised latent); each sampler applies
the mask itself, the same way as the pack's other regional edits (pnp_injection/region.py):
- at every step the edit acts on the mask's support (every value above 0; a mask function on the model, as
  Differential Diffusion's, decides instead, applied as the host applies it), and outside it the latent is
  the source's own state at that level (FlowEdit: the source itself; an inversion's path elsewhere);
- at the end a soft value m gives m of the edit and 1 - m of the source, so a feather blends.
"""
from __future__ import annotations

import torch

from .. import region


class EditMask:
    """The mask of one sampling run, at the run's latent shape, or nothing (edit everywhere)."""

    def __init__(self, mask: torch.Tensor | None, x: torch.Tensor, model, sigmas, extra_args: dict):
        self.function = extra_args.get("model_options", {}).get("denoise_mask_function")
        self.model, self.sigmas = model, sigmas
        self.mask = None
        if mask is not None:
            cells = check_mask(mask[:, :1] if mask.ndim == x.ndim else mask, x.shape, x.shape[0])
            self.mask = region.rows_of(cells, x.shape[0]).to(x).expand(x.shape)

    def __bool__(self) -> bool:
        return self.mask is not None

    def support(self, sigma: float) -> torch.Tensor:
        """Where the edit acts at `sigma`: the mask's support, or the model's mask function's answer."""
        if self.function is not None:
            timestep = self.mask.new_full((self.mask.shape[0],), sigma)
            return self.function(timestep, self.mask, extra_options={"model": self.model.inner_model,
                                                                     "sigmas": self.sigmas})
        return (self.mask > 0).to(self.mask.dtype)

    def hold(self, x: torch.Tensor, source: torch.Tensor, sigma: float) -> torch.Tensor:
        """`x` inside the region acting at `sigma`, `source` (the source's state there) outside it."""
        if self.mask is None:
            return x
        m = self.support(sigma)
        return x * m + source * (1 - m)

    def composite(self, edited: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """The result: the edit inside, the source outside, soft values blended (with a mask function: its own
        rule governs soft values, and only cells of 0 are the source)."""
        if self.mask is None:
            return edited
        if self.function is not None:
            return torch.where(self.mask > 0, edited, source)
        return edited * self.mask + source * (1 - self.mask)


def check_mask(mask: torch.Tensor, latent_shape, rows: int) -> torch.Tensor:
    """region.check_mask, where a latent of one frame ([B, C, 1, H, W]: Qwen-Image's images) is an image."""
    if len(latent_shape) == 5 and latent_shape[2] == 1:
        image = mask[:, :, 0] if mask.ndim == 5 else mask
        return region.check_mask(image, (*latent_shape[:2], *latent_shape[3:]), rows).unsqueeze(2)
    return region.check_mask(mask, latent_shape, rows)


def denoise_mask(extra_args: dict, fallback: torch.Tensor | None = None) -> torch.Tensor | None:
    """The run's mask: the host's denoise mask (a node's MASK, the sampled latent's noise_mask), else `fallback`
    (the noise_mask the source carried into an inversion)."""
    given = extra_args.get("denoise_mask")
    return given if given is not None else fallback
