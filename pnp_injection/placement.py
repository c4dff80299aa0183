"""Where feature banks live, how they are sized and written, and how each step's tensors reach the model.

A bank is kept on ComfyUI's intermediate device (system memory unless ComfyUI runs with
--gpu-only), page-locked where CUDA is present, so it holds no GPU memory between runs; ComfyUI
keeps node outputs in its cache, outside model management. Before any model work a wing
estimates its bank's bytes and `check_fits` refuses one that cannot fit. While recording,
`Tables` allocates each table once and fills it in place. While sampling, a `StepFeed` moves
one step's slice to the model's device just before the call that needs it, starts the copy
of the next step's slice in the background, and drops a slice once sampling has moved past
its step. `device="model"` at capture keeps a bank on the GPU for users who want that.
"""
from __future__ import annotations

import math
from typing import Callable, Hashable, Mapping

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


def allocate(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised bank table, page-locked when it is in system memory and CUDA is
    present (so that copies to the GPU can overlap compute). Running out of memory here is
    a PnPError that gives the size, never a raw allocator error."""
    pinned = device.type == "cpu" and torch.cuda.is_available()
    try:
        if pinned:
            try:
                return torch.empty(shape, dtype=dtype, device=device, pin_memory=True)
            except RuntimeError:  # page-locked memory exhausted: pageable memory still works, copies just block
                pass
        return torch.empty(shape, dtype=dtype, device=device)
    except (RuntimeError, MemoryError) as e:
        size = math.prod(shape) * dtype.itemsize
        raise PnPError(f"Out of memory for a feature-bank table of {size / 2**20:,.0f} MiB on {device} ({e}). "
                       f"{SHRINK}") from None


class Tables:
    """A bank's per-step tables, each allocated once, when its first slot arrives, and filled
    in place: no per-slot tensors are kept and nothing is stacked afterwards, so the bank
    never exists twice. The first write to a slot is the one kept (an extra evaluation at the
    same sigma neither overwrites nor grows the bank)."""

    def __init__(self, slots: Callable[[Hashable], int], device_for: Callable[[torch.Tensor], torch.device],
                 dtype: torch.dtype | None = None):
        self.slots, self.device_for, self.dtype = slots, device_for, dtype  # slots(key): the table's length
        self.tables: dict[Hashable, torch.Tensor] = {}
        self.filled: dict[Hashable, set[int]] = {}
        self.queued = False  # copies from the GPU still in flight

    def put(self, key: Hashable, slot: int, t: torch.Tensor) -> None:
        if key not in self.tables:
            self.tables[key] = allocate((self.slots(key), *t.shape), self.dtype or t.dtype, self.device_for(t))
            self.filled[key] = set()
        if slot in self.filled[key]:
            return
        table = self.tables[key]
        if tuple(table.shape[1:]) != tuple(t.shape):
            raise PnPError(f"The source pass gave {key} the shape {tuple(t.shape)} at one step and "
                           f"{tuple(table.shape[1:])} at another: a patch on the model changes its inner shapes "
                           f"between steps; remove it from the model PnP inverts.")
        # From the GPU the copy is queued on the current stream (ordered before any reuse of
        # t's memory) and overlaps the model's next kernels; `complete` waits for it.
        table[slot].copy_(t.detach(), non_blocking=t.is_cuda)
        self.queued |= t.is_cuda
        self.filled[key].add(slot)

    def complete(self, key: Hashable, count: int, name: str) -> torch.Tensor:
        """The table of `key` for slots 0..count-1, all of them written, or a PnPError."""
        if self.queued:
            torch.cuda.synchronize()
            self.queued = False
        if count == 0:
            return torch.empty(0)
        missing = sorted(set(range(count)) - self.filled.get(key, set()))
        if missing:
            raise PnPError(f"The source pass did not reach layer {name} at steps {missing[:8]}: "
                           f"this model does not run that layer; choose other layers.")
        return self.tables[key][:count]


# What shrinks a bank, for the messages that refuse one.
SHRINK = ("Shrink the bank: inject fewer steps (the `*_steps` / `keep_steps` inputs), keep fewer layers, "
          "keep it at half precision, or use a smaller image.")


def available_bytes(device: torch.device) -> int:
    """Memory free for a bank on `device`: ComfyUI's reading, and for system memory also what
    a cgroup limit (containers, systemd) leaves."""
    free = int(comfy.model_management.get_free_memory(device))
    if device.type == "cpu":
        free = min(free, _cgroup_headroom())
    return free


def _cgroup_headroom() -> int:
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = open(limit_file).read().strip()
            usage = int(open(usage_file).read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return max(int(limit) - usage, 0)
    return 2**63


def check_fits(estimate: int, device: torch.device, what: str = "feature bank") -> None:
    """Refuse, before any model work, a bank that cannot fit where it would live."""
    free = available_bytes(device)
    if estimate > free:
        where = "system memory" if device.type == "cpu" else f"memory on {device}"
        raise PnPError(f"The {what} would take {estimate / 2**30:.2f} GiB but only {free / 2**30:.2f} GiB of "
                       f"{where} is free. {SHRINK}")


def summary(tables) -> str:
    """Size and place of a bank's tensors, for the log: "1,234.5 MiB on cpu (page-locked)"."""
    tables = [t for t in tables if t.numel()]
    devices = sorted({str(t.device) for t in tables}) or ["-"]
    pinned = torch.cuda.is_available() and any(t.is_pinned() for t in tables if t.device.type == "cpu")
    return f"{nbytes(tables) / 2**20:,.1f} MiB on {', '.join(devices)}{' (page-locked)' if pinned else ''}"


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def compute_dtype(model_patcher) -> torch.dtype:
    """The dtype a model computes in, which a bank keeps its features in by default."""
    model = model_patcher.model
    return model_patcher.model_options.get("dtype") or getattr(model, "manual_cast_dtype", None) or model.get_dtype()


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
