"""Sampling schedules, the fine inversion schedule, and sigma -> step keys (spec sections 1, 2, 4).

Everything is keyed by sigma, never by a step counter: a counter silently shifts or reverses
when two schedules differ.
"""
from __future__ import annotations

import math

import torch

from .errors import PnPError

# Two sigmas closer than this (relative) are the same schedule point.
SIGMA_RTOL = 1e-4


def sampling_sigmas(model_sampling, scheduler: str, steps: int) -> torch.Tensor:
    """sigma_0 > ... > sigma_{N-1} > sigma_N = 0, as ComfyUI's samplers compute them."""
    import comfy.samplers

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


def check_inversion_steps(evaluations: int, steps: int) -> None:
    if evaluations < steps:
        raise PnPError(f"`inversion_steps` ({evaluations}) is below `steps` ({steps}): the inversion must "
                       f"visit every sampling step. Raise `inversion_steps` to at least {steps}.")


def inversion_sigmas(model_sampling, sigmas: torch.Tensor, evaluations: int) -> tuple[torch.Tensor, list[int]]:
    """The ascending fine schedule of DDIM inversion, and where each sampling sigma sits in it.

    It starts at the model's timestep 0 (the encoded latent's level) and ends at sigma_0.
    Each gap between consecutive sampling sigmas gets one model evaluation, plus a share of
    the remaining `evaluations` as the model's own discrete sigmas inside the gap, evenly
    spaced (shares follow the gap's count of discrete sigmas). With enough evaluations every
    discrete timestep up to sigma_0 is visited (999 for SD: the official schedule; steps above
    sigma_0 would not change the trajectory, so none is spent there). With evaluations equal
    to the sampling steps this is the fast mode.

    Returns (fine sigmas, index into them of sigma_{N-1}, ..., sigma_0 in sampling order reversed).
    """
    targets = [float(s) for s in sigmas[:-1].flip(0)]  # ascending sampling sigmas
    check_inversion_steps(evaluations, len(targets))
    discrete = [float(s) for s in model_sampling.sigmas.float().cpu()]
    start = float(model_sampling.sigma_min)
    if targets[0] < start * (1 - SIGMA_RTOL):
        raise PnPError(
            "The schedule's smallest sigma is below the model's timestep 0, where the source "
            "latent sits: use a scheduler that stays on the model's range (e.g. ddim_uniform)."
        )

    gaps, lo = [], start
    for hi in targets:
        inner = [s for s in discrete if lo * (1 + SIGMA_RTOL) < s < hi * (1 - SIGMA_RTOL)]
        gaps.append(inner)
        lo = hi
    capacity = [len(g) for g in gaps]
    # A sampling sigma at the latent's own level (e.g. karras ends at sigma_min) costs nothing.
    spent = sum(not math.isclose(hi, lo, rel_tol=SIGMA_RTOL) for lo, hi in zip([start] + targets, targets))
    extra = _share(min(evaluations - spent, sum(capacity)), capacity)

    fine, record = [start], []
    lo = start
    for hi, inner, k in zip(targets, gaps, extra):
        fine.extend(inner[round((j + 1) * (len(inner) + 1) / (k + 1)) - 1] for j in range(k))
        if not math.isclose(hi, lo, rel_tol=SIGMA_RTOL):
            fine.append(hi)
        record.append(len(fine) - 1)
        lo = hi
    return torch.tensor(fine, dtype=torch.float32), record


def _share(total: int, capacity: list[int]) -> list[int]:
    """Split `total` in proportion to `capacity` (largest remainder), never above capacity."""
    cap = sum(capacity)
    if cap == 0 or total == 0:
        return [0] * len(capacity)
    exact = [total * c / cap for c in capacity]
    out = [int(e) for e in exact]
    order = sorted(range(len(capacity)), key=lambda i: exact[i] - out[i], reverse=True)
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


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
