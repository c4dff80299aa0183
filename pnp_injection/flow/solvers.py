"""RF-Solver: the second-order rectified-flow ODE step of RF-Solver-Edit, and a ComfyUI sampler.

A flow model predicts the velocity v(x, t) of x_t = (1 - t) * x_0 + t * noise. One step
from t to t' (dt = t' - t, either direction) evaluates v at (x, t), takes a half Euler step
to x_mid, evaluates v_mid at (x_mid, t + dt/2), and moves

    x' = x + dt * v + dt^2 / 2 * (v_mid - v) / (dt / 2)

(official code: FLUX_Image_Edit/src/flux/sampling.py lines 118-134). The Euler step is
x' = x + dt * v. ComfyUI's flow models return the denoised estimate D = x - sigma * v,
so a sampler reads v = (x - D) / sigma; at sigma 0 that is undefined, which only the
inversion's first evaluation needs (see flux_inversion).
"""
from __future__ import annotations

from typing import Callable

import comfy.model_management
import comfy.samplers
import torch
from tqdm.auto import trange

from ..errors import PnPError

SOLVERS = ("rf_solver", "euler")
EVALUATIONS = {"rf_solver": 2, "euler": 1}  # model evaluations per step

# velocity(x, sigma, evaluation) -> v; evaluation is 0 (at the step's start) or 1 (midpoint)
Velocity = Callable[[torch.Tensor, float, int], torch.Tensor]


def step(solver: str, velocity: Velocity, x: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One step of `solver` from `sigma` to `sigma_next`."""
    dt = sigma_next - sigma
    v = velocity(x, sigma, 0)
    if solver == "euler":
        return x + dt * v
    v_mid = velocity(x + dt / 2 * v, sigma + dt / 2, 1)
    return x + dt * v + 0.5 * dt ** 2 * ((v_mid - v) / (dt / 2))


def check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise PnPError(f"Unknown solver {solver!r}; choose one of {list(SOLVERS)}.")


@torch.no_grad()
def sample_rf_solver(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """k-diffusion style sampler function (for comfy.samplers.KSAMPLER) of RF-Solver."""
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    last = {}

    def velocity(x_, sigma, evaluation):
        if sigma == 0:
            raise PnPError("The rf_solver sampler cannot evaluate a flow model at sigma 0 (its velocity is not "
                           "readable there): sample from high to low sigmas; invert with PnP Flux Inversion.")
        # Older hosts (0.3.64) check for an interrupt only at progress updates, once per step of two evaluations.
        comfy.model_management.throw_exception_if_processing_interrupted()
        denoised = model(x_, sigma * ones, **extra_args)
        if evaluation == 0:
            last["denoised"] = denoised
        return (x_ - denoised) / sigma

    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x = step("rf_solver", velocity, x, sigma, sigma_next)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": last["denoised"]})
    return x


def sampler():
    """The RF-Solver sampler as a ComfyUI SAMPLER (for SamplerCustomAdvanced)."""
    return comfy.samplers.KSAMPLER(sample_rf_solver)


def sampler_for(solver: str):
    """The ComfyUI sampler that samples like `solver`: ours for rf_solver, ComfyUI's euler for euler."""
    check_solver(solver)
    return sampler() if solver == "rf_solver" else comfy.samplers.sampler_object("euler")
