"""A bank that keeps no tables (the `recompute` placement): the source's network calls are kept instead, and
each kept tensor is computed again, when sampling needs it, by calling the network on the same inputs.

Every tensor a bank keeps is a function of the source's path: the network's output at one latent, timestep and
prompt. `SourceCalls` keeps, per slot, the latent and timestep the network was given, and once the call's other
inputs (the source prompt's context, pooled vector, guidance, ...): a few latents where the tables take GiBs.
`run` calls the network again on them, with the recording hooks of the wing, inside the sampling call that
needs the slot (the same model, its patches, LoRA and wrappers), exactly as the recording did; the slot's
tensors are kept for the run's other calls at that slot (cond and uncond chunks, second evaluations), and the
previous slot's are dropped. The recording side (`RecordedTables`) has the recording interface of every placement (tables.Recording) and keeps
each table's shape and dtype only (`VirtualTable`), so a bank's counts, sizes and checks read as for the
other placements.
"""
from __future__ import annotations

from typing import Callable

import torch

from .errors import PnPError
from .model_calls import HOST_SIGMA, outside_compiler
from .tables import Recording, TableShape

_OPTIONS = object()  # where the call's transformer_options went: the sampling call's own are given there


class VirtualTable(TableShape):
    """A table's shape and dtype, with no data: its slices are computed again when sampling needs them."""

    def __init__(self, shape, dtype: torch.dtype):
        super().__init__(shape, dtype)
        self.device = torch.device("meta")

    def prefix(self, count: int) -> VirtualTable:
        return VirtualTable((count, *self.shape[1:]), self.dtype)

    def __getitem__(self, slot):
        raise PnPError("This bank keeps no tables (bank `recompute`): its features are computed again while sampling "
                       "with the pack's samplers. To save or preview it, invert or capture with `bank` memory or disk.")


class RecordedTables(Recording):
    """The recording side of a recomputed bank: shapes and dtypes only."""

    def new_table(self, shape, dtype, like) -> VirtualTable:
        return VirtualTable(shape, dtype)

    def write(self, table, slot: int, t: torch.Tensor) -> None:
        pass  # computed again while sampling


def _kept(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.detach().to(device, copy=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_kept(v, device) for v in value)
    return value


def _moved(value, device: torch.device):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, device) for v in value)
    return value


class SourceCalls:
    """The source's network calls a recomputed bank's tables come from, one per slot (see the module's docstring).
    Immutable once recorded: clones of a patched model share it."""

    def __init__(self, device: torch.device):
        self.device = device                  # where the kept inputs live (the bank's storage device)
        self.inputs: dict[int, tuple] = {}    # slot -> (latent, timestep, sigma)
        self.rest: tuple | None = None        # the call's other arguments, once
        self.has_control = False

    def __deepcopy__(self, memo):
        return self

    def keep(self, slot: int, sigma: float, args: tuple, kwargs: dict, options, control=None) -> None:
        """Record the network call of `slot` (its first one: an extra evaluation at the same sigma changes nothing)."""
        if slot in self.inputs:
            return
        if len(args) < 2:
            raise PnPError("This host calls the network with its latent by name, which the `recompute` bank does not "
                           "follow: invert or capture with `bank` memory or disk.")
        self.has_control |= control is not None
        if self.rest is None:
            def strip(value):
                if value is options:
                    return _OPTIONS
                return None if control is not None and value is control else _kept(value, self.device)
            self.rest = (tuple(strip(a) for a in args[2:]), {k: strip(v) for k, v in kwargs.items()})
        self.inputs[slot] = (_kept(args[0], self.device), _kept(args[1], self.device), sigma)

    def nbytes(self) -> int:
        tensors = [t for x, timestep, _ in self.inputs.values() for t in (x, timestep)]
        return sum(t.numel() * t.element_size() for t in tensors)

    def run(self, slot: int, executor, options: dict, device: torch.device,
            call: Callable | None = None, hooks: dict | None = None):
        """Call the network again on `slot`'s inputs, with `options` (the sampling call's transformer_options, its
        sigma and chunks made the slot's) and the wing's recording `hooks` (or its own `call(executor, *args,
        **kwargs)`, for wings that record through transformer_options)."""
        if self.has_control:
            raise PnPError("The source pass ran with a ControlNet, which the `recompute` bank does not keep: invert or "
                           "capture with `bank` memory or disk.")
        x, timestep, sigma = self.inputs[slot]
        source_options = {**options, HOST_SIGMA: sigma, "cond_or_uncond": [0],
                          "sigmas": torch.full((x.shape[0],), sigma, device=device)}
        args = (x.to(device, non_blocking=True), timestep.to(device, non_blocking=True),
                *[source_options if a is _OPTIONS else _moved(a, device) for a in self.rest[0]])
        kwargs = {k: source_options if v is _OPTIONS else _moved(v, device) for k, v in self.rest[1].items()}
        if call is not None:
            return call(executor, *args, **kwargs)
        return outside_compiler(hooks or {}, executor, *args, **kwargs)


class Recomputed:
    """One sampling run's recomputed slots: a slot's tensors are computed on its first call and kept for the calls
    after it at that slot; older slots are dropped (one slot's tensors in memory, or two for a solver that
    alternates between a step's evaluations)."""

    def __init__(self, keep_slots: int = 2):
        self.slots: dict[int, dict] = {}
        self.keep_slots = keep_slots
        self.evaluations = 0  # the network calls recomputing cost, for the logs and the benches

    def get(self, slot: int, compute: Callable[[], dict]) -> dict:
        if slot not in self.slots:
            while len(self.slots) >= self.keep_slots:  # before computing: the old and the new never coexist
                self.slots.pop(next(iter(self.slots)))
            self.slots[slot] = compute()
            self.evaluations += 1
        return self.slots[slot]
