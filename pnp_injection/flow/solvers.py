"""The rectified-flow ODE solvers of the Flux edits, and their ComfyUI samplers.

A flow model predicts the velocity v(x, t) of x_t = (1 - t) * x_0 + t * noise. One step from
t to t' (dt = t' - t, either direction):

- `rf_solver` (RF-Solver-Edit): evaluate v at (x, t), take a half Euler step to x_mid,
  evaluate v_mid at (x_mid, t + dt/2), and move x' = x + dt * v + dt^2 / 2 * (v_mid - v) / (dt / 2)
  (wangjiangshan0725/RF-Solver-Edit, FLUX_Image_Edit/src/flux/sampling.py lines 118-134).
  Two evaluations per step.
- `fireflow` (FireFlow, Deng et al. 2024): the same midpoint, but v is the previous step's
  v_mid (only the first step evaluates it), and x' = x + dt * v_mid
  (HolmesShuan/FireFlow-Fast-Inversion-of-Rectified-Flow-for-Image-Semantic-Editing,
  src/flux/sampling.py lines 208-246: `next_step_velocity`). One evaluation per step, plus
  one for the first: N + 1 for N steps.
- `euler`: x' = x + dt * v. One evaluation per step.

ComfyUI's flow models return the denoised estimate D = x - sigma * v, so a sampler reads
v = (x - D) / sigma; at sigma 0 that is undefined, which only the inversion's first
evaluation needs (the inversion reads the raw model output).
"""
from __future__ import annotations

from typing import Callable

import comfy.model_management
import comfy.samplers
import torch
from tqdm.auto import trange

from ..errors import PnPError
from ..model_calls import HOST_SIGMA
from ..passes import model_call

SOLVERS = ("rf_solver", "fireflow", "euler")
NAMES = {"rf_solver": "RF-Solver", "fireflow": "FireFlow", "euler": "Euler"}

# velocity(x, sigma, evaluation) -> v; evaluation is 0 (at the step's start) or 1 (midpoint)
Velocity = Callable[[torch.Tensor, float, int], torch.Tensor]


def evaluations(solver: str, steps: int) -> int:
    """Model evaluations of `steps` steps of `solver`."""
    return {"rf_solver": 2 * steps, "fireflow": steps + 1 if steps else 0, "euler": steps}[solver]


def walk(solver: str, velocity: Velocity, x: torch.Tensor, sigmas,
         after_step: Callable[[int, torch.Tensor], None] | None = None, disable: bool | None = True) -> torch.Tensor:
    """Move `x` along `sigmas` (either direction) with `solver`, calling `after_step(i, x)` after step i."""
    reused = None  # FireFlow: the previous step's midpoint velocity
    levels = sigmas.tolist() if isinstance(sigmas, torch.Tensor) else list(sigmas)  # one read of the device per run
    for i in trange(len(levels) - 1, disable=disable):
        sigma, sigma_next = levels[i], levels[i + 1]
        dt = sigma_next - sigma
        v = reused if reused is not None else velocity(x, sigma, 0)
        if solver == "euler":
            x = x + dt * v
        else:
            v_mid = velocity(x + dt / 2 * v, sigma + dt / 2, 1)
            if solver == "fireflow":
                x, reused = x + dt * v_mid, v_mid
            else:
                x = x + dt * v + 0.5 * dt ** 2 * ((v_mid - v) / (dt / 2))
        if after_step is not None:
            after_step(i, x)
    return x


def check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise PnPError(f"Unknown solver {solver!r}; choose one of {list(SOLVERS)}.")


def _sampler_function(solver: str):
    @torch.no_grad()
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        """k-diffusion style sampler function (for comfy.samplers.KSAMPLER)."""
        call = model_call(model, extra_args or {})
        ones = x.new_ones([x.shape[0]])
        last = {}

        def velocity(x_, sigma, evaluation):
            if sigma == 0:
                raise PnPError(f"The {solver} sampler cannot evaluate a flow model at sigma 0 (its velocity is not "
                               f"readable there): sample from high to low sigmas; invert with a PnP "
                               f"Flux/Chroma/HunyuanVideo Inversion node.")
            # Older hosts (0.3.64) check for an interrupt only at progress updates, once per step.
            comfy.model_management.throw_exception_if_processing_interrupted()
            denoised = call(x_, sigma * ones, **{HOST_SIGMA: sigma})
            last[evaluation] = denoised
            return (x_ - denoised) / sigma

        def after_step(i, x_):
            if callback is not None:  # the step's first evaluation, or its midpoint where it reused one (FireFlow)
                callback({"x": x_, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                          "denoised": last[0] if 0 in last else last[1]})
            last.clear()
        return walk(solver, velocity, x, sigmas, after_step, disable)
    sample.__name__ = sample.__qualname__ = f"sample_{solver}"
    return sample


sample_rf_solver = _sampler_function("rf_solver")
sample_fireflow = _sampler_function("fireflow")
SAMPLE_FUNCTIONS = {"rf_solver": sample_rf_solver, "fireflow": sample_fireflow}


def sampler(solver: str = "rf_solver"):
    """The RF-Solver or FireFlow sampler as a ComfyUI SAMPLER (for SamplerCustomAdvanced)."""
    return comfy.samplers.KSAMPLER(SAMPLE_FUNCTIONS[solver])


def solver_of(sampler_object) -> str | None:
    """The solver a ComfyUI SAMPLER steps with, where it is one of ours (None for others)."""
    function = getattr(sampler_object, "sampler_function", None)
    return next((name for name, f in SAMPLE_FUNCTIONS.items() if f is function), None)


def sampler_for(solver: str):
    """The ComfyUI sampler that samples like `solver`: ours for rf_solver and fireflow, ComfyUI's euler for euler."""
    check_solver(solver)
    return sampler(solver) if solver in SAMPLE_FUNCTIONS else comfy.samplers.sampler_object("euler")
