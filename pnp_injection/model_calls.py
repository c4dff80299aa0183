"""Plumbing shared by the wings for the model calls PnP works inside: wrapper removal, forward
hooks scoped to one call and kept out of torch.compile, the call's sigma read without waiting on
the device, a sampling run's state, and the mapping of source rows onto the rows of a batched call."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable

import comfy.model_patcher
import comfy.patcher_extension as ext
import torch

from . import notices
from .errors import PnPError
from .streaming import StepFeed


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


HOST_SIGMA = "pnp_sigma"  # transformer_options entry: the call's sigma as a Python float (the pack's own loops)
CLOCK_KEY = "pnp_step_clock"  # transformer_options entry: the StepClock of the sampling run in progress

# ComfyUI's samplers (comfy/k_diffusion/sampling.py) that call the model once per step and then the callback with
# the step's index, or (heun) a second time after it at the next step's level: counting callbacks tells such a
# sampler's step, and so each call's sigma, on the host. Others are read from the device (one wait per call).
CLOCK_SAFE = {"sample_euler", "sample_euler_ancestral", "sample_euler_ancestral_RF", "sample_heun", "sample_lms",
              "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_lcm", "sample_ipndm",
              "sample_ipndm_v", "sample_deis", "sample_euler_ancestral_cfg_pp", "sample_dpmpp_2m_cfg_pp",
              "sample_gradient_estimation", "sample_er_sde"}


def call_sigma(transformer_options, timestep: torch.Tensor | None = None) -> float:
    """The sigma of a model call (or of a sampler's evaluation, `timestep`), on the host: the one the pack's own
    loops and samplers pass along (HOST_SIGMA), else the run's StepClock's, else (outside the pack's runs) read
    from the device."""
    host = transformer_options.get(HOST_SIGMA)
    if host is not None:
        return host
    clock = transformer_options.get(CLOCK_KEY)
    if clock is not None:
        return clock.sigma(transformer_options if timestep is None else {"sigmas": timestep})
    sigmas = transformer_options.get("sigmas") if timestep is None else timestep
    if sigmas is None:
        raise PnPError("PnP features are keyed by sigma, but this model call carries none: "
                       "run the model through a ComfyUI sampler.")
    return float(sigmas.reshape(-1)[0])


class StepClock:
    """The step a ComfyUI sampler of CLOCK_SAFE is at, from its per-step callbacks: a call's sigma is then known
    without waiting on the device (a read of a device tensor stalls the host until the device is idle, and with
    it the copies queued ahead). Each call's sigma on the device is compared with the clock's there; the run
    checks the comparisons once, when it ends, and a sampler that departed raises instead of its result."""

    def __init__(self, sigmas: torch.Tensor):
        self.levels = sigmas.detach().float().cpu().tolist()
        self.step = 0
        self.departed = None  # a device flag: a call whose sigma was not the clock's

    def tick(self, step: int) -> None:
        self.step = step + 1

    def sigma(self, transformer_options) -> float:
        sigma = self.levels[min(self.step, len(self.levels) - 1)]
        given = transformer_options.get("sigmas")
        if given is not None:
            off = (given.reshape(-1)[0] - sigma).abs() > 1e-4 * sigma + 1e-6
            self.departed = off if self.departed is None else self.departed | off
        return sigma

    def check(self) -> None:
        if self.departed is not None and bool(self.departed):
            raise PnPError("The sampler called the model at sigmas the pack's step count did not foresee, so PnP could "
                           "not tell its steps apart: sample with euler, ddim or another single-step sampler, or with "
                           "the pack's own sampler nodes.")


# The host's step caches (comfy_extras/nodes_easycache.py: EasyCache and LazyCache), by the key of their wrappers.
# A cache answers some model calls from earlier ones.
STEP_CACHES = {"easycache": "EasyCache", "lazycache": "LazyCache"}


def step_caches(wrappers: dict) -> list[str]:
    """The step caches among wrappers ({wrapper type: {key: [...]}}, a ModelPatcher's or a run's), by name."""
    return [name for key, name in STEP_CACHES.items() if any(key in by_key for by_key in wrappers.values())]


def _say_off(caches: list[str], why: str) -> None:
    if caches:
        notices.show(f"PnP: {' and '.join(caches)} is off {why}: a step cache answers some model calls from earlier "
                     f"ones.", logging.WARNING)


def patcher_without_step_caches(model_patcher, why: str):
    """A clone of `model_patcher` without the host's step caches (the model itself is shared, as clones do); says
    so in the log and on the executing node, with `why`, when there were any."""
    clone = model_patcher.clone()
    caches = step_caches(clone.wrappers)
    for wrapper_type in list(clone.wrappers):
        for key in STEP_CACHES:
            clone.remove_wrappers_with_key(wrapper_type, key)
    _say_off(caches, why)
    return clone


def without_step_caches(model_options: dict, why: str) -> dict:
    """A copy of a sampling run's `model_options` (where the host has gathered the patcher's wrappers) without the
    step caches' model-call wrappers; the original is left as it was. A cache's OUTER_SAMPLE wrapper may already be
    running around this run and reads its state when it ends, so that wrapper and the state stay, unused."""
    options = comfy.model_patcher.create_model_options_clone(model_options)
    wrappers = options.setdefault("transformer_options", {}).get("wrappers", {})
    caches = step_caches(wrappers)
    for wrapper_type, by_key in wrappers.items():
        if wrapper_type != ext.WrappersMP.OUTER_SAMPLE:
            for key in STEP_CACHES:
                by_key.pop(key, None)
    _say_off(caches, why)
    return options


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
    """What one sampling run with injection owns: the streamed slices of the bank (a streaming.StepFeed), or
    for a bank that keeps no tables its recomputed slots (recompute.Recomputed). Made when the run starts and
    dropped when it ends, so clones of a patched model and runs after one another never share it."""

    def __init__(self, owner, feed: StepFeed | None = None, recomputed=None):
        self.owner, self.feed, self.recomputed = owner, feed, recomputed


@contextmanager
def sampling_run(guider, run: SamplingRun):
    """Install `run` for the duration of one OUTER_SAMPLE call, in a copy of the guider's
    model options (as ComfyUI's EasyCache does), and release it in `finally`."""
    original = guider.model_options
    guider.model_options = without_step_caches(original, "for this sampling run, as PnP injects the source's features "
                                                         "into every call of its injected steps; the result is the "
                                                         "edit without the cache")
    guider.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
    try:
        yield run
    finally:
        if run.feed is not None:
            run.feed.release()
        guider.model_options = original


def with_clock(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
    """Run an OUTER_SAMPLE executor with the run's StepClock (one per run: an outer wrapper's is kept) when the
    sampler is one of CLOCK_SAFE, counting its callbacks, and check it when sampling ends. `args`: the rest of
    the host's outer_sample arguments (denoise_mask, callback, ...), positional as the host passes them."""
    guider = executor.class_obj
    options = guider.model_options.get("transformer_options", {})
    function = getattr(getattr(sampler, "sampler_function", None), "__name__", "")
    if CLOCK_KEY in options or function not in CLOCK_SAFE or len(args) < 2:
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
    clock, callback = StepClock(sigmas), args[1]

    def counted(step, *rest):
        clock.tick(step)
        if callback is not None:
            callback(step, *rest)
    original = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(original)
    guider.model_options.setdefault("transformer_options", {})[CLOCK_KEY] = clock
    try:
        out = executor(noise, latent_image, sampler, sigmas, args[0], counted, *args[2:], **kwargs)
    finally:
        guider.model_options = original
    clock.check()
    return out


def current_run(transformer_options, owner, new: Callable[[], SamplingRun]) -> SamplingRun:
    """The run `owner` started; a model call outside any run (a custom guider that skips OUTER_SAMPLE) gets a
    run of its own (`new()`), without read-ahead across calls."""
    run = transformer_options.get(RUN_KEY)
    return run if run is not None and run.owner is owner else new()


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
