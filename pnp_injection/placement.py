"""Where feature banks live, how they are sized and written, and how each step's tensors reach the model.

A bank is kept on ComfyUI's intermediate device (system memory unless ComfyUI runs with
--gpu-only), page-locked where CUDA is present, so it holds no GPU memory between runs; ComfyUI
keeps node outputs in its cache, outside model management. Before any model work a wing
estimates its bank's bytes and `check_fits` refuses one that cannot fit. While recording,
`Tables` allocates each table once and fills it in place. While sampling, streaming.StepFeed
brings each step's slices to the model's device. `device="model"` at capture keeps a bank on
the GPU for users who want that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable

import comfy.model_management
import torch

from . import disk, recompute
from .errors import PnPError
from .tables import Recording


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


class Tables(Recording):
    """A bank's per-step tables in memory, each allocated once, when its first slot arrives, and filled in place:
    no per-slot tensors are kept and nothing is stacked afterwards, so the bank never exists twice."""

    def __init__(self, slots: Callable[[Hashable], int], device_for: Callable[[torch.Tensor], torch.device],
                 dtype: torch.dtype | None = None):
        super().__init__(slots, dtype)
        self.device_for = device_for
        self.queued = False  # copies from the GPU still in flight

    def new_table(self, shape, dtype, like) -> torch.Tensor:
        return allocate(shape, dtype, self.device_for(like))

    def write(self, table: torch.Tensor, slot: int, t: torch.Tensor) -> None:
        # From the GPU the copy is queued on the current stream (ordered before any reuse of
        # t's memory) and overlaps the model's next kernels; `complete` waits for it.
        table[slot].copy_(t.detach(), non_blocking=t.is_cuda)
        self.queued |= t.is_cuda

    def finish(self) -> None:
        if self.queued:
            torch.cuda.synchronize()
            self.queued = False

    def first(self, table: torch.Tensor, count: int) -> torch.Tensor:
        return table[:count]


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


# Where a bank's tables live (the `bank` input of the inversion and capture nodes).
MODES = {
    "auto": "memory when the bank takes at most half of the memory free, else disk when the disk has room, else "
            "recompute",
    "memory": "system memory (page-locked where CUDA is present): the fastest",
    "disk": "a file in ComfyUI's temp folder, read one step ahead while sampling; deleted with the bank",
    "recompute": "no tables: each kept tensor is computed again while sampling, one network call per kept step or "
                 "evaluation, from the source's path (a few MiB)",
}
MEMORY_SHARE = 0.5  # `auto` keeps a bank in memory up to this share of the memory free (room for the model's work)


@dataclass(frozen=True)
class Placement:
    """Where a bank's tables go, and why (for the log and the node's text)."""
    mode: str
    reason: str


def choose(requested: str, estimate: int, device: torch.device, disk_free: Callable[[], int],
           recompute_bytes: int = 0) -> Placement:
    """The placement of a bank of `estimate` bytes: `requested`, checked, or for `auto` the first of memory, disk
    and recompute that fits. A placement that cannot fit is refused before any model work, with the figures."""
    if requested not in MODES:
        raise PnPError(f"Unknown bank placement {requested!r}; choose one of {list(MODES)}.")
    free = available_bytes(device)
    figures = (f"the bank takes {estimate / 2**30:.2f} GiB; {free / 2**30:.2f} GiB of memory is free and "
               f"{disk_free() / 2**30:.2f} GiB on the temp folder's disk; `recompute` keeps "
               f"{recompute_bytes / 2**20:,.1f} MiB")
    if requested == "memory":
        if estimate > free:
            raise PnPError(f"The feature bank does not fit in memory ({figures}). Choose `bank` auto, disk or "
                           f"recompute, or {SHRINK[0].lower()}{SHRINK[1:]}")
        return Placement("memory", "asked for")
    if requested == "disk":
        if estimate > disk_free():
            raise PnPError(f"The feature bank does not fit on the temp folder's disk ({figures}). Choose `bank` auto "
                           f"or recompute, or free some disk space.")
        return Placement("disk", "asked for")
    if recompute_bytes > free and not (requested == "auto" and estimate <= disk_free()):
        raise PnPError(f"The feature bank fits in no placement ({figures}). Free some memory or disk space, or "
                       f"{SHRINK[0].lower()}{SHRINK[1:]}")
    if requested == "recompute":
        return Placement("recompute", "asked for")
    if estimate <= MEMORY_SHARE * free:
        return Placement("memory", f"auto: at most half of the {free / 2**30:.2f} GiB of memory free")
    if estimate <= disk_free():
        return Placement("disk", f"auto: more than half of the {free / 2**30:.2f} GiB of memory free; "
                                 f"{disk_free() / 2**30:.2f} GiB free on disk")
    return Placement("recompute", f"auto: more than half of the {free / 2**30:.2f} GiB of memory free and more than "
                                  f"the {disk_free() / 2**30:.2f} GiB free on disk")


def recording_tables(placement: Placement, slots: Callable[[Hashable], int], device_for, dtype=None):
    """The recording side of a bank's tables for `placement` (each with placement.Tables' `put` and `complete`)."""
    if placement.mode == "disk":
        return disk.DiskTables(slots, dtype)
    if placement.mode == "recompute":
        return recompute.RecordedTables(slots, dtype)
    return Tables(slots, device_for, dtype)


def report(what: str, placement: Placement, tables, seconds: float, kept: str, extra_bytes: int = 0) -> str:
    """The bank's line for the log and the node: size, where it lives and why, the kept steps, the time."""
    where = {"memory": "in memory", "disk": "on disk (ComfyUI's temp folder)",
             "recompute": f"recomputed while sampling ({size(extra_bytes)} of source calls kept)"}[placement.mode]
    logical = sum(t.numel() * t.element_size() for t in tables)
    return f"{what}: bank of {size(logical)} {where} ({placement.reason}); {kept}; made in {seconds:.1f} s"


def size(nbytes: int) -> str:
    """1.23 GiB, 45.6 MiB or 789 KiB."""
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:,.2f} GiB"
    return f"{nbytes / 2**20:,.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:,.0f} KiB"
