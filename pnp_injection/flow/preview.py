"""Pictures of a flow bank's kept features: the first three principal components of one site
tensor's image tokens as RGB (the paper's figure 3, as the U-Net wing's preview draws it), at the
source image's size, to see what structure the bank carries over.

A table holds [slots, rows, tokens, hidden] per site key (`bank.FeatureBank`). Its image tokens
are 2x2 latent cells on Flux.1 and Chroma, one cell on Flux.2, and 1x2x2 (frame, height, width)
cells on HunyuanVideo, in row-major order (`Family.patch`). A single-block site of all tokens
holds the text tokens too: before the image's (Flux.1, Chroma, Flux.2) or after them
(HunyuanVideo), as `patches.site_view` cuts them; image tokens of reference latents (Flux
Kontext) follow the latent's own and are left out. A KV-Edit bank keeps the background's tokens
only: the edited region is drawn black.
"""
from __future__ import annotations

import math

import torch

from ..errors import PnPError
from ..inputs import VAE_SCALE
from ..preview import enlarge, principal_components
from . import families
from .bank import FeatureBank, slot_index

FAMILIES = {family.name: family for family in families.FAMILIES}
# Pixels per latent cell where a family's VAE is not 8x: Flux.2's latent packs 2x2 cells of an 8x VAE
# (EmptyFlux2LatentImage: height // 16).
PIXELS_PER_CELL = {"flux2": 16}


def bank_family(bank: FeatureBank) -> families.Family:
    return FAMILIES.get(bank.architecture.split(":")[0], families.FLUX1)


def held_steps(bank: FeatureBank) -> range:
    """The sampling steps whose features the bank holds."""
    return range(bank.first_step, bank.first_step + bank.steps_kept)


def slot_of_step(bank: FeatureBank, step: int) -> int:
    """The slot holding sampling step `step`'s features: its first evaluation's where the solver keeps
    one (RF-Solver: at the step's start; Euler), else its midpoint's (FireFlow)."""
    held = held_steps(bank)
    if step not in held:
        span = f"steps {held.start}..{held.stop - 1}" if len(held) else "no step"
        raise PnPError(f"The bank holds the features of sampling {span} (0 is the noisiest); step {step} is not "
                       f"among them. Give a step in that range, or -1 for the first.")
    for evaluation in (0, 1):
        slot = slot_index(bank.solver, bank.steps, step - bank.first_step, evaluation)
        if slot is not None:
            return slot
    raise PnPError(f"The bank's solver {bank.solver!r} keeps no evaluation of step {step}.")  # not reached


def check_site(bank: FeatureBank, site: str) -> str:
    """The table key to draw: `site` ('single.20.v'), or the bank's first when empty."""
    keys = bank.layers.keys()
    site = site.strip() or keys[0]
    if site not in bank.tables:
        shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
        raise PnPError(f"The bank holds no features at {site!r}; it holds {shown}. Write a site as "
                       f"<double|single>.<block>.<q|k|v>, as 'single.20.v', or leave it empty for the first.")
    return site


def image_features(bank: FeatureBank, site: str, slot: int) -> torch.Tensor:
    """[rows, kept image tokens, hidden]: the slot's features at `site` without the text tokens and
    the reference latents' tokens."""
    table = bank.tables[site][slot]
    owner = next(s for s in bank.layers.sites if site in (s.key(t) for t in s.tensors))
    text = bank.text_tokens if owner.stream == "single" and owner.tokens == "all" else 0
    image = len(bank.tokens) if bank.tokens is not None else math.prod(grid_of(bank))
    if table.shape[1] < text + image:
        raise PnPError(f"The bank's table {site} holds {table.shape[1]} tokens, fewer than its {image} image tokens "
                       f"and {text} text tokens: the bank is damaged; invert the source again.")
    start = 0 if bank_family(bank) is families.HUNYUAN_VIDEO else text  # HunyuanVideo: [video, text]
    return table[:, start: start + image]


def grid_of(bank: FeatureBank) -> tuple[int, int, int]:
    """The image-token grid of the bank's latent: (frames, height, width); 1 frame for an image."""
    family = bank_family(bank)
    dims = list(bank.noise.shape[2:])
    patch = list(family.patch) if isinstance(family.patch, (tuple, list)) else [family.patch] * len(dims)
    grid = tuple(math.ceil(d / p) for d, p in zip(dims, patch[-len(dims):]))
    return grid if len(grid) == 3 else (1, *grid)


def preview(bank: FeatureBank, site: str = "", step: int = -1, frame: int = 0) -> torch.Tensor:
    """PCA picture of the bank's features at `site` and sampling step `step` (-1: the first the
    bank holds): IMAGE [rows, H, W, 3] at the source's size, each token a block of its latent
    cells. On video, latent frame `frame`, or every frame (-1: rows x frames pictures, a row's
    frames together). The colours are fitted over everything drawn at once."""
    site = check_site(bank, site)
    step = held_steps(bank).start if step == -1 else step
    slot = slot_of_step(bank, step)
    frames, height, width = grid_of(bank)
    if not -1 <= frame < frames:
        raise PnPError(f"The bank's source has {frames} latent frame{'s' if frames > 1 else ''} (0..{frames - 1}); "
                       f"frame {frame} is not among them. Give one of them, or -1 for every frame.")
    features = image_features(bank, site, slot).float().cpu()  # one slot: small
    positions = torch.arange(frames * height * width) if bank.tokens is None else bank.tokens.to(torch.long).cpu()
    drawn = frames if frame == -1 else 1
    if frame != -1:
        chosen = positions // (height * width) == frame
        features, positions = features[:, chosen], positions[chosen] - frame * height * width
    colours = principal_components(features)
    canvas = colours.new_zeros(features.shape[0], drawn * height * width, 3)  # tokens not kept stay black
    canvas[:, positions] = colours
    family = bank_family(bank)
    scale = PIXELS_PER_CELL.get(family.name, VAE_SCALE)
    patch = family.patch if isinstance(family.patch, (tuple, list)) else (family.patch, family.patch)
    cell = (patch[-2] * scale, patch[-1] * scale)
    size = (bank.noise.shape[-2] * scale, bank.noise.shape[-1] * scale)
    return enlarge(canvas.reshape(-1, height * width, 3), (height, width), size, cell)
