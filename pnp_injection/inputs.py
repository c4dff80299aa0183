"""Checks of what a user gives the engine, shared by the wings: source latents, numbers and
prompts (a loaded bank file is checked by bank_integrity)."""
from __future__ import annotations

import math

import torch

from .errors import PnPError

VAE_SCALE = 8  # pixels per latent cell of the SD, Flux and HunyuanVideo VAEs


def pixel_size(shape) -> str:
    """A latent's height and width as the image's, 'WxH px'."""
    return f"{shape[-1] * VAE_SCALE}x{shape[-2] * VAE_SCALE} px"


def check_latent(latent: torch.Tensor) -> None:
    if latent.ndim != 4 or latent.numel() == 0:
        raise PnPError(
            f"The source latent has shape {tuple(latent.shape)}; PnP needs an image latent "
            f"[batch, channels, height, width]: connect VAE Encode of the source image."
        )
    if not torch.isfinite(latent).all():
        raise PnPError("The source latent contains NaN or infinite values: re-encode the source image.")


def check_number(value: float, name: str, low: float | None = None, high: float | None = None) -> float:
    """A finite number within [low, high], or a PnPError naming the input and its range."""
    value = float(value)
    inside = math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high)
    if not inside:
        bounds = f" in [{low}, {high}]" if low is not None and high is not None else (
            f" of at least {low}" if low is not None else (f" of at most {high}" if high is not None else ""))
        raise PnPError(f"`{name}` is {value}; give a finite number{bounds}.")
    return value


def check_finite(**values: float) -> None:
    """Each named number finite (NaN and infinity refused), or a PnPError naming the input."""
    for name, value in values.items():
        check_number(value, name)


def check_source_size(shape, bank_shape, what: str = "latent") -> None:
    """A latent PnP injects into has the source's spatial size (and a video's frame count)."""
    if len(shape) == 5 or len(bank_shape) == 5:  # video: frames too
        if tuple(shape[2:]) != tuple(bank_shape[2:]) or len(shape) != len(bank_shape):
            def size(s):
                return f"{s[2]} latent frames of {pixel_size(s)}" if len(s) == 5 else pixel_size(s)
            raise PnPError(f"The {what} is {size(shape)} but the feature bank was made at {size(bank_shape)}: PnP "
                           f"injects into a latent of the source's frame count and size. Sample the clip's own length "
                           f"and size.")
        return
    if tuple(shape[-2:]) != tuple(bank_shape[-2:]):
        raise PnPError(
            f"The {what} is {pixel_size(shape)} but the feature bank was made at "
            f"{pixel_size(bank_shape)}: PnP injects into a latent of the source's size. "
            f"Sample at the source's size (upscale after PnP, with the unpatched model)."
        )


# Conditioning keys that make ComfyUI run a prompt on a crop of the latent (comfy/samplers.py
# get_area_and_mult, resolve_areas_and_cond_masks_multidim): `area` (ConditioningSetArea,
# ConditioningSetAreaPercentage) and `mask` with `set_area_to_bounds` (ConditioningSetMask,
# set_cond_area "mask bounds"). A mask without bounds weighs the whole latent: allowed.
def area_node(extras: dict) -> tuple[str, str] | None:
    """The node that made a conditioning entry an area prompt and how to undo it, or None for a
    whole-latent entry."""
    area = extras.get("area")
    if area is not None:
        percentage = isinstance(area, (tuple, list)) and len(area) > 0 and area[0] == "percentage"
        node = "Conditioning (Set Area with Percentage)" if percentage else "Conditioning (Set Area)"
        return node, f"drop the {node} node"
    if extras.get("mask") is not None and extras.get("set_area_to_bounds"):
        return ('Conditioning (Set Mask) with set_cond_area "mask bounds"',
                'set Conditioning (Set Mask)\'s set_cond_area to "default"')
    return None


def check_whole_latent(conditioning, what: str) -> None:
    """A prompt PnP injects into or records from covers the whole latent: area prompts are refused.

    `conditioning` is a CONDITIONING ([[context, extras], ...]) or a guider's prepared list of
    dicts; None (no prompt) passes."""
    for entry in conditioning or []:
        found = area_node(entry if isinstance(entry, dict) else entry[1])
        if found is not None:
            node, fix = found
            raise PnPError(
                f"{what} is an area prompt ({node}): ComfyUI runs it on a crop of the latent, and PnP injects "
                f"features of the whole latent. Remove the area from this prompt ({fix}); PnP edits the whole image."
            )


def check_whole_latent_prompts(conds: dict | None, what: str = "The target's") -> None:
    """Every prompt of a guider (`guider.conds`: positive, negative, ...) covers the whole latent."""
    for name, conditioning in (conds or {}).items():
        check_whole_latent(conditioning, f"{what} `{name}` prompt")


def check_same_architecture(bank_signature: str, here: str, redo: str) -> None:
    """A bank serves only the architecture it was made on; the message names both, by family
    and config where they differ there, else in full (same family, other widths)."""
    if bank_signature == here:
        return
    short = [s.split(":[")[0] for s in (bank_signature, here)]
    made, this = short if short[0] != short[1] else (bank_signature, here)
    raise PnPError(f"This feature bank was made on another architecture ({made}), not on this model ({this}). "
                   f"{redo} with this model.")
