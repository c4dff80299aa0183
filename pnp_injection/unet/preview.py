"""Pictures of captured features: the first three principal components as RGB (the
paper's figure 3), to see what structure the bank carries over."""
from __future__ import annotations

import math

import torch

from ..errors import PnPError
from .bank import FeatureBank


def principal_components_rgb(features: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """[B, tokens, C] features on an h x w grid -> IMAGE [B, H, W, 3] in [0, 1].

    The components are fitted over all rows together, so frames share one colour map.
    """
    rows, tokens, channels = features.shape
    x = features.float().reshape(rows * tokens, channels)
    x = x - x.mean(dim=0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    rgb = x @ v[: min(3, v.shape[0])].T
    if rgb.shape[1] < 3:
        rgb = torch.cat([rgb, rgb.new_zeros(rgb.shape[0], 3 - rgb.shape[1])], dim=1)
    lo, hi = rgb.min(dim=0).values, rgb.max(dim=0).values
    rgb = (rgb - lo) / (hi - lo).clamp_min(1e-8)
    image = rgb.reshape(rows, *grid, 3).permute(0, 3, 1, 2)
    image = torch.nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False)
    return image.permute(0, 2, 3, 1).clamp(0, 1).cpu()


def preview(bank: FeatureBank, step: int, kind: str = "resblock", block: int | None = None,
            index: int = 0) -> torch.Tensor:
    """PCA picture of the bank's ResBlock features, or of one self-attention layer's input (the
    normed hidden state its queries and keys are projected from), at `step`."""
    size = tuple(bank.start.shape[-2:])
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
    factor = math.sqrt(size[0] * size[1] / q.shape[1])
    grid = (round(size[0] / factor), round(size[1] / factor))
    return principal_components_rgb(q, grid, size)
