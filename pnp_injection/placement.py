"""Where feature banks live, and how each step's tensors reach the model.

A bank is kept on ComfyUI's intermediate device (system memory unless ComfyUI runs with
--gpu-only), pinned where CUDA is present, so it holds no GPU memory between runs; ComfyUI
keeps node outputs in its cache, outside model management. While sampling, a `StepFeed`
moves one step's slice to the model's device just before the call that needs it, starts the
copy of the next step's slice in the background, and drops a slice once sampling has moved
past its step. `device="model"` at capture keeps a bank on the GPU for users who want that.
"""
from __future__ import annotations

from typing import Hashable, Mapping

import comfy.model_management
import torch

from .errors import PnPError


def storage_device() -> torch.device:
    """Where banks live by default: ComfyUI's intermediate device (where core samplers put latents)."""
    return comfy.model_management.intermediate_device()


# Where a bank can live (PnP Capture Features' `bank_device`).
DEVICES = {
    "offload": "ComfyUI's intermediate device (system memory unless --gpu-only); streamed to the U-Net step by step",
    "model": "where the U-Net computes (the GPU): no transfers, but it holds GPU memory between runs",
    "cpu": "system memory, always",
}


def check_device(choice: str) -> None:
    if choice not in DEVICES:
        raise PnPError(f"Unknown bank device {choice!r}; choose one of {list(DEVICES)}.")


def bank_device(choice: str, t: torch.Tensor) -> torch.device:
    check_device(choice)
    if choice == "offload":
        return storage_device()
    if choice == "model":
        return t.device
    return torch.device("cpu")


def keep(t: torch.Tensor, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """A private copy of `t` for a bank, as `dtype` (default: its own) on `device` (default:
    the storage device)."""
    device = torch.device(device) if device is not None else storage_device()
    return t.detach().to(device=device, dtype=dtype or t.dtype, copy=True)


def stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A bank table from per-step tensors, page-locked when it is in system memory and CUDA is
    present, so that copies to the GPU can overlap compute."""
    out = torch.stack(tensors)
    if out.device.type == "cpu" and torch.cuda.is_available():
        try:
            out = out.pin_memory()
        except RuntimeError:  # page-locked memory exhausted: pageable memory still works, copies just block
            pass
    return out


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class StepFeed:
    """Streams per-step slices of a bank's tables to the model's device.

    `tables` maps a key to a tensor [steps, ...]. `get(step, key, like)` returns that step's
    slice on `like`'s device and dtype. Slices of the current step are cached for every
    U-Net call at that step (cond/uncond splits, PAG/SAG passes) and the next step's are
    copied ahead, non-blocking, on a side stream; a slice is dropped when the step moves on
    and everything is dropped by `release()` (called when sampling ends).
    """

    def __init__(self, tables: Mapping[Hashable, torch.Tensor]):
        self.tables = tables
        self._ready: dict[tuple[int, Hashable], torch.Tensor] = {}
        self._step: int | None = None
        self.bytes_moved = 0

    def get(self, step: int, key: Hashable, like: torch.Tensor) -> torch.Tensor:
        if step != self._step:
            self._advance(step)
        slot = (step, key)
        out = self._ready.get(slot)
        if out is None or out.device != like.device or out.dtype != like.dtype:
            out = self._copy(self.tables[key][step], like)
            self._ready[slot] = out
            self._prefetch(step + 1, like)
        if out.device.type == "cuda":  # the copy ran on the side stream: order it before use
            current = torch.cuda.current_stream(out.device)
            current.wait_stream(self._stream(out.device))
            out.record_stream(current)
        return out

    def release(self) -> None:
        self._ready.clear()
        self._step = None

    def _advance(self, step: int) -> None:
        self._ready = {slot: t for slot, t in self._ready.items() if slot[0] >= step}
        self._step = step

    def _prefetch(self, step: int, like: torch.Tensor) -> None:
        if like.device.type != "cuda":
            return  # nothing to overlap on the CPU
        for key, table in self.tables.items():
            if step < table.shape[0] and (step, key) not in self._ready:
                self._ready[(step, key)] = self._copy(table[step], like)

    def _copy(self, source: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if source.device == like.device:
            return source.to(dtype=like.dtype)
        self.bytes_moved += nbytes([source])
        if like.device.type == "cuda":
            with torch.cuda.stream(self._stream(like.device)):
                return source.to(device=like.device, dtype=like.dtype, non_blocking=True)
        return source.to(device=like.device, dtype=like.dtype)

    _streams: dict[torch.device, object] = {}

    @classmethod
    def _stream(cls, device: torch.device):
        if device not in cls._streams:
            cls._streams[device] = torch.cuda.Stream(device)
        return cls._streams[device]
