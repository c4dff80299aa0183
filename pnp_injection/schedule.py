"""Sampling schedules and sigma -> step keys, for every wing (spec sections 1 and 4).

Everything is keyed by sigma, never by a step counter: a counter silently shifts or reverses
when two schedules differ.
"""
from __future__ import annotations

import math

import comfy.samplers
import torch

from .errors import PnPError

# Two sigmas closer than this (relative) are the same schedule point.
SIGMA_RTOL = 1e-4


def sampling_sigmas(model_sampling, scheduler: str, steps: int) -> torch.Tensor:
    """sigma_0 > ... > sigma_{N-1} > sigma_N = 0, as ComfyUI's samplers compute them."""
    if steps < 1:
        raise PnPError("`steps` must be at least 1.")
    if scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise PnPError(f"Unknown scheduler {scheduler!r}; choose one of {comfy.samplers.SCHEDULER_NAMES}.")
    return comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps).float().cpu()


def injected_steps(steps: int, fraction: float, name: str) -> int:
    """Steps i < int(N * tau) are injected: the official diffusers rule (40 and 25 of 50)."""
    if not 0.0 <= fraction <= 1.0 or math.isnan(fraction):
        raise PnPError(f"`{name}` is {fraction}; it is a fraction of the steps: give a value in [0, 1].")
    return int(steps * fraction)


def step_at(sigmas: torch.Tensor, sigma: float) -> int | None:
    """The sampling step whose features serve a model call at `sigma`.

    On the schedule that is the step keyed by that sigma. Samplers that evaluate between
    schedule points (Heun, DPM-2, ...) get the step being taken: the nearest schedule sigma
    at or above the call's sigma. Above sigma_0 no step applies (None).
    """
    if sigma > float(sigmas[0]) * (1 + SIGMA_RTOL):
        return None
    at_or_above = (sigmas[:-1] >= sigma * (1 - SIGMA_RTOL)).nonzero()
    return int(at_or_above[-1]) if len(at_or_above) else None


UNET_SCHEDULE_FIX = ("Sample with the same steps and scheduler as PnP DDIM Inversion, denoise 1.0 (or feed "
                     "PnP Sigmas to SamplerCustomAdvanced).")


def check_same_schedule(expected: torch.Tensor, given: torch.Tensor, points: int, what: str,
                        fix: str = UNET_SCHEDULE_FIX) -> None:
    """The sampler's first `points` sigmas must be the bank's: injection is keyed by them."""
    given = given.detach().float().cpu()
    expected = expected.float().cpu()
    ok = len(given) >= points and torch.allclose(given[:points], expected[:points], rtol=SIGMA_RTOL, atol=1e-6)
    if not ok:
        shown = ", ".join(f"{float(s):.4f}" for s in given[: min(points, 4)])
        want = ", ".join(f"{float(s):.4f}" for s in expected[: min(points, 4)])
        raise PnPError(
            f"The sampler's sigmas ({shown}, ...) are not the {what}'s ({want}, ...) within the "
            f"injection window. {fix}"
        )
