"""Sampling schedules and sigma -> step keys, for every wing (docs/pnp.md, sections 1 and 4).

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


def check_same_schedule(expected: torch.Tensor, given: torch.Tensor, points: int, what: str, fix: str) -> None:
    """The sampler's first `points` sigmas must be the bank's: injection is keyed by them. `fix` names the
    calling wing's nodes that give the bank's schedule (each wing's SCHEDULE_FIX)."""
    given = given.detach().float().cpu()
    expected = expected.float().cpu()
    ok = len(given) >= points and torch.allclose(given[:points], expected[:points], rtol=SIGMA_RTOL, atol=1e-6)
    if not ok:
        shown = ", ".join(f"{float(s):.4f}" for s in given[: min(points, 4)])
        want = ", ".join(f"{float(s):.4f}" for s in expected[: min(points, 4)])
        raise PnPError(f"{departure(expected, given)} {fix} (The sampler's sigmas: {shown}, ...; the {what}'s: "
                       f"{want}, ...)")


def departure(expected: torch.Tensor, given: torch.Tensor) -> str:
    """How a sampler's schedule departs from the bank's, in the words of the widgets that set it."""
    steps, bank_steps = len(given) - 1, len(expected) - 1
    if steps != bank_steps:
        return f"The sampler runs {steps} steps but the bank was made with {bank_steps}: set `steps` to {bank_steps}."
    if float(given[0]) < float(expected[0]) * (1 - SIGMA_RTOL) - 1e-6:
        return ("The sampling starts below the bank's first noise level: a denoise below 1.0 (or a start step above "
                "0) skips the steps the bank was made for.")
    return (f"The sampler runs the bank's {steps} steps on another schedule: set the `scheduler` (and the model's "
            f"ModelSampling shift) that the inversion used.")


def later_departure(expected: torch.Tensor, given: torch.Tensor) -> str | None:
    """How a schedule that matches the bank's over the injected steps departs from it after them (a warning: the
    injected steps are served, the rest is the user's choice), or None."""
    given, expected = given.detach().float().cpu(), expected.float().cpu()
    if len(given) == len(expected) and torch.allclose(given, expected, rtol=SIGMA_RTOL, atol=1e-6):
        return None
    if len(given) < len(expected):
        ending = (f"stops after {len(given) - 1} of the bank's {len(expected) - 1} steps (the result is not fully "
                  f"denoised)")
    elif len(given) > len(expected):
        ending = f"runs {len(given) - 1} steps where the bank has {len(expected) - 1}"
    else:
        ending = "leaves the bank's schedule after the injected steps (another scheduler or shift)"
    return (f"PnP: the sampler {ending}. The injected steps follow the bank; the rest of the run is not the "
            f"schedule the edit was inverted on. Sample with the inversion's steps and scheduler for the method's "
            f"result.")


# Flux.1's schedule (black-forest-labs/flux `get_schedule`, which RF-Solver-Edit, FireFlow and UniEdit-Flow's
# FLUX code copy: RF-Solver-Edit FLUX_Image_Edit/src/flux/sampling.py lines 46-75, UniEdit-Flow
# UniEdit-Flow_FLUX/src/flux/sampling.py lines 47-75): linspace(1, 0, N + 1), shifted by
# e^mu / (e^mu + (1/t - 1)) with mu linear in the image's token count through (256, 0.5) and (4096, 1.15).
# diffusers' FlowMatchEulerDiscreteScheduler with the FLUX.1-dev config (use_dynamic_shifting, the same two
# points) gives the same list from linspace(1, 1/N, N) plus a final 0 (FlowEdit, RF-Inversion).
FLUX_BASE_SHIFT, FLUX_MAX_SHIFT = 0.5, 1.15
FLUX_TOKENS_AT_BASE, FLUX_TOKENS_AT_MAX = 256, 4096


def flux_mu(tokens: int) -> float:
    """mu of Flux.1's schedule for an image of `tokens` tokens (2x2 latent cells each)."""
    slope = (FLUX_MAX_SHIFT - FLUX_BASE_SHIFT) / (FLUX_TOKENS_AT_MAX - FLUX_TOKENS_AT_BASE)
    return FLUX_BASE_SHIFT + slope * (tokens - FLUX_TOKENS_AT_BASE)


def flux_sigmas(steps: int, tokens: int, shift: bool = True) -> torch.Tensor:
    """Flux.1's schedule for `steps` steps: 1 ... 0, steps + 1 points (no shift: Flux.1 schnell)."""
    if steps < 1:
        raise PnPError("`steps` must be at least 1.")
    t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    if shift:
        e = math.exp(flux_mu(tokens))
        t = torch.cat([e / (e + (1 / t[:-1] - 1)), t.new_zeros(1)])  # t = 0 maps to 0
    return t.float()


def shifted_sigmas(steps: int, shift: float) -> torch.Tensor:
    """diffusers' FlowMatchEulerDiscreteScheduler with a static `shift` (SD3's config: 3.0; UniEdit-Flow's Wan
    demo: 3.0), as `set_timesteps(steps)` computes it (diffusers 0.42 scheduling_flow_match_euler_discrete.py
    lines 340-357 and __init__ lines 127-140): `steps` points evenly spaced from the table's largest sigma (1)
    to its smallest (the 1/1000 level, already shifted), each shifted by shift * s / (1 + (shift - 1) * s),
    then a final 0. The smallest level is thus shifted twice, as diffusers does."""
    if steps < 1:
        raise PnPError("`steps` must be at least 1.")

    def shifted(s):
        return shift * s / (1 + (shift - 1) * s)
    s = torch.linspace(1.0, shifted(1 / 1000), steps, dtype=torch.float64)
    return torch.cat([shifted(s), s.new_zeros(1)]).float()
