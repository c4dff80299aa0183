"""Flux feature banks on disk: safetensors with versioned metadata, read without pickle.

A format of its own ("pnp-flux-feature-bank"), so that neither bank loader mistakes the
other's files for its own.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..bank_file import consistent_path, optional_tensors, read, write
from ..errors import PnPError
from ..inputs import check_bank_tensors, check_falling_sigmas, pixel_size
from . import layers as flux_layers
from . import solvers
from .bank import FeatureBank, image_count

FORMAT = "pnp-flux-feature-bank"
VERSION = 1
SUFFIX = ".pnpfluxbank.safetensors"  # Flux banks are listed by this suffix, apart from U-Net banks
UNET_FORMAT = "pnp-feature-bank"  # the U-Net wing's format (unet/bank_file.py), named here to point at its loader
FIX = "invert the source again and save the bank with PnP Flux Save Feature Bank."


def save(bank: FeatureBank, path: str | os.PathLike) -> Path:
    """Write `bank` to `path` atomically (a partial file never carries the final name)."""
    tensors = {"sigmas": bank.sigmas, "noise": bank.noise}
    tensors.update({f"features.{key}": t for key, t in bank.tables.items()})
    tensors.update(optional_tensors(bank))
    if bank.tokens is not None:
        tensors["tokens"] = bank.tokens
    metadata = {
        "format": FORMAT, "version": str(VERSION), "architecture": bank.architecture,
        "layers": bank.layers.describe(), "solver": bank.solver, "steps_kept": str(bank.steps_kept),
        "text_tokens": str(bank.text_tokens), "latent_shape": json.dumps(list(bank.noise.shape)),
        "first_step": str(bank.first_step),
    }
    return write(tensors, metadata, path)


def load(path: str | os.PathLike) -> FeatureBank:
    """Read a Flux bank file, checking format, version, that its tensors agree with its metadata,
    that they are floating and finite, that each table holds at least the source's tokens and that
    the schedule falls from 1 to 0 (once, here: a damaged bank would otherwise sample a black image)."""
    name = Path(path).name
    tensors, metadata = read(path, check_header, "Flux feature bank", "PnP Flux Save Feature Bank")
    try:
        layers = flux_layers.parse_custom(metadata["layers"])
        bank = FeatureBank(
            sigmas=tensors["sigmas"], noise=tensors["noise"],
            tables={key: tensors[f"features.{key}"] for key in layers.keys()}, layers=layers,
            solver=metadata["solver"], steps_kept=int(metadata["steps_kept"]),
            text_tokens=int(metadata["text_tokens"]), architecture=metadata["architecture"],
            path=tensors.get("path"), mask=tensors.get("mask"),
            first_step=int(metadata.get("first_step", "0")), tokens=tensors.get("tokens"),
        )
        solvers.check_solver(bank.solver)
        slots = bank.slots
        consistent = (
            list(bank.noise.shape) == json.loads(metadata["latent_shape"])
            and len(tensors) == 2 + len(bank.tables) + len(optional_tensors(bank)) + (bank.tokens is not None)
            and consistent_tokens(bank)
            and consistent_path(bank.path, bank.steps, bank.noise.shape)
            and all((t.shape[0] == slots and t.shape[1] == bank.noise.shape[0]) if slots else t.numel() == 0
                    for t in bank.tables.values())
            and bank.sigmas.ndim == 1 and bank.noise.ndim in (4, 5) and bank.steps_kept <= bank.steps
            and all(t.ndim == 4 for t in bank.tables.values() if t.numel())
        )
    except (KeyError, ValueError, TypeError, IndexError, PnPError):
        consistent = False
    if not consistent:
        raise PnPError(f"{name} is damaged: its tensors do not match its metadata. Save the bank again with "
                       f"PnP Flux Save Feature Bank.")
    check_bank_tensors(name, {"sigmas": bank.sigmas, "noise": bank.noise,
                              **{f"features.{key}": t for key, t in bank.tables.items()}, **optional_tensors(bank)}, FIX)
    check_falling_sigmas(name, bank.sigmas, FIX, first=1.0)
    check_tokens(name, bank)
    return bank


def consistent_tokens(bank: FeatureBank) -> bool:
    """Kept image tokens (KV-Edit): distinct indices within the image, as many as the tables hold,
    from a first step that leaves the kept steps within the schedule."""
    if bank.first_step + bank.steps_kept > bank.steps or bank.first_step < 0:
        return False
    if bank.tokens is None:
        return True
    t = bank.tokens
    image = image_count(bank.noise.shape)
    return (t.dtype == torch.int64 and t.ndim == 1 and (t.numel() == 0 or (int(t.min()) >= 0 and int(t.max()) < image))
            and len(torch.unique(t)) == len(t) and bank.mask is not None and bank.path is not None
            and all(table.shape[2] == len(t) for table in bank.tables.values() if table.numel()))


def check_tokens(name: str, bank: FeatureBank) -> None:
    """Each table holds at least the tokens its site has for the source latent (image tokens, plus
    the text tokens for all-token sites); reference latents (Kontext) may add more."""
    if bank.tokens is not None:  # KV-Edit: checked by consistent_tokens
        return
    image = image_count(bank.noise.shape, (1, 2, 2) if bank.noise.ndim == 5 else 2)  # video: frames unpatched
    for site in bank.layers.sites:
        needed = image + (bank.text_tokens if site.stream == "single" and site.tokens == "all" else 0)
        for tensor in site.tensors:
            key = site.key(tensor)
            table = bank.tables[key]
            if table.numel() and table.shape[2] < needed:
                raise PnPError(
                    f"{name} is damaged: its `{key}` table holds {table.shape[2]} tokens but its "
                    f"{pixel_size(bank.noise.shape)} source has {needed} there ({image} image tokens"
                    f"{f' and {bank.text_tokens} text tokens' if needed > image else ''}). The file was cut or "
                    f"written by other software; {FIX}")


def check_header(name: str, metadata: dict) -> None:
    if metadata.get("format") == UNET_FORMAT:
        raise PnPError(f"{name} is not a PnP Flux feature bank file (it is a U-Net bank: load it with PnP Load "
                       f"Feature Bank): choose a file written by PnP Flux Save Feature Bank.")
    if metadata.get("format") != FORMAT:
        found = f"its format is {metadata['format']!r}" if metadata.get("format") else f"no '{FORMAT}' metadata"
        raise PnPError(f"{name} is not a PnP Flux feature bank file ({found}): choose a file written by PnP Flux "
                       f"Save Feature Bank.")
    if metadata.get("version") != str(VERSION):
        raise PnPError(f"{name} is a Flux feature bank of version {metadata.get('version')!r}; this pack reads "
                       f"version {VERSION}. Invert and save it again with this version of the pack.")
