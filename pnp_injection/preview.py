"""Pictures of kept features, shared by both wings' previews: the first three principal
components as RGB (the paper's figure 3), drawn at the source image's size so that a user can
see them (a 512 px source has a 64x64 latent and coarser feature grids).

Nearest-neighbour enlargement: each feature-grid cell (a token) becomes a block of one colour,
so the picture shows the grid the model works on; smoothing would invent colours between
tokens that no feature holds.
"""
from __future__ import annotations

import torch


def principal_components(features: torch.Tensor) -> torch.Tensor:
    """[rows, tokens, C] features -> [rows, tokens, 3]: their projections on the first three
    principal components, each scaled to span exactly [0, 1] (a flat component is 0).

    The components and the scaling are fitted over all rows together, so rows (frames) share
    one colour map. Fewer than three components (C < 3) leave the missing channels at 0.
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
    return rgb.reshape(rows, tokens, 3)


def enlarge(rgb: torch.Tensor, grid: tuple[int, ...], size: tuple[int, int],
            cell: tuple[int, int] | None = None) -> torch.Tensor:
    """[rows, tokens, 3] colours on an h x w grid -> IMAGE [rows, H, W, 3] of `size` (H, W).

    With `cell` (pixels per grid cell, per axis) each cell becomes exactly that block and the
    picture is cut to `size` (tokens that pad an odd latent fall outside it); without, the grid
    is stretched to `size` by nearest neighbour (grids that do not divide the size, as a U-Net
    layer's after the encoder rounded odd sizes up).
    """
    image = rgb.reshape(rgb.shape[0], *grid, 3).permute(0, 3, 1, 2)
    if cell is None:
        image = torch.nn.functional.interpolate(image, size=size, mode="nearest-exact")
    else:
        image = image.repeat_interleave(cell[0], dim=2).repeat_interleave(cell[1], dim=3)[..., : size[0], : size[1]]
    return image.permute(0, 2, 3, 1).contiguous().cpu()


def principal_components_rgb(features: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """[rows, tokens, C] features on an h x w grid -> IMAGE [rows, H, W, 3] in [0, 1] of `size`."""
    return enlarge(principal_components(features), grid, size)
