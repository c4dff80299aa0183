"""UniEdit-Flow (Jiao et al., ICLR 2026): Uni-Inv, a predictor-corrector inversion, and Uni-Edit, delayed
editing with region-aware velocity fusion.

Official code: DSL-Lab/UniEdit-Flow at 69f7e81, which holds two implementations that do not compute the same
edit (`RULES`): the FLUX code (UniEdit-Flow_FLUX/src) and the diffusers schedulers for SD3, SDXL, Flux and
Wan 2.1 (UniEdit-Flow_diffusers/schedulers). Both:

- Uni-Inv (FLUX src/flux/sampling.py `edit_uniedit` with inverse=True, lines 415-458; diffusers
  UniInvEulerScheduler.py lines 126-163): the schedule's levels read upwards, 0 = a_0 < a_1 < ... < a_k,
  stopping after k of the N steps (the delay, alpha: FLUX line 411 and 416-417, diffusers lines 88-92). From
  the source x = x_0, with v the velocity at the previous corrected point (v(x_0, 0) for the first step):
      x_pred = x + (a_{j+1} - a_j) v,   v <- v(x_pred, a_{j+1}),   x <- x + (a_{j+1} - a_j) v
  k + 1 model evaluations; the prompt is the empty one at guidance 1, no classifier-free guidance (FLUX
  src/edit.py lines 153 and 184; diffusers demo_edit.py lines 70-78, demo_wan_video_edit.py lines 69-78).
- Uni-Edit (FLUX lines 460-503; diffusers UniEditEulerScheduler.py lines 116-147): from the inverted latent
  at a_k, the last k steps of the schedule. With d = v_tar - v_src at the same latent and a mask m in [0, 1],
      x <- x + (sigma_{i+1} - sigma_i) (m v_tar + (1 - m) v_src + omega (1 + m) d)
  2k model evaluations (source and target prompts, guidance 1). Defaults: 15 steps, alpha 0.6, omega 5
  (FLUX README.md lines 56-63 and src/edit.py lines 284-285; diffusers demo_edit.py lines 23-26,
  demo_wan_video_edit.py lines 22-27 with flow shift 3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import comfy.samplers
import torch
from tqdm.auto import trange

from ..errors import PnPError
from ..inputs import check_number
from . import families
from .calls import sampler_velocity
from .guider import EditGuider, check_edit_guider
from .inversion import Inversion, InvertedNoise
from .inversion import invert as run_inversion
from .masks import EditMask, denoise_mask
from .sampling import AUTO as AUTO_VALUE
from .sampling import chosen, edit_mask, run, source_samples
from .schedule import edit_sigmas, official_kind

METHOD = "UniEdit-Flow"
STEPS, ALPHA, OMEGA, GUIDANCE = 15, 0.6, 5.0, 1.0
SCHEDULES = {"flux1": "flux", "flux1_schnell": "linear", "sd3": "shift3", "wan": "shift3"}


@dataclass(frozen=True)
class Rule:
    """How Uni-Edit's mask is made from d = v_tar - v_src, and how the delay counts its steps."""
    magnitude: bool                       # |d| (FLUX) or the signed d (diffusers)
    whole: bool                           # min-max over the whole latent of a row (FLUX) or per sample + eps
    eps: float
    steps: Callable[[float], int]         # k from alpha * N: round (FLUX) or floor (diffusers)


RULES = {
    # FLUX code: sampling.py line 495 (|d| mean over the channel dim of the packed tokens), line 496 (min-max over
    # the whole tensor, no eps), line 411 (round(alpha * N)).
    "flux": Rule(magnitude=True, whole=True, eps=0.0, steps=round),
    # diffusers: UniEditEulerScheduler.py lines 124-137 (signed mean over the channel dim, min-max per sample plus
    # 1e-7), UniInvEulerScheduler.py line 89 and UniEditEulerScheduler.py line 77 (floor(alpha * N)).
    "scheduler": Rule(magnitude=False, whole=False, eps=1e-7, steps=math.floor),
}
AUTO = "auto"  # the FLUX code's rule on Flux.1, the schedulers' elsewhere


def rule_for(model_patcher, rule: str) -> str:
    if rule == AUTO:
        family = families.family_of(model_patcher, METHOD)
        return "flux" if family in (families.FLUX1, families.FLUX1_SCHNELL) else "scheduler"
    if rule not in RULES:
        raise PnPError(f"Unknown UniEdit-Flow mask rule {rule!r}: choose one of {[AUTO, *RULES]}.")
    return rule


def delayed_steps(rule: str, alpha: float, steps: int) -> int:
    """k of N steps inverted, then edited (the delay); at least 1."""
    check_number(alpha, "alpha", 0.0, 1.0)
    k = RULES[rule].steps(alpha * steps)
    if k < 1:
        raise PnPError(f"`alpha` {alpha} of {steps} steps leaves no step to edit ({'round' if rule == 'flux' else 'floor'}"
                       f"({alpha} x {steps}) = {k}): raise `alpha` or the steps.")
    return k


def fusion_mask(d: torch.Tensor, rule: Rule, cells: int) -> torch.Tensor:
    """Uni-Edit's mask for the velocity difference `d` [B, C, (T,) H, W], at d's cells: the channel mean of |d|
    or d, per group of `cells` x `cells` latent cells (one position of the official code's latent), min-max
    normalised. Where the range is 0 (source and target prompts alike) the FLUX code's mask is 0/0 (NaN); here
    it is 0, its finite limit's value: there d is 0 everywhere, and every mask value then gives the same step."""
    a = (d.abs() if rule.magnitude else d).mean(dim=1, keepdim=True)
    height, width = a.shape[-2:]
    if cells > 1:  # the packed position: the mean of its cells (ComfyUI pads odd sides; the official crops them)
        flat = a.reshape(-1, 1, height, width)
        flat = torch.nn.functional.avg_pool2d(flat, cells, ceil_mode=True, count_include_pad=False)
        a = flat.reshape(*a.shape[:-2], *flat.shape[-2:])
    rows = a.reshape(a.shape[0], -1)
    low, high = rows.amin(dim=1), rows.amax(dim=1)
    if rule.whole:  # the FLUX code reads a batch of 1: min-max of the whole latent (per row here)
        span = high - low
        span = torch.where(span > 0, span, torch.ones_like(span))
    else:
        span = high - low + rule.eps
    shape = (-1,) + (1,) * (a.ndim - 1)
    m = (a - low.reshape(shape)) / span.reshape(shape)
    if cells > 1:
        m = m.repeat_interleave(cells, dim=-2).repeat_interleave(cells, dim=-1)[..., :height, :width]
    return m


def invert(model_patcher, latent: torch.Tensor, conditioning, sigmas: torch.Tensor, alpha: float = ALPHA,
           rule: str = AUTO, guidance: float = GUIDANCE, mask: torch.Tensor | None = None) -> Inversion:
    """Uni-Inv of `latent` (user space) over the first k of the N steps of `sigmas` (descending to 0)."""
    rule = rule_for(model_patcher, rule)
    steps = len(sigmas) - 1
    k = delayed_steps(rule, alpha, steps)

    def walk(velocity, x, levels, keep):
        ascending = levels[::-1][: k + 1]
        v = None
        for a, a_next in zip(ascending[:-1], ascending[1:]):
            if v is None:
                v = velocity(x, a)  # at a_0 = 0: the raw velocity (calls.with_raw_velocity)
            v = velocity(x + (a_next - a) * v, a_next)
            x = x + (a_next - a) * v
            keep(a_next, x)
        return x
    return run_inversion(model_patcher, latent, conditioning, sigmas, sigmas[steps - k:], METHOD, walk, guidance, mask,
                         rule)


def sample_uniedit(model, x, sigmas, extra_args=None, callback=None, disable=None, inversion=None, omega=OMEGA):
    """Uni-Edit as a k-diffusion style sampler function (comfy.samplers.KSAMPLER), from a Uni-Inv inversion,
    with a PnP Edit Guider (source and target prompts)."""
    extra_args = extra_args or {}
    check_edit_guider(model, METHOD)
    x = inversion.check_run(model, sigmas, x, "UniEdit Sampler (PnP)")
    velocity = sampler_velocity(model, extra_args)
    rule, cells = RULES[inversion.rule], families.family_of(model.inner_model.model_patcher, METHOD).packed_cells
    levels = sigmas.tolist()
    region = EditMask(denoise_mask(extra_args, inversion.mask), x, model, sigmas, extra_args)
    source = inversion.source.to(x).expand_as(x)
    for i in trange(len(levels) - 1, disable=disable):
        sigma, sigma_next = levels[i], levels[i + 1]
        if region:
            x = region.hold(x, inversion.at(sigma).to(x).expand_as(x), sigma)
        v_src, v_tar = velocity(x, sigma, "source"), velocity(x, sigma, "target")
        d = v_tar - v_src
        m = fusion_mask(d, rule, cells)
        v = m * v_tar + (1 - m) * v_src + omega * (1 + m) * d
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": x - sigma * v})
        x = x + (sigma_next - sigma) * v
    return region.composite(x, source)


sample_uniedit.official_scales = lambda model_patcher: (GUIDANCE, GUIDANCE)  # guidance 1, no CFG (both codes)


def sampler(inversion: Inversion, omega: float = OMEGA):
    """Uni-Edit as a ComfyUI SAMPLER (SamplerCustomAdvanced with the inversion's noise and sigmas)."""
    if inversion.method != METHOD:
        raise PnPError(f"UniEdit Sampler (PnP) edits from a Uni-Inv inversion, and this one is {inversion.method}'s: "
                       f"invert with PnP Uni-Inv Inversion.")
    check_number(omega, "omega", 0.0)
    return comfy.samplers.KSAMPLER(sample_uniedit, extra_options={"inversion": inversion, "omega": omega})


def official_sigmas(model_patcher, steps: int, latent_shape) -> torch.Tensor:
    """UniEdit-Flow's schedule for this model (steps at AUTO: the official count)."""
    family = families.family_of(model_patcher, METHOD)
    return edit_sigmas(model_patcher, official_kind(SCHEDULES, family), chosen(steps, STEPS), latent_shape)


def edit(model_patcher, latent: dict, inversion_prompt, source, target, negative=None, steps: int = AUTO_VALUE,
         alpha: float = ALPHA, omega: float = OMEGA, scale: float = AUTO_VALUE, rule: str = AUTO,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    """UniEdit-Flow of the source `latent` (a LATENT): Uni-Inv with `inversion_prompt` (officially the empty
    prompt), then Uni-Edit from the `source` prompt to the `target` prompt, both prompts at `scale` (official:
    guidance 1, no classifier-free guidance). Returns a LATENT's samples."""
    samples = source_samples(model_patcher, latent)
    sigmas = official_sigmas(model_patcher, steps, samples.shape)
    scale = chosen(scale, GUIDANCE)
    guider = EditGuider(model_patcher, source, target, negative, scale, scale)
    rows = max(guider.rows, samples.shape[0])
    region = edit_mask(mask, latent, samples.shape, rows)
    inversion = invert(model_patcher, samples, inversion_prompt, sigmas, alpha, rule, GUIDANCE)
    return run(guider, samples, sampler(inversion, omega), inversion.sigmas, InvertedNoise(inversion).generate_noise(
        {"samples": samples}), mask=region)
