"""Checks of what a user gives the engine, shared by the wings: source latents and numbers."""
from __future__ import annotations

import math

import torch

from .errors import PnPError


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


def check_source_size(shape, bank_shape, what: str = "latent") -> None:
    """A latent PnP injects into has the source's spatial size (8 px per latent cell)."""
    if tuple(shape[-2:]) != tuple(bank_shape[-2:]):
        raise PnPError(
            f"The {what} is {shape[-1] * 8}x{shape[-2] * 8} px but the feature bank was made at "
            f"{bank_shape[-1] * 8}x{bank_shape[-2] * 8} px: PnP injects into a latent of the source's size. "
            f"Sample at the source's size (upscale after PnP, with the unpatched model)."
        )
