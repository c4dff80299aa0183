"""Bank files on disk, for every wing: safetensors with versioned metadata and a checksum, written
atomically and read without pickle, each field checked once at load (`bank_integrity`). Each wing
registers its format (`Format`: name, version, suffix, its nodes) and says what its metadata
implies for every tensor (its layout)."""
from __future__ import annotations

import errno
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from . import placement
from .bank_integrity import (CHECKSUM, CODES, Checksum, Header, Layout, Unreadable, check_layout, check_values, checked,
                             damaged, read_header, tensor_chunks, verify_checksum)
from .errors import PnPError


def write(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | os.PathLike) -> Path:
    """Write a safetensors file atomically and exclusively: the data go to a temporary file of a
    unique short name in the same folder (`.pnp-<8 hex>.tmp`: it fits wherever `path`'s name
    fits, and two writers never share it), which then takes `path`'s name only if no file has
    it. A partial file never carries the final name and no file is ever replaced: when `path`
    exists (another save took it first) this raises FileExistsError and the caller picks the
    next name. Other failures of the file system are PnPErrors naming the fix."""
    path = Path(path)
    if "\0" in str(path):
        raise PnPError(f"The bank file name {str(path)!r} contains a NUL character, which no file name may "
                       f"hold: remove it.")
    temp = None
    try:
        temp = _temporary(path.parent)
        tensors = {k: v if hasattr(v, "chunks") else v.detach().contiguous().cpu() for k, v in tensors.items()}
        _save(tensors, metadata, temp)
        _publish(temp, path)
    except FileExistsError:
        raise
    except OSError as e:
        raise PnPError(f"Cannot write the bank file {path.name!r} in {str(path.parent)!r}: {e.strerror or e}. "
                       f"{_FIXES.get(e.errno, 'Check that the folder exists and is writable.')}") from None
    finally:
        if temp is not None:
            temp.unlink(missing_ok=True)
    return path


def _save(tensors: dict, metadata: dict[str, str], path: Path) -> None:
    """A safetensors file of `tensors` (in memory, or tables of a bank on disk) and `metadata` with its checksum,
    streamed: each tensor's bytes are written (and hashed) a chunk at a time, so a bank on disk is never read
    into memory. The checksum's place is held in the header and filled in when the data are written."""
    keys = sorted(tensors)
    placeholder = f"sha256:{'0' * 64}"
    entries, offset = {}, 0
    for key in keys:
        t = tensors[key]
        size = t.numel() * t.element_size()
        entries[key] = {"dtype": CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size

    def header(value: str) -> bytes:
        text = json.dumps({"__metadata__": {**metadata, CHECKSUM: value}, **entries}, separators=(",", ":")).encode()
        return text + b" " * (-len(text) % 8)  # the data start 8-byte aligned, as safetensors writes them
    digest = Checksum(metadata)
    with open(path, "r+b") as f:
        first = header(placeholder)
        f.write(len(first).to_bytes(8, "little") + first)
        for key in keys:
            digest.tensor(key, tensors[key])
            for chunk in tensor_chunks(tensors[key]):
                digest.update(chunk)
                f.write(chunk)
        final = header(digest.value())
        f.seek(8)
        f.write(final)  # the same length: the checksum's text has a fixed size


_FIXES = {
    errno.ENAMETOOLONG: "Choose a shorter file name prefix.",
    errno.ENOSPC: "Free some disk space, or save to another disk.",
    errno.EACCES: "Make the folder writable, or save to another folder.",
    errno.EROFS: "The disk is read-only: save to another disk.",
}


def _temporary(folder: Path) -> Path:
    """A new empty file of a unique short name in `folder`, created exclusively."""
    while True:
        temp = folder / f".pnp-{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return temp
        except FileExistsError:  # one chance in four billion: draw again
            continue


def _publish(temp: Path, path: Path) -> None:
    """Give the complete file `temp` the name `path`, only if no file has that name."""
    try:
        os.link(temp, path)  # fails with FileExistsError when the name is taken
        return
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno in (errno.ENAMETOOLONG, errno.ENOSPC, errno.EROFS):
            raise
    # No hard links on this file system (FAT, some network shares): reserve the name, then move.
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        os.replace(temp, path)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Format:
    """A wing's bank-file format, registered here so that each loader names the other's file
    (and the nodes that read it) without a wing naming another."""

    name: str       # the header's "format"
    version: int
    suffix: str     # files are listed by it
    what: str       # "feature bank", as the messages call it
    saver: str      # the nodes that write and read it
    loader: str
    fix: str        # what to do with a damaged file, e.g. "invert the source again and save ..."


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def check_header(name: str, metadata: dict, fmt: Format) -> None:
    """The file is of `fmt` and its version; another registered format names its loader."""
    found = metadata.get("format")
    other = FORMATS.get(found)
    if other is not None and other is not fmt:
        raise PnPError(f"{name} is a {other.what}: load it with {other.loader}, or choose a file written by "
                       f"{fmt.saver}.")
    if found != fmt.name:
        shown = f"its format is {found!r}" if found else f"no '{fmt.name}' metadata"
        raise PnPError(f"{name} is not a PnP {fmt.what} file ({shown}): choose a file written by {fmt.saver}.")
    if metadata.get("version") != str(fmt.version):
        raise PnPError(f"{name} is a {fmt.what} of version {metadata.get('version')!r}; this pack reads version "
                       f"{fmt.version}: {fmt.fix}")


def read(path: str | os.PathLike, fmt: Format, layout: Callable[[Header], Layout],
         check_small: Callable[[dict[str, torch.Tensor]], None] = lambda small: None,
         ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a bank file of `fmt`, each check once, before what it guards:

    1. the header alone: format and version, then every tensor's shape and dtype against what
       the metadata implies (`layout`, the wing's), and the declared size against free memory;
    2. the checksum, streamed from the file;
    3. the small tensors (schedule, latent, mask, kept tokens), then the wing's `check_small`;
    4. the tables; every value finite and within bounds (`bank_integrity.check_values`).
    Nothing is unpickled. Any failure is a PnPError naming the file, the field and `fmt.fix`."""
    name = Path(path).name
    try:
        header = read_header(path)
    except (Unreadable, OSError) as e:
        raise PnPError(f"{name} is not a readable {fmt.what} ({e}): it may be truncated or not a PnP bank file. "
                       f"Choose a file written by {fmt.saver}.") from None
    check_header(name, header.metadata, fmt)
    expected = checked(name, fmt.fix, layout, header)
    checked(name, fmt.fix, check_layout, header, expected)
    placement.check_fits(header.nbytes(), placement.storage_device(), f"bank file {name}")
    if verify_checksum(path, header) is False:
        raise damaged(name, CHECKSUM, "its tables or metadata are not what was saved: the file changed on disk or in "
                                      "transfer, or was edited", fmt.fix)
    small = [key for key, e in expected.items() if not e.table]
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors.update((key, f.get_tensor(key)) for key in small)
            checked(name, fmt.fix, check_values, tensors)
            checked(name, fmt.fix, check_small, dict(tensors))
            tables = {key: f.get_tensor(key) for key in expected if key not in tensors}
    except PnPError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors reports a file changed under it in many ways
        raise PnPError(f"{name} could not be read ({e}): it may have changed while it was read. Load it again, or "
                       f"choose a file written by {fmt.saver}.") from None
    checked(name, fmt.fix, check_values, tables)
    tensors.update(tables)
    return tensors, header.metadata


def check_savable(bank, fmt: Format) -> None:
    """A bank that keeps no tables (bank `recompute`) has nothing to save: say how to get one that does."""
    if getattr(bank, "calls", None) is not None:
        raise PnPError(f"This feature bank keeps no tables (bank `recompute`: its features are computed again while "
                       f"sampling), so {fmt.saver} has nothing to write: make the bank with `bank` memory or disk to "
                       f"save it.")


def optional_tensors(bank) -> dict[str, torch.Tensor]:
    """The tensors of masked edits a bank may hold (its source's path, its source's noise_mask);
    files written before masks lack them, and such a bank refuses a mask with a clear error."""
    return {name: t for name, t in (("path", bank.path), ("mask", bank.mask)) if t is not None}

