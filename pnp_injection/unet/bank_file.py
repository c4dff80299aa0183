"""U-Net feature banks on disk: the core's bank_file with this wing's format, and the layout its
metadata implies for every tensor (checked from the header before any tensor is read)."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .. import bank_file
from ..bank_integrity import (Damaged, Expected, Header, Layout, check_latent_shape, check_schedule, json_field,
                              number, optional_layout, steps_of)
from ..layer_text import MAX_COUNT
from .bank import FeatureBank
from .layers import LayerSet

FORMAT = bank_file.register(bank_file.Format(
    name="pnp-feature-bank",
    version=2,  # 2: self-attention kept as its input (1 held queries and keys)
    suffix=".pnpbank.safetensors",  # banks are listed by this suffix: no checkpoint is ever offered as one
    what="U-Net feature bank", saver="PnP Save Feature Bank", loader="PnP Load Feature Bank",
    fix="capture the source again and save the bank with PnP Save Feature Bank."))
SUFFIX = FORMAT.suffix
LATENT_CHANNELS = {"sd1": 4, "sd2": 4, "sdxl": 4}  # the families' latents (other configs: not checked)
LEVELS = range(5)  # the latent halved 0 to 4 times: every resolution a U-Net's decoder works at


def save(bank: FeatureBank, path: str | os.PathLike) -> Path:
    """Write `bank` to `path` atomically (a partial file never carries the final name)."""
    bank_file.check_savable(bank, FORMAT)
    tensors = {"sigmas": bank.sigmas, "start": bank.start}
    tensors.update({f"residual.{b}": t for b, t in bank.residual.items()})
    tensors.update({f"attention.{b}.{i}": t for (b, i), t in bank.attention.items()})
    tensors.update(bank_file.optional_tensors(bank))
    metadata = {
        "format": FORMAT.name,
        "version": str(FORMAT.version),
        "architecture": bank.architecture,
        "layers": json.dumps({"resblocks": list(bank.layers.resblocks),
                              "attention": [list(k) for k in bank.layers.attention]}),
        "latent_shape": json.dumps(list(bank.start.shape)),
        "steps": str(bank.steps),
        "feature_step_count": str(bank.feature_step_count),
        "attention_step_count": str(bank.attention_step_count),
    }
    return bank_file.write(tensors, metadata, path)


def load(path: str | os.PathLike) -> FeatureBank:
    """Read a bank file, every field checked once (`bank_file.read`): a damaged or edited file is
    refused before it can sample a wrong or black image."""
    tensors, metadata = bank_file.read(path, FORMAT, layout, lambda small: check_schedule(small["sigmas"]))
    layers = read_layers(metadata)
    return FeatureBank(
        sigmas=tensors["sigmas"], start=tensors["start"],
        residual={b: tensors[f"residual.{b}"] for b in layers.resblocks},
        attention={k: tensors[f"attention.{k[0]}.{k[1]}"] for k in layers.attention},
        layers=layers, architecture=metadata["architecture"], path=tensors.get("path"), mask=tensors.get("mask"),
    )


def read_layers(metadata) -> LayerSet:
    spec = json_field(metadata, "layers")
    try:
        layers = LayerSet(tuple(int(b) for b in spec["resblocks"]), tuple((int(b), int(i)) for b, i in spec["attention"]))
    except (KeyError, TypeError, ValueError):
        raise Damaged("layers", f"it is {metadata['layers'][:60]!r}, not a layer set") from None
    count = len(layers.resblocks) + len(layers.attention)
    if count > MAX_COUNT or len(set(layers.resblocks)) + len(set(layers.attention)) != count:
        raise Damaged("layers", f"it names {count} layers, some twice or more than {MAX_COUNT}")
    return layers


def layout(header: Header) -> Layout:
    """What the metadata says each tensor is: the schedule's steps, the latent's rows, channels and
    size, each layer's channels (from the architecture's weight shapes) at one of the decoder's
    resolutions, for the steps the metadata counts."""
    metadata = header.metadata
    steps = steps_of(header)
    if number(metadata, "steps") != steps:
        raise Damaged("steps", f"it is {metadata['steps']} but the schedule (`sigmas`) has {steps} steps")
    layers = read_layers(metadata)
    architecture = metadata.get("architecture")
    if architecture is None:
        raise Damaged("architecture", "the metadata field is missing")
    family = architecture.split(":")[0]
    latent = check_latent_shape("latent_shape", json_field(metadata, "latent_shape"), LATENT_CHANNELS.get(family))
    # The signature lists each layer's weight shape (layers.signature): a ResBlock's conv (out, in, 3, 3),
    # an attention's to_q (inner, channels).
    try:
        weights = [tuple(int(n) for n in found.split(",") if n.strip())
                   for found in re.findall(r"\(([0-9, ]*)\)", architecture)]
    except ValueError:  # a number of thousands of digits
        weights = []
    if len(weights) != len(layers.resblocks) + len(layers.attention) or not all(weights):
        raise Damaged("architecture", f"it gives {len(weights)} weight shapes for {len(layers.resblocks)} ResBlocks "
                                      f"and {len(layers.attention)} attention layers")
    rows, height, width = latent[0], latent[-2], latent[-1]
    features = number(metadata, "feature_step_count", 0, steps)
    attention = number(metadata, "attention_step_count", 0, steps)
    out: Layout = {"sigmas": Expected((steps + 1,), "steps + 1"),
                   "start": Expected(latent, "rows, channels, height, width")}
    for b, weight in zip(layers.resblocks, weights):
        key, shape = f"residual.{b}", header.shape(f"residual.{b}")
        h, w = _level(shape[-2:] if shape and len(shape) == 5 else None, height, width)
        out[key] = Expected((features, rows, weight[0], h, w) if features else (0,),
                            "feature steps, rows, channels, height, width", table=True)
    for key_pair, weight in zip(layers.attention, weights[len(layers.resblocks):]):
        key, shape = f"attention.{key_pair[0]}.{key_pair[1]}", header.shape(f"attention.{key_pair[0]}.{key_pair[1]}")
        tokens = _tokens(shape[2] if shape and len(shape) == 4 else None, height, width)
        out[key] = Expected((attention, rows, tokens, weight[-1]) if attention else (0,),
                            "attention steps, rows, tokens, channels", table=True)
    return {**out, **optional_layout(header, steps, latent)}


def _level(declared, height: int, width: int) -> tuple[int, int]:
    """The declared size if it is the latent's halved some times (rounding up), else the latent's."""
    sizes = [(math.ceil(height / 2**k), math.ceil(width / 2**k)) for k in LEVELS]
    return tuple(declared) if declared is not None and tuple(declared) in sizes else sizes[0]


def _tokens(declared, height: int, width: int) -> int:
    """The declared token count if it is the cells of one resolution of the latent, else the latent's."""
    counts = [math.ceil(height / 2**k) * math.ceil(width / 2**k) for k in LEVELS]
    return declared if declared in counts else counts[0]
