"""Plumbing shared by the wings for the model calls PnP works inside: wrapper removal, forward
hooks scoped to one call and kept out of torch.compile, the call's sigma, and the mapping of
source rows onto the rows of a batched call."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import comfy.model_patcher
import comfy.patcher_extension as ext
import torch

from .errors import PnPError
from .placement import StepFeed


def without_wrappers(model_patcher, key: str):
    """A clone without the OUTER_SAMPLE, PREDICT_NOISE and DIFFUSION_MODEL wrappers registered under `key`."""
    clean = model_patcher.clone()
    for kind in (ext.WrappersMP.OUTER_SAMPLE, ext.WrappersMP.PREDICT_NOISE, ext.WrappersMP.DIFFUSION_MODEL):
        clean.remove_wrappers_with_key(kind, key)
    return clean


@contextmanager
def forward_hooks(hooks: dict[torch.nn.Module, Callable]):
    handles = [module.register_forward_hook(fn) for module, fn in hooks.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.compiler.disable
def outside_compiler(hooks: dict[torch.nn.Module, Callable], executor, *args, **kwargs):
    """One model call with PnP's forward hooks, run eagerly. torch.compile (TorchCompileModel)
    does not guard on module hooks: a model compiled without them would run its graphs without
    them, and injection or capture would be lost silently. Calls without PnP's work stay compiled."""
    with forward_hooks(hooks):
        return executor(*args, **kwargs)


def call_sigma(transformer_options) -> float:
    sigmas = transformer_options.get("sigmas")
    if sigmas is None:
        raise PnPError("PnP features are keyed by sigma, but this model call carries none: "
                       "run the model through a ComfyUI sampler.")
    return float(sigmas.reshape(-1)[0])


def source_rows(bank_rows: int, target_rows: int, what: str = "target batch") -> None:
    """A bank of 1 broadcasts; a bank of B serves a target batch of B, row by row."""
    if bank_rows not in (1, target_rows):
        raise PnPError(
            f"The feature bank holds {bank_rows} source row(s) but the {what} is {target_rows}: "
            f"use a bank of 1 source image, or one source image per target row."
        )


def rows_from_source(source: torch.Tensor, rows: int, chunks: int) -> torch.Tensor:
    """Source rows for every row of every cond/uncond chunk: a source of 1 broadcasts,
    a source of B feeds row r of each chunk from source row r."""
    per_chunk = rows // max(chunks, 1)
    source_rows(source.shape[0], per_chunk)
    if source.shape[0] == 1:
        return source.expand(rows, *source.shape[1:])
    return source.repeat(rows // source.shape[0], *([1] * (source.ndim - 1)))


RUN_KEY = "pnp_injection_run"  # transformer_options entry: the state of the sampling run in progress


class SamplingRun:
    """What one sampling run with injection owns: the streamed slices of the bank (a
    `placement.StepFeed`). Made when the run starts and dropped when it ends, so clones of a
    patched model and runs after one another never share it."""

    def __init__(self, owner, feed: StepFeed):
        self.owner, self.feed = owner, feed


@contextmanager
def sampling_run(guider, run: SamplingRun):
    """Install `run` for the duration of one OUTER_SAMPLE call, in a copy of the guider's
    model options (as ComfyUI's EasyCache does), and release it in `finally`."""
    original = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(original)
    guider.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
    try:
        yield run
    finally:
        run.feed.release()
        guider.model_options = original


def run_feed(transformer_options, owner, tables) -> StepFeed:
    """The feed of the run `owner` started; a model call outside any run (a custom guider that
    skips OUTER_SAMPLE) gets a feed of its own, without prefetch across calls."""
    run = transformer_options.get(RUN_KEY)
    return run.feed if run is not None and run.owner is owner else StepFeed(tables)


def target_rows(bank_rows: int, *conditionings) -> int:
    """The batch a PnP sampler makes: one latent per target prompt row (a batch of prompts) or
    per source row, whichever is more; a bank of 1 serves any batch, a bank of B a batch of B."""
    prompt_rows = max((entry[0].shape[0] for c in conditionings if c for entry in c if entry[0] is not None), default=1)
    rows = max(bank_rows, prompt_rows)
    if prompt_rows not in (1, rows):
        raise PnPError(f"The target prompt holds a batch of {prompt_rows} prompts but the feature bank {bank_rows} "
                       f"source rows: give one prompt, one prompt per source row, or a bank of 1 source image.")
    source_rows(bank_rows, rows)
    return rows
