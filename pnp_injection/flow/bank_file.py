"""Flux feature banks on disk: safetensors with versioned metadata, read without pickle.

A format of its own ("pnp-flux-feature-bank"), so that neither bank loader mistakes the
other's files for its own.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..bank_file import read, write
from ..errors import PnPError
from . import layers as flux_layers
from .bank import FeatureBank

FORMAT = "pnp-flux-feature-bank"
VERSION = 1
SUFFIX = ".pnpfluxbank.safetensors"  # Flux banks are listed by this suffix, apart from U-Net banks


def save(bank: FeatureBank, path: str | os.PathLike) -> Path:
    """Write `bank` to `path` atomically (a partial file never carries the final name)."""
    tensors = {"sigmas": bank.sigmas, "noise": bank.noise}
    tensors.update({f"features.{key}": t for key, t in bank.tables.items()})
    metadata = {
        "format": FORMAT, "version": str(VERSION), "architecture": bank.architecture,
        "layers": bank.layers.describe(), "solver": bank.solver, "steps_kept": str(bank.steps_kept),
        "text_tokens": str(bank.text_tokens), "latent_shape": json.dumps(list(bank.noise.shape)),
    }
    return write(tensors, metadata, path)


def load(path: str | os.PathLike) -> FeatureBank:
    """Read a Flux bank file, checking format, version and that its tensors agree with its metadata."""
    name = Path(path).name
    tensors, metadata = read(path, check_header, "Flux feature bank", "PnP Flux Save Bank")
    try:
        layers = flux_layers.parse_custom(metadata["layers"])
        bank = FeatureBank(
            sigmas=tensors["sigmas"], noise=tensors["noise"],
            tables={key: tensors[f"features.{key}"] for key in layers.keys()}, layers=layers,
            solver=metadata["solver"], steps_kept=int(metadata["steps_kept"]),
            text_tokens=int(metadata["text_tokens"]), architecture=metadata["architecture"],
        )
        slots = bank.steps_kept * bank.evaluations
        consistent = (
            list(bank.noise.shape) == json.loads(metadata["latent_shape"])
            and len(tensors) == 2 + len(bank.tables)
            and all((t.shape[0] == slots and t.shape[1] == bank.noise.shape[0]) if slots else t.numel() == 0
                    for t in bank.tables.values())
            and bank.sigmas.ndim == 1 and bool(torch.isfinite(bank.sigmas).all())
            and bool(torch.isfinite(bank.noise).all()) and bank.steps_kept <= bank.steps
        )
    except (KeyError, ValueError, TypeError, IndexError, PnPError):
        consistent = False
    if not consistent:
        raise PnPError(f"{name} is damaged: its tensors do not match its metadata. Save the bank again with "
                       f"PnP Flux Save Bank.")
    return bank


def check_header(name: str, metadata: dict) -> None:
    if metadata.get("format") != FORMAT:
        other = " (it is a U-Net bank: load it with PnP Load Feature Bank)" if metadata.get("format") else ""
        raise PnPError(f"{name} is not a PnP Flux feature bank file{other}: choose a file written by PnP Flux Save Bank.")
    if metadata.get("version") != str(VERSION):
        raise PnPError(f"{name} is a Flux feature bank of version {metadata.get('version')!r}; this pack reads "
                       f"version {VERSION}. Invert and save it again with this version of the pack.")
