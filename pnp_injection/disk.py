"""A bank's tables in a file (the `disk` placement): written while the source is recorded, read one slice at a time
while sampling, deleted when the bank is freed or the process exits.

`DiskTables` has the recording interface of every placement (tables.Recording: `put`, `complete`); each table is
a region of one file in ComfyUI's temp folder, a slice after the other (`DiskTable`: a table's shape and dtype, and
`table[slot]` reads one slice from the file). While sampling, only the slice in use and the feed's read-ahead
window (streaming.StepFeed) are in memory: resident memory does not grow with the bank.
"""
from __future__ import annotations

import os
import secrets
import weakref
from pathlib import Path
from typing import Callable, Hashable, Iterator

import folder_paths
import torch

from .errors import PnPError
from .tables import Recording, TableShape

CHUNK = 2**24  # bytes read or written at a time when a table is copied whole (a saved bank)


def temp_folder() -> Path:
    """ComfyUI's temp folder (emptied by ComfyUI when it starts and exits)."""
    folder = Path(folder_paths.get_temp_directory())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def free_bytes(folder: Path | None = None) -> int:
    stat = os.statvfs(folder or temp_folder())
    return stat.f_bavail * stat.f_frsize


class BankFile:
    """The file of one bank's tables; closed and deleted when the last table using it is freed, or at exit."""

    def __init__(self):
        self.path = temp_folder() / f"pnp-bank-{secrets.token_hex(6)}.bin"
        try:
            self.fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError as e:
            raise PnPError(f"Cannot create the bank's file in {self.path.parent} ({e.strerror or e}): free some disk "
                           f"space or choose `bank` memory or recompute.") from None
        self.size = 0
        self._finalizer = weakref.finalize(self, _remove, self.fd, str(self.path))

    def reserve(self, nbytes: int) -> int:
        """The offset of a new region of `nbytes` at the file's end."""
        offset, self.size = self.size, self.size + nbytes
        os.ftruncate(self.fd, self.size)
        return offset

    def write(self, offset: int, t: torch.Tensor) -> None:
        raw = memoryview(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
        done = 0
        while done < len(raw):
            try:
                done += os.pwrite(self.fd, raw[done:], offset + done)
            except OSError as e:
                raise PnPError(f"Cannot write the bank's file {self.path} ({e.strerror or e}): free some disk space, "
                               f"or choose `bank` memory or recompute.") from None

    def read_into(self, offset: int, out: torch.Tensor) -> torch.Tensor:
        raw = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        done = 0
        while done < len(raw):
            got = os.preadv(self.fd, [raw[done:]], offset + done)
            if got <= 0:
                raise PnPError(f"The bank's file {self.path} was cut short while sampling (another program removed or "
                               f"truncated it): invert or capture the source again.")
            done += got
        return out


def _remove(fd: int, path: str) -> None:
    try:
        os.close(fd)
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class DiskTable(TableShape):
    """One table of a bank file: [slots, *slice_shape] of `dtype`; `table[slot]` reads that slice (page-locked
    where CUDA is present, so that its copy to the GPU can overlap compute)."""

    def __init__(self, file: BankFile, offset: int, shape: tuple[int, ...], dtype: torch.dtype):
        super().__init__(shape, dtype)
        self.file, self.offset, self.device = file, offset, torch.device("cpu")
        self.slice_bytes = int(torch.Size(shape[1:]).numel()) * dtype.itemsize

    def __getitem__(self, slot: int) -> torch.Tensor:
        if not 0 <= slot < self.shape[0]:
            raise IndexError(slot)
        out = torch.empty(self.shape[1:], dtype=self.dtype, pin_memory=torch.cuda.is_available())
        return self.file.read_into(self.offset + slot * self.slice_bytes, out)

    def prefix(self, count: int) -> DiskTable:
        """The first `count` slots (a table kept for fewer steps than it was made for)."""
        return DiskTable(self.file, self.offset, (count, *self.shape[1:]), self.dtype)

    def chunks(self) -> Iterator[memoryview]:
        """The table's bytes in order, CHUNK at a time (a saved bank streams them to its file)."""
        done, total = 0, self.nbytes
        while done < total:
            size = min(CHUNK, total - done)
            buffer = torch.empty(size, dtype=torch.uint8)
            self.file.read_into(self.offset + done, buffer)
            yield memoryview(buffer.numpy())
            done += size


class DiskTables(Recording):
    """The recording side of a bank on disk: each table is reserved in the bank's file when its first slot arrives
    and written slot by slot."""

    def __init__(self, slots: Callable[[Hashable], int], dtype: torch.dtype | None = None):
        super().__init__(slots, dtype)
        self.file = BankFile()

    def new_table(self, shape, dtype, like) -> DiskTable:
        return DiskTable(self.file, self.file.reserve(torch.Size(shape).numel() * dtype.itemsize), shape, dtype)

    def write(self, table: DiskTable, slot: int, t: torch.Tensor) -> None:
        self.file.write(table.offset + slot * table.slice_bytes, t.to(table.dtype))
