"""Bank files on disk, for every wing: safetensors with versioned metadata, written atomically
and read without pickle. Each wing defines its own format (name, version, suffix) on top."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import PnPError


def write(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str | os.PathLike) -> Path:
    """Write a safetensors file atomically (a partial file never carries the final name)."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(partial), metadata=metadata)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


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
