"""How a bank's slices reach the model: read ahead through a window that runs across steps, waited for one slice
at a time.

A bank's tables hold one slice per step (or per solver slot) for each layer: a tensor [steps, ...] in memory, or a
disk.DiskTable. While sampling, `StepFeed.get(step, key, like)` gives a slice on the model's device. The slices
form one sequence, step by step and within a step in the order the model asks for them:

- Each `get` fetches its slice if it is not already on the way (a miss), and then, hit or miss, queues the slices
  that follow it until `ahead_bytes` are on the way: the rest of this step and the next step's first slices are
  copied while this step's layers run. A small bank's next step is queued whole at its first slice.
- On CUDA each slice is copied on a side stream and records an event; a call waits on the event of the slice it
  uses, never on the others', nor on the read-ahead queued after it.
- A disk table's slices are read on a background thread (into page-locked memory where CUDA is present), then
  copied as above; `get` waits for the read of its own slice only.
- Slices this step already gave, and earlier steps', are dropped: the feed holds the slice in use and the window
  ahead of it, however large the bank. A slice asked for again (a second model call in a step) is fetched again.
  `release()` (when sampling ends) drops everything.

Nothing here reads a device tensor on the host: the feed never waits for the device to finish its work.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Hashable, Mapping

import torch

AHEAD_BYTES = 2**29  # 512 MiB in flight ahead of the slice in use: a whole step of most banks


class Transfers:
    """The device side of a copy: on CUDA a side stream per device and an event per copy; elsewhere plain copies.
    Tests give a recorder in its place."""

    _streams: dict[torch.device, object] = {}

    def copy(self, source: torch.Tensor, like: torch.Tensor, tag) -> tuple[torch.Tensor, object]:
        """`source` on `like`'s device and dtype, and what a user of it must wait for (None: nothing)."""
        if like.device.type != "cuda" or source.device == like.device:
            return source.to(device=like.device, dtype=like.dtype), None
        stream = self._stream(like.device)
        with torch.cuda.stream(stream):
            out = source.to(device=like.device, dtype=like.dtype, non_blocking=True)
            event = torch.cuda.Event()
            event.record(stream)
        return out, event

    def wait(self, tensor: torch.Tensor, event, tag) -> None:
        """The current stream waits for `event` (this slice's copy) before it uses `tensor`."""
        if event is None:
            return
        current = torch.cuda.current_stream(tensor.device)
        current.wait_event(event)
        tensor.record_stream(current)  # its memory is not reused before the current stream is done with it

    @classmethod
    def _stream(cls, device: torch.device):
        if device not in cls._streams:
            cls._streams[device] = torch.cuda.Stream(device)
        return cls._streams[device]


class StepFeed:
    """Streams the slices of a bank's `tables` (key -> [steps, ...]) to the model's device."""

    def __init__(self, tables: Mapping[Hashable, object], transfers: Transfers | None = None,
                 ahead_bytes: int = AHEAD_BYTES):
        self.tables, self.ahead_bytes = tables, ahead_bytes
        self.transfers = transfers or Transfers()
        self.steps = max((table.shape[0] for table in tables.values()), default=0)
        self._order: dict[Hashable, None] = {}  # keys in the order the model first asked for them
        self._slices: dict[tuple[int, Hashable], Future] = {}  # fetched or on the way: (tensor, event)
        self._step: int | None = None
        self._used: set[Hashable] = set()  # keys of the current step already given
        self._reader: ThreadPoolExecutor | None = None
        self.bytes_moved = 0

    def get(self, step: int, key: Hashable, like: torch.Tensor) -> torch.Tensor:
        if step != self._step:
            self._step, self._used = step, set()
        self._order.setdefault(key, None)
        # the slices this step already gave are done with, and so are earlier steps'
        self._slices = {(s, k): f for (s, k), f in self._slices.items()
                        if s > step or (s == step and (k == key or k not in self._used))}
        self._used.add(key)
        if (step, key) not in self._slices:
            self._fetch(step, key, like)
        self._read_ahead(step, like)
        tensor, event = self._slices[step, key].result()
        if tensor.device != like.device or tensor.dtype != like.dtype:  # another call's device or dtype
            tensor, event = self.transfers.copy(tensor, like, (step, key))
        self.transfers.wait(tensor, event, (step, key))
        return tensor

    def release(self) -> None:
        self._slices.clear()
        self._step, self._used = None, set()
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None

    def _upcoming(self, step: int):
        """The slices after the one in use: this step's not yet given, then the next step's, in the order the model
        asks for them (learned at the first step; table order before that)."""
        order = [*self._order, *(key for key in self.tables if key not in self._order)]
        for s in range(step, min(step + 2, self.steps)):
            for key in order:
                if s < self.tables[key].shape[0] and not (s == step and key in self._used):
                    yield s, key

    def _read_ahead(self, step: int, like: torch.Tensor) -> None:
        ahead = 0
        for s, key in self._upcoming(step):
            if ahead >= self.ahead_bytes:
                return
            if (s, key) not in self._slices:
                self._fetch(s, key, like)
            table = self.tables[key]
            ahead += table.numel() // table.shape[0] * table.element_size()

    def _fetch(self, step: int, key: Hashable, like: torch.Tensor) -> None:
        if isinstance(self.tables[key], torch.Tensor):
            self._slices[step, key] = done = Future()
            done.set_result(self._slice(step, key, like))
            return
        if self._reader is None:  # on disk: read on the side
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pnp-bank-read")
        self._slices[step, key] = self._reader.submit(self._slice, step, key, like)

    def _slice(self, step: int, key: Hashable, like: torch.Tensor):
        source = self.tables[key][step]
        if source.device != like.device:
            self.bytes_moved += source.numel() * source.element_size()
        return self.transfers.copy(source, like, (step, key))
