"""U-Net feature banks on disk (the core's bank_file, with this wing's format)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..bank_file import consistent_path, optional_tensors, read, write
from ..errors import PnPError
from ..inputs import check_bank_tensors, check_falling_sigmas
from .bank import FeatureBank
from .layers import LayerSet

FORMAT = "pnp-feature-bank"
VERSION = 2          # 2: self-attention kept as its input (1 held queries and keys)
SUFFIX = ".pnpbank.safetensors"  # banks are listed by this suffix: no checkpoint is ever offered as one
FLUX_FORMAT = "pnp-flux-feature-bank"  # the Flux wing's format (flow/bank_file.py), named here to point at its loader
FIX = "capture the source again and save the bank with PnP Save Feature Bank."


def save(bank: FeatureBank, path: str | os.PathLike) -> Path:
    """Write `bank` to `path` atomically (a partial file never carries the final name)."""
    tensors = {"sigmas": bank.sigmas, "start": bank.start}
    tensors.update({f"residual.{b}": t for b, t in bank.residual.items()})
    tensors.update({f"attention.{b}.{i}": t for (b, i), t in bank.attention.items()})
    tensors.update(optional_tensors(bank))
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "architecture": bank.architecture,
        "layers": json.dumps({"resblocks": list(bank.layers.resblocks),
                              "attention": [list(k) for k in bank.layers.attention]}),
        "latent_shape": json.dumps(list(bank.start.shape)),
        "steps": str(bank.steps),
        "feature_step_count": str(bank.feature_step_count),
        "attention_step_count": str(bank.attention_step_count),
    }
    return write(tensors, metadata, path)


def load(path: str | os.PathLike) -> FeatureBank:
    """Read a bank file: format and version from the header first, then its tensors, checked
    against the metadata, for floating finite values and a schedule falling to 0 (once, here:
    a damaged bank would otherwise sample a black image)."""
    name = Path(path).name
    tensors, metadata = read(path, check_header, "feature bank", "PnP Save Feature Bank")
    try:
        layer_spec = json.loads(metadata["layers"])
        layers = LayerSet(tuple(int(b) for b in layer_spec["resblocks"]),
                          tuple((int(b), int(i)) for b, i in layer_spec["attention"]))
        bank = FeatureBank(
            sigmas=tensors["sigmas"],
            start=tensors["start"],
            residual={b: tensors[f"residual.{b}"] for b in layers.resblocks},
            attention={k: tensors[f"attention.{k[0]}.{k[1]}"] for k in layers.attention},
            layers=layers,
            architecture=metadata["architecture"],
            path=tensors.get("path"),
            mask=tensors.get("mask"),
        )
        consistent = (
            list(bank.start.shape) == json.loads(metadata["latent_shape"])
            and bank.steps == int(metadata["steps"])
            and bank.feature_step_count == int(metadata["feature_step_count"])
            and bank.attention_step_count == int(metadata["attention_step_count"])
            and all(t.shape[1] == bank.start.shape[0] for t in bank.tables.values())
            and bank.sigmas.ndim == 1
            and consistent_path(bank.path, bank.steps, bank.start.shape)
        )
    except (KeyError, ValueError, TypeError, IndexError):
        consistent = False
    if not consistent:
        raise PnPError(f"{name} is damaged: its tensors do not match its metadata. Save the bank again "
                       f"with PnP Save Feature Bank.")
    check_bank_tensors(name, {"sigmas": bank.sigmas, "start": bank.start,
                              **{f"residual.{b}": t for b, t in bank.residual.items()},
                              **{f"attention.{b}.{i}": t for (b, i), t in bank.attention.items()},
                              **optional_tensors(bank)}, FIX)
    check_falling_sigmas(name, bank.sigmas, FIX)
    return bank


def check_header(name: str, metadata: dict) -> None:
    if metadata.get("format") == FLUX_FORMAT:
        raise PnPError(f"{name} is a Flux feature bank: load it with PnP Flux Load Feature Bank (and sample it with "
                       f"the PnP Flux nodes), or choose a file written by PnP Save Feature Bank.")
    if metadata.get("format") != FORMAT:
        raise PnPError(f"{name} is not a PnP feature bank file (no '{FORMAT}' metadata): choose a file "
                       f"written by PnP Save Feature Bank.")
    if metadata.get("version") != str(VERSION):
        raise PnPError(f"{name} is a feature bank of version {metadata.get('version')!r}; this pack reads "
                       f"version {VERSION}. Capture and save it again with this version of the pack.")
