"""What every placement's tables share (placement.MODES): the recording side's bookkeeping, and the shape of a
table that is not a tensor.

While the source is recorded, each kept tensor goes to `put(key, slot, t)`: a table is made when its first slot
arrives, the first write to a slot is the one kept (an extra evaluation at the same sigma neither overwrites nor
grows the bank), and `complete(key, count, name)` gives the table once every slot was written. Where the slots go
is the placement's: a tensor in memory (placement.Tables), a region of a file (disk.DiskTables), or nowhere
(recompute.RecordedTables).
"""
from __future__ import annotations

from typing import Callable, Hashable

import torch

from .errors import PnPError


class Recording:
    """The recording side of a bank's tables; a placement says how a table is made, written and cut."""

    def __init__(self, slots: Callable[[Hashable], int], dtype: torch.dtype | None = None):
        self.slots, self.dtype = slots, dtype  # slots(key): the table's length
        self.tables: dict[Hashable, object] = {}
        self.filled: dict[Hashable, set[int]] = {}

    def put(self, key: Hashable, slot: int, t: torch.Tensor) -> None:
        if key not in self.tables:
            self.tables[key] = self.new_table((self.slots(key), *t.shape), self.dtype or t.dtype, t)
            self.filled[key] = set()
        if slot in self.filled[key]:
            return
        table = self.tables[key]
        if tuple(table.shape[1:]) != tuple(t.shape):
            raise PnPError(f"The source pass gave {key} the shape {tuple(t.shape)} at one step and "
                           f"{tuple(table.shape[1:])} at another: a patch on the model changes its inner shapes "
                           f"between steps; remove it from the model PnP inverts.")
        self.write(table, slot, t)
        self.filled[key].add(slot)

    def complete(self, key: Hashable, count: int, name: str):
        """The table of `key` for slots 0..count-1, all of them written, or a PnPError."""
        self.finish()
        if count == 0:
            return torch.empty(0)
        missing = sorted(set(range(count)) - self.filled.get(key, set()))
        if missing:
            raise PnPError(f"The source pass did not reach layer {name} at steps {missing[:8]}: "
                           f"this model does not run that layer; choose other layers.")
        return self.first(self.tables[key], count)

    def new_table(self, shape: tuple[int, ...], dtype: torch.dtype, like: torch.Tensor):
        raise NotImplementedError

    def write(self, table, slot: int, t: torch.Tensor) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Wait for writes still in flight."""

    def first(self, table, count: int):
        """The table's first `count` slots."""
        return table.prefix(count)


class TableShape:
    """A table that is not a tensor (on disk, or recomputed): its shape and dtype answer as a tensor's do."""

    def __init__(self, shape, dtype: torch.dtype):
        self.shape, self.dtype = torch.Size(shape), dtype

    def numel(self) -> int:
        return self.shape.numel()

    def element_size(self) -> int:
        return self.dtype.itemsize

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel() * self.element_size()

    def __len__(self) -> int:
        return self.shape[0]
