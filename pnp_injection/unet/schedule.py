"""The fine ascending schedule of DDIM inversion (docs/pnp.md, section 2)."""
from __future__ import annotations

import math

import torch

from ..errors import PnPError
from ..schedule import SIGMA_RTOL


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
