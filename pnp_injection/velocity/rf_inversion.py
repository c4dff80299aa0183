"""RF-Inversion (Rout, Chen, Ruiz, Caramanis, Shakkottai, Chu; ICLR 2025): a controlled forward ODE that
inverts the source toward a random noise, and a controlled reverse ODE that samples the target while
pulling toward the source.

Official code: LituRout/RF-Inversion at 7692b96 loads diffusers' community pipeline by name (README.md lines
42-47); the algorithm is huggingface/diffusers examples/community/pipeline_flux_rf_inversion.py (at
0036ae2; "pipeline" below). With the schedule sigma_0 = 1 > ... > sigma_N = 0 (linspace(1, 1/N, N) with
Flux's dynamic shift, then 0: pipeline `invert`, and `__call__`):

- Inversion (`invert`, Algorithm 1; the README's gamma 0.5): from the source Y = y_0 and a random y_1,
      u = v(Y, t_i),  u_cond = (y_1 - Y) / (1 - t_i),  Y <- Y + (sigma_i - sigma_{i+1}) (u + gamma (u_cond - u))
  for i = 0 .. N-1. The model is evaluated at t_i = i / (N + 1) (the pipeline's N is the length of its sigma
  list, steps + 1), while the step sizes are the schedule's gaps taken from the top: the official code's
  quirk, followed here. The empty source prompt at embedded guidance 0 (`source_guidance_scale`; ComfyUI's
  Flux would use 3.5 where none is set). N model evaluations.
- Sampling (`__call__`, Algorithm 2; the README's eta 0.9, start 0, stop 7/28, 28 steps, guidance 3.5, the
  pipeline's default): from the inverted latent, with -v the velocity toward the data at t_i = 1 - sigma_i,
      v_cond = (y_0 - x) / sigma_i,  x <- x + (sigma_i - sigma_{i+1}) (-v + eta_i (v_cond + v))
  with eta_i = eta for int(start N) <= i < min(int(stop N), N), else 0. N model evaluations.

Equivalently, a reverse step is an Euler step toward the denoised estimate D moved toward the source:
D + eta_i (y_0 - D). The pipeline is written for Flux.1; on other rectified-flow models the same algorithm
runs on the model's own schedule, with classifier-free guidance where the model uses it.
"""
from __future__ import annotations

import comfy.samplers
import torch
from tqdm.auto import trange

import comfy.sample

from ..errors import PnPError
from ..inputs import check_number
from . import families
from .calls import sampler_velocity
from .guider import prompt_rows, target_guider
from .inversion import Inversion, InvertedNoise
from .inversion import invert as run_inversion
from .masks import EditMask, denoise_mask
from .sampling import AUTO, chosen, edit_mask, run, source_samples
from .schedule import edit_sigmas, official_kind

METHOD = "RF-Inversion"
STEPS, GAMMA, ETA, START, STOP = 28, 0.5, 0.9, 0.0, 7 / 28     # README.md lines 66-84
INVERSION_GUIDANCE, GUIDANCE = 0.0, 3.5    # pipeline `invert` source_guidance_scale, `__call__` guidance_scale
SCHEDULES = {"flux1": "flux", "flux1_schnell": "linear"}


def invert(model_patcher, latent: torch.Tensor, conditioning, sigmas: torch.Tensor, noise: torch.Tensor,
           gamma: float = GAMMA, guidance: float = INVERSION_GUIDANCE, mask: torch.Tensor | None = None) -> Inversion:
    """The controlled forward ODE from `latent` (user space) toward `noise` (y_1, the model's noise for that
    latent, as a NOISE gives it), over `sigmas` (descending to 0)."""
    check_number(gamma, "gamma", 0.0, 1.0)
    if tuple(noise.shape) != tuple(latent.shape):
        raise PnPError(f"The noise has shape {tuple(noise.shape)} but the source latent {tuple(latent.shape)}: "
                       f"give RF-Inversion's noise for the source latent (Random Noise).")
    steps = len(sigmas) - 1

    def walk(velocity, y, levels, keep):
        y1 = noise.to(y)
        for i in range(steps):
            t = i / (steps + 1)
            u = velocity(y, t)  # at t_0 = 0: the raw velocity (calls.with_raw_velocity)
            y = y + (levels[i] - levels[i + 1]) * (u + gamma * ((y1 - y) / (1 - t) - u))
            keep(levels[0] - levels[i + 1], y)  # its level: the gaps walked so far
        return y
    return run_inversion(model_patcher, latent, conditioning, sigmas, sigmas, METHOD, walk, guidance, mask)


def controlled_steps(steps: int, start: float, stop: float) -> range:
    """The sampling steps eta acts on: int(start N) <= i < min(int(stop N), N) (pipeline `__call__`)."""
    check_number(start, "start", 0.0, 1.0)
    check_number(stop, "stop", 0.0, 1.0)
    if start > stop:
        raise PnPError(f"`start` is {start} and `stop` {stop}: eta acts from `start` to `stop` (fractions of the "
                       f"steps); give start <= stop.")
    return range(int(start * steps), min(int(stop * steps), steps))


def sample_rf_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None, inversion=None, eta=ETA,
                        start=START, stop=STOP):
    """The controlled reverse ODE as a k-diffusion style sampler function (comfy.samplers.KSAMPLER), from an
    RF-Inversion inversion, with any guider (the target prompt)."""
    extra_args = extra_args or {}
    x = inversion.check_run(model, sigmas, x, "RF-Inversion Sampler (PnP)")
    velocity = sampler_velocity(model, extra_args)
    levels = sigmas.tolist()
    controlled = controlled_steps(len(levels) - 1, start, stop)
    region = EditMask(denoise_mask(extra_args, inversion.mask), x, model, sigmas, extra_args)
    source = inversion.source.to(x).expand_as(x)
    for i in trange(len(levels) - 1, disable=disable):
        sigma, sigma_next = levels[i], levels[i + 1]
        if region:
            x = region.hold(x, inversion.at(sigma).to(x).expand_as(x), sigma)
        v = velocity(x, sigma)
        if i in controlled:
            v = v - eta * ((source - x) / sigma + v)  # -(v_hat): the velocity toward the noise
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x - sigma * v})
        x = x + (sigma_next - sigma) * v
    return region.composite(x, source)


def sampler(inversion: Inversion, eta: float = ETA, start: float = START, stop: float = STOP):
    """The controlled reverse ODE as a ComfyUI SAMPLER (SamplerCustomAdvanced with the inversion's noise and sigmas)."""
    if inversion.method != METHOD:
        raise PnPError(f"RF-Inversion Sampler (PnP) samples from an RF-Inversion inversion, and this one is "
                       f"{inversion.method}'s: invert with PnP RF-Inversion Inversion.")
    check_number(eta, "eta", 0.0, 1.0)
    controlled_steps(1, start, stop)
    return comfy.samplers.KSAMPLER(sample_rf_inversion,
                                   extra_options={"inversion": inversion, "eta": eta, "start": start, "stop": stop})


def official_sigmas(model_patcher, steps: int, latent_shape) -> torch.Tensor:
    """RF-Inversion's schedule for this model (steps at AUTO: the official count)."""
    family = families.family_of(model_patcher, METHOD)
    return edit_sigmas(model_patcher, official_kind(SCHEDULES, family), chosen(steps, STEPS), latent_shape)


def edit(model_patcher, latent: dict, inversion_prompt, target, negative=None, steps: int = AUTO, gamma: float = GAMMA,
         eta: float = ETA, start: float = START, stop: float = STOP, guidance: float = AUTO, seed: int = 0,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    """RF-Inversion of the source `latent` (a LATENT): the controlled forward ODE with `inversion_prompt`
    (officially the empty prompt, at embedded guidance 0) toward the noise of `seed`, then the controlled reverse
    ODE with the `target` prompt at `guidance` (official 3.5). Returns a LATENT's samples."""
    samples = source_samples(model_patcher, latent)
    sigmas = official_sigmas(model_patcher, steps, samples.shape)
    guider = target_guider(model_patcher, target, negative, chosen(guidance, GUIDANCE))
    rows = max(prompt_rows(target), samples.shape[0])
    region = edit_mask(mask, latent, samples.shape, rows)
    inversion = invert(model_patcher, samples, inversion_prompt, sigmas, comfy.sample.prepare_noise(samples, seed), gamma)
    widened = samples.expand(rows, *samples.shape[1:])  # a batch of prompts: one edit each, from one inversion
    return run(guider, widened, sampler(inversion, eta, start, stop), inversion.sigmas,
               InvertedNoise(inversion).generate_noise({"samples": widened}), mask=region)
