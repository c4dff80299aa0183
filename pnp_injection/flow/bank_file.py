"""Flux-family feature banks on disk (Flux.1, Chroma, Flux.2, HunyuanVideo, KV-Edit): the core's
bank_file with this wing's format ("pnp-flux-feature-bank", its own, so that neither bank loader
mistakes the other's files for its own), and the layout its metadata implies for every tensor
(checked from the header before any tensor is read)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .. import bank_file
from ..bank_integrity import (CHECKSUM, MAX_CELLS, Damaged, Expected, Header, Layout, check_latent_shape,
                              check_schedule, json_field, number, optional_layout, steps_of)
from ..errors import PnPError
from . import layers as flux_layers
from . import families, solvers
from .bank import FeatureBank, image_count, slot_count
from .kv_edit import background

FORMAT = bank_file.register(bank_file.Format(
    name="pnp-flux-feature-bank", version=1,
    suffix=".pnpfluxbank.safetensors",  # Flux banks are listed by this suffix, apart from U-Net banks
    what="Flux feature bank", saver="PnP Flux/Chroma/HunyuanVideo Save Feature Bank",
    loader="PnP Flux/Chroma/HunyuanVideo Load Feature Bank",
    fix="invert the source again and save the bank with PnP Flux/Chroma/HunyuanVideo Save Feature Bank."))
SUFFIX = FORMAT.suffix
MAX_TEXT_TOKENS = 2**16  # a prompt's tokens: ComfyUI pads T5 to 256 (Flux.2: 512); long prompts add a few hundred
FAMILIES = {family.name: family for family in families.FAMILIES}


def save(bank: FeatureBank, path: str | os.PathLike) -> Path:
    """Write `bank` to `path` atomically (a partial file never carries the final name)."""
    bank_file.check_savable(bank, FORMAT)
    tensors = {"sigmas": bank.sigmas, "noise": bank.noise}
    tensors.update({f"features.{key}": t for key, t in bank.tables.items()})
    tensors.update(bank_file.optional_tensors(bank))
    if bank.tokens is not None:
        tensors["tokens"] = bank.tokens
    metadata = {
        "format": FORMAT.name, "version": str(FORMAT.version), "architecture": bank.architecture,
        "layers": bank.layers.describe(), "solver": bank.solver, "steps_kept": str(bank.steps_kept),
        "text_tokens": str(bank.text_tokens), "latent_shape": json.dumps(list(bank.noise.shape)),
        "first_step": str(bank.first_step), "image_tokens": str(image_tokens(bank)),
    }
    return bank_file.write(tensors, metadata, path)


def image_tokens(bank: FeatureBank) -> int:
    """The image tokens of the inversion's model calls, as its tables hold them: the latent's, plus
    those of reference latents (Flux Kontext) on the inversion's prompt."""
    if bank.tokens is None:
        for site in bank.layers.sites:
            table = bank.tables[site.key(site.tensors[0])]
            if table.ndim == 4:
                return table.shape[2] - (bank.text_tokens if _all_tokens(site) else 0)
    family = FAMILIES.get(bank.architecture.split(":")[0], families.FLUX1)
    return image_count(bank.noise.shape, family.patch)


def load(path: str | os.PathLike) -> FeatureBank:
    """Read a Flux bank file, every field checked once (`bank_file.read`): a damaged or edited file
    is refused before it can sample a wrong or black image."""
    tensors, metadata = bank_file.read(path, FORMAT, layout, check_small)
    layers = flux_layers.parse_custom(metadata["layers"])
    return FeatureBank(
        sigmas=tensors["sigmas"], noise=tensors["noise"],
        tables={key: tensors[f"features.{key}"] for key in layers.keys()}, layers=layers,
        solver=metadata["solver"], steps_kept=int(metadata["steps_kept"]),
        text_tokens=int(metadata["text_tokens"]), architecture=metadata["architecture"],
        path=tensors.get("path"), mask=tensors.get("mask"),
        first_step=int(metadata.get("first_step", "0")), tokens=tensors.get("tokens"),
    )


def layout(header: Header) -> Layout:
    """What the metadata says each tensor is: the schedule's steps; the latent's rows, channels and
    size for the family; each table's slots (the solver's, for the kept steps), rows, tokens (the
    family's image tokens for the latent, plus the text for all-token sites; KV-Edit: the kept
    tokens) and hidden width (the architecture's)."""
    metadata = header.metadata
    family, double, single, hidden = read_architecture(metadata)
    layers = read_layers(metadata, double, single)
    solver = metadata.get("solver")
    if solver not in solvers.SOLVERS:
        raise Damaged("solver", f"it is {str(solver)[:40]!r}, not one of {list(solvers.SOLVERS)}")
    steps = steps_of(header)
    kept = number(metadata, "steps_kept", 0, steps)
    first = number(metadata, "first_step", 0, steps) if "first_step" in metadata else 0  # older files: 0
    text = number(metadata, "text_tokens", 0, MAX_TEXT_TOKENS)
    video = family is families.HUNYUAN_VIDEO
    latent = check_latent_shape("latent_shape", json_field(metadata, "latent_shape"), family.channels,
                                (5,) if video else (4,))
    image = image_count(latent, family.patch)
    out: Layout = {"sigmas": Expected((steps + 1,), "steps + 1"),
                   "noise": Expected(latent, "rows, channels, " + ("frames, " if video else "") + "height, width")}
    kv = "tokens" in header.tensors
    if kv:  # every table holds the kept tokens
        kept_tokens = _kv_layout(header, out, solver, first, kept, steps, latent, image)
    else:
        if first:
            raise Damaged("first_step", f"it is {first}, but only a KV-Edit bank keeps steps from a later one than 0")
        out.update(optional_layout(header, steps, latent))
        calls = _image_tokens(metadata, image)
    slots = slot_count(solver, steps, kept)
    for site in layers.sites:
        tokens = kept_tokens if kv else calls + (text if _all_tokens(site) else 0)
        for tensor in site.tensors:
            out[f"features.{site.key(tensor)}"] = Expected((slots, latent[0], tokens, hidden) if slots else (0,),
                                                           f"{slots} {solver} slots for {kept} kept steps, rows, "
                                                           f"tokens, hidden", table=True)
    return out


def _image_tokens(metadata, image: int) -> int:
    """The image tokens of the inversion's calls: the latent's `image`, plus reference latents' where the
    file records them (written with a checksum since); a file without a checksum predates both and holds
    no reference latents' tokens."""
    if "image_tokens" not in metadata:
        return image
    if CHECKSUM not in metadata:
        raise Damaged(CHECKSUM, "the field is missing, though the file records `image_tokens`, which is written with "
                                "a checksum only")
    return number(metadata, "image_tokens", image, image + MAX_CELLS ** 2)


def _kv_layout(header: Header, out: Layout, solver: str, first: int, kept: int, steps: int, latent, image: int) -> int:
    """KV-Edit's tensors: euler slots for every step from the first kept one (the skipped steps), the
    source's path, the mask's cells [1, 1, height, width] and the kept tokens' indices. Returns their count."""
    if solver != "euler":
        raise Damaged("solver", f"it is {solver!r}, but KV-Edit inverts with euler steps")
    if first + kept != steps:
        raise Damaged("first_step", f"it is {first} with {kept} kept steps, but KV-Edit keeps every step from the "
                                    f"first edited one to the schedule's end ({steps} steps)")
    if latent[-2] % 2 or latent[-1] % 2:
        raise Damaged("latent_shape", f"it is {list(latent)}, but KV-Edit's latents have even sides (whole tokens)")
    shape = header.shape("tokens")
    if len(shape) != 1 or shape[0] > image:
        raise Damaged("tokens", f"its shape is {list(shape)}, not the indices of at most the latent's {image} tokens")
    out["tokens"] = Expected(shape, "kept tokens", dtypes=("I64",))
    out["mask"] = Expected((1, 1, *latent[-2:]), "1, 1, height, width")
    out["path"] = Expected((steps + 1, *latent), "steps + 1, rows, channels, height, width", table=True)
    return shape[0]


def check_small(small: dict[str, torch.Tensor]) -> None:
    """The schedule falls from 1 to 0; a KV-Edit bank's mask holds only 0 and 1, and its kept tokens
    are exactly the background the mask gives (kv_edit.background)."""
    check_schedule(small["sigmas"], first=1.0)
    if "tokens" not in small:
        return
    cells, tokens = small["mask"], small["tokens"]
    if not bool(((cells == 0) | (cells == 1)).all()):
        raise Damaged("mask", "KV-Edit's mask holds values other than 0 and 1")
    if not bool(cells.any()):
        raise Damaged("mask", "KV-Edit's mask is black everywhere: it edits nothing")
    expected = background(cells)
    if not torch.equal(tokens, expected):
        raise Damaged("tokens", f"the kept tokens ({len(tokens)}) are not the background the mask gives "
                                f"({len(expected)} tokens)")


def read_architecture(metadata) -> tuple[families.Family, int, int, int]:
    """The family, double and single block counts and hidden width of `families.signature`."""
    text = metadata.get("architecture", "")
    found = re.fullmatch(r"(\w+):(\d{1,4})x(\d{1,4}):hidden(\d{1,6}):heads(\d{1,4})", text)
    family = FAMILIES.get(found.group(1)) if found else None
    if family is None or int(found.group(4)) % max(int(found.group(5)), 1) or not int(found.group(4)):
        raise Damaged("architecture", f"it is {text[:80]!r}, not a supported family's "
                                      f"'family:<double>x<single>:hidden<width>:heads<heads>'")
    return family, int(found.group(2)), int(found.group(3)), int(found.group(4))


def read_layers(metadata, double: int, single: int) -> flux_layers.FluxLayerSet:
    try:
        layers = flux_layers.parse_custom(metadata.get("layers", ""))
    except PnPError as e:
        raise Damaged("layers", str(e)) from None
    for site in layers.sites:
        if site.block >= (double if site.stream == "double" else single):
            raise Damaged("layers", f"it names {site.stream} block {site.block}, which the architecture "
                                    f"({double} double, {single} single blocks) does not have")
    return layers


def _all_tokens(site: flux_layers.Site) -> bool:
    return site.stream == "single" and site.tokens == "all"
