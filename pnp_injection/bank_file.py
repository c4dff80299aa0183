"""Bank files on disk, for every wing: safetensors with versioned metadata, written atomically
and read without pickle. Each wing defines its own format (name, version, suffix) on top."""
from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

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
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(temp), metadata=metadata)
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


def read(path: str | os.PathLike, check: Callable[[str, dict], None], what: str,
         saver: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a bank file, its header passed through `check` first; a file
    safetensors cannot read is a PnPError naming `saver`."""
    name = Path(path).name
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            check(name, metadata)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except PnPError:
        raise
    except Exception as e:  # safetensors reports truncation and bad headers in many ways
        raise PnPError(f"{name} is not a readable {what} ({e}): it may be truncated or not a "
                       f"PnP bank file. Save the bank again with {saver}.") from None
    return tensors, metadata


def optional_tensors(bank) -> dict[str, torch.Tensor]:
    """The tensors of masked edits a bank may hold (its source's path, its source's noise_mask);
    files written before masks lack them, and such a bank refuses a mask with a clear error."""
    return {name: t for name, t in (("path", bank.path), ("mask", bank.mask)) if t is not None}


def consistent_path(path: torch.Tensor | None, steps: int, latent_shape) -> bool:
    return path is None or tuple(path.shape) == (steps + 1, *latent_shape)
