"""Pictures of captured features: the first three principal components as RGB (the
paper's figure 3), at the source image's size, to see what structure the bank carries over."""
from __future__ import annotations

import math

import torch

from ..errors import PnPError
from ..inputs import VAE_SCALE
from ..preview import principal_components_rgb
from .bank import FeatureBank


def preview(bank: FeatureBank, step: int, kind: str = "resblock", block: int | None = None,
            index: int = 0) -> torch.Tensor:
    """PCA picture of the bank's ResBlock features, or of one self-attention layer's input (the
    normed hidden state its queries and keys are projected from), at `step`: IMAGE [rows, H, W, 3]
    at the source image's size (VAE_SCALE pixels per latent cell), each feature cell a block."""
    latent = tuple(bank.start.shape[-2:])
    size = (latent[0] * VAE_SCALE, latent[1] * VAE_SCALE)
    if kind == "resblock":
        block = bank.layers.resblocks[0] if block is None and bank.layers.resblocks else block
        if block not in bank.residual:
            raise PnPError(f"The bank holds no ResBlock features of output block {block}; it holds "
                           f"{sorted(bank.residual)}.")
        held = bank.residual[block]
        if not 0 <= step < held.shape[0]:
            raise PnPError(f"The bank holds ResBlock features for steps 0..{held.shape[0] - 1}; step {step} "
                           f"is not among them.")
        f = held[step]
        return principal_components_rgb(f.flatten(2).transpose(1, 2), tuple(f.shape[-2:]), size)
    key = (block if block is not None else bank.layers.attention[0][0], index)
    if key not in bank.attention:
        raise PnPError(f"The bank holds no self-attention of output block {key[0]} @ {key[1]}; it holds "
                       f"{', '.join(f'{b}@{i}' for b, i in sorted(bank.attention)) or 'none'}.")
    held = bank.attention[key]
    if not 0 <= step < held.shape[0]:
        raise PnPError(f"The bank holds attention for steps 0..{held.shape[0] - 1}; step {step} is not among them.")
    q = held[step]
    factor = math.sqrt(latent[0] * latent[1] / q.shape[1])
    grid = (round(latent[0] / factor), round(latent[1] / factor))
    return principal_components_rgb(q, grid, size)
