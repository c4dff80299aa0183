"""FlowEdit (Kulikov, Kleiner, Huberman-Spiegelglas, Michaeli; ICCV 2025): inversion-free editing.

Official code: fallenshock/FlowEdit at 457f402, FlowEdit_utils.py `FlowEditFLUX` (lines 231-402) and
`FlowEditSD3` (lines 111-227). With N steps on sigmas sigma_0 > ... > sigma_N = 0, the edit starts from the
source, z = x_src, and skips the steps i with N - i > n_max (lines 324-325). Each later step with
N - i > n_min (line 334) draws fresh noise n and moves
    z_src = (1 - sigma_i) x_src + sigma_i n,      z_tar = z + z_src - x_src         (lines 342-346)
    z <- z + (sigma_{i+1} - sigma_i) * mean over n_avg draws of (v_tar(z_tar) - v_src(z_src))   (349-372)
with the source prompt at its guidance and the target prompt at its own. The last n_min steps sample the
target plainly (SDEdit) from x_tar = z + (sigma_i n' + (1 - sigma_i) x_src) - x_src, one fresh n' at the
switch (lines 376-399). FlowEditSD3's tail is FlowEditFLUX's: the SD3 one reads an undefined name for
n_min > 0 (line 223).

Defaults: FLUX_exp.yaml (28 steps, n_max 24, n_min 0, n_avg 1, source guidance 1.5, target guidance 5.5) and
SD3_exp.yaml (50 steps, n_max 33, n_min 0, n_avg 1, CFG 3.5 and 13.5 with the empty negative prompt,
run_script.py line 74). Model evaluations per edit: 2 * n_avg per edited step (n_max - n_min steps), plus one
per SDEdit step; with CFG each is a cond/uncond pair.

The per-step noise is the NOISE input's (SamplerCustomAdvanced: the noise the NOISE node made for the latent)
at the first draw, then further draws of the same seed's generator, in the official order (step by step,
n_avg draws per step, one more at the n_min switch), one per source image, shared by a batch of prompts.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import comfy.sample
import comfy.samplers
import torch
from tqdm.auto import trange

from ..errors import PnPError
from . import families
from .calls import sampler_velocity
from .guider import EditGuider, check_edit_guider, source_rows
from .masks import EditMask, denoise_mask
from .sampling import AUTO, chosen, edit_mask, run, source_samples
from .schedule import edit_sigmas, official_kind

METHOD = "FlowEdit"


@dataclass(frozen=True)
class Settings:
    """FlowEdit's knobs (FLUX_exp.yaml and SD3_exp.yaml, lines 6-11 of each)."""
    steps: int
    n_max: int
    source_scale: float
    target_scale: float
    n_min: int = 0
    n_avg: int = 1


FLUX = Settings(steps=28, n_max=24, source_scale=1.5, target_scale=5.5)    # FLUX_exp.yaml lines 6-11
SD3 = Settings(steps=50, n_max=33, source_scale=3.5, target_scale=13.5)    # SD3_exp.yaml lines 6-11
SCHEDULES = {"flux1": "flux", "flux1_schnell": "linear", "sd3": "shift3"}


def official(model_patcher) -> Settings:
    """The official settings for this model: FLUX_exp.yaml's on guidance-distilled models (Flux.1 dev, and by
    analogy Flux.2 and HunyuanVideo), on Flux.1 schnell without guidance (FlowEditFLUX passes none to a model
    without a guidance embedding, lines 310-317), SD3_exp.yaml's elsewhere (by analogy on every model with
    classifier-free guidance but SD3)."""
    family = families.family_of(model_patcher, METHOD)
    if families.guidance_distilled(model_patcher):
        return FLUX
    if family is families.FLUX1_SCHNELL:
        return replace(FLUX, source_scale=1.0, target_scale=1.0)
    return SD3


def official_n_max(model_patcher, steps: int) -> int:
    """n_max for `steps` steps: the official one at the official step count, in proportion at others."""
    settings = official(model_patcher)
    return settings.n_max if steps == settings.steps else max(1, round(settings.n_max * steps / settings.steps))


def check_settings(steps: int, n_max: int, n_min: int, n_avg: int) -> None:
    if n_avg < 1:
        raise PnPError(f"`n_avg` is {n_avg}: FlowEdit averages at least 1 noise draw per step; give 1 or more.")
    if not 0 <= n_min <= n_max:
        raise PnPError(f"`n_min` is {n_min} and `n_max` {n_max}: FlowEdit edits the steps from n_max down to n_min and "
                       f"samples the last n_min plainly; give 0 <= n_min <= n_max.")
    if n_max > steps:
        raise PnPError(f"`n_max` is {n_max} but the schedule has {steps} steps: give at most {steps} (n_max counts the "
                       f"edited steps from the end of the schedule).")


class Draws:
    """FlowEdit's per-step noise, one draw per call: the NOISE input's noise first, then draws of the same
    seed's generator (Random Noise draws the first from it), one per source row."""

    def __init__(self, first: torch.Tensor, seed: int | None, source_rows: int, like: torch.Tensor):
        if not bool(first.abs().amax() > 0):
            raise PnPError("FlowEdit noises the source at every step, and the noise given is zero (Disable Noise): "
                           "connect Random Noise to SamplerCustomAdvanced's `noise`.")
        self.first, self.like = first[:source_rows], like
        self.generator = torch.Generator().manual_seed(int(seed or 0))
        torch.randn(self.first.shape, generator=self.generator)  # the draw Random Noise made

    def __call__(self) -> torch.Tensor:
        if self.first is not None:
            n, self.shape, self.first = self.first, self.first.shape, None
        else:
            n = torch.randn(self.shape, generator=self.generator)
        return n.to(self.like).expand_as(self.like)  # a source row's draw serves each of its prompts


def sample_flowedit(model, x, sigmas, extra_args=None, callback=None, disable=None, n_max=24, n_min=0, n_avg=1):
    """FlowEdit as a k-diffusion style sampler function (comfy.samplers.KSAMPLER): the source is the latent
    image given to the sampler, the guider a PnP Edit Guider."""
    extra_args = extra_args or {}
    check_edit_guider(model, METHOD)
    steps = len(sigmas) - 1
    n_max = official_n_max(model.inner_model.model_patcher, steps) if n_max == AUTO else n_max
    check_settings(steps, n_max, n_min, n_avg)
    velocity = sampler_velocity(model, extra_args)
    levels = sigmas.tolist()  # one host sync for the run, none per call
    x_src = model.latent_image.to(x).expand_as(x)
    draw = Draws(model.noise, extra_args.get("seed"), source_rows(extra_args, x.shape[0]), x)
    region = EditMask(denoise_mask(extra_args), x, model, sigmas, extra_args)
    z, x_tar = x_src.clone(), None
    for i in trange(steps, disable=disable):
        if steps - i > n_max:
            continue
        sigma, sigma_next = levels[i], levels[i + 1]
        if steps - i > n_min:
            delta = torch.zeros_like(z)
            for _ in range(n_avg):
                z_src = (1 - sigma) * x_src + sigma * draw()
                delta += (velocity(z + z_src - x_src, sigma, "target") - velocity(z_src, sigma, "source")) / n_avg
            if region:  # outside the mask z stays the source
                delta = delta * region.support(sigma)
            z = z + (sigma_next - sigma) * delta
            shown = z
        else:
            if x_tar is None:  # the switch to plain sampling of the target (SDEdit), from one more draw
                noised = sigma * draw() + (1 - sigma) * x_src
                x_tar, line = z + noised - x_src, noised - x_src  # outside the mask: the source noised by that draw
            x_tar = region.hold(x_tar, x_src + line * (sigma / levels[steps - n_min]), sigma)
            v = velocity(x_tar, sigma, "target")
            shown = x_tar - sigma * v
            x_tar = x_tar + (sigma_next - sigma) * v
        if callback is not None:
            callback({"x": shown, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": shown})
    return region.composite(z if x_tar is None else x_tar, x_src)


sample_flowedit.official_scales = lambda model_patcher: (official(model_patcher).source_scale,
                                                         official(model_patcher).target_scale)


def sampler(n_max: int = AUTO, n_min: int = 0, n_avg: int = 1):
    """FlowEdit as a ComfyUI SAMPLER (for SamplerCustomAdvanced with a PnP Edit Guider)."""
    return comfy.samplers.KSAMPLER(sample_flowedit, extra_options={"n_max": n_max, "n_min": n_min, "n_avg": n_avg})


def official_sigmas(model_patcher, steps: int, latent_shape) -> torch.Tensor:
    """FlowEdit's schedule for this model (steps at AUTO: the official count)."""
    family = families.family_of(model_patcher, METHOD)
    return edit_sigmas(model_patcher, official_kind(SCHEDULES, family), chosen(steps, official(model_patcher).steps),
                       latent_shape)


def edit(model_patcher, latent: dict, source, target, negative=None, steps: int = AUTO, n_max: int = AUTO,
         n_min: int = 0, n_avg: int = 1, source_scale: float = AUTO, target_scale: float = AUTO, seed: int = 0,
         mask: torch.Tensor | None = None) -> torch.Tensor:
    """FlowEdit of the source `latent` (a LATENT) from the `source` prompt to the `target` prompt, on the method's
    official schedule for this model; knobs left at AUTO take the official values. Returns a LATENT's samples."""
    samples = source_samples(model_patcher, latent)
    sigmas = official_sigmas(model_patcher, steps, samples.shape)
    guider = EditGuider(model_patcher, source, target, negative, source_scale, target_scale)
    noise = comfy.sample.prepare_noise(samples, seed)
    region = edit_mask(mask, latent, samples.shape, max(guider.rows, samples.shape[0]))
    return run(guider, samples, sampler(n_max, n_min, n_avg), sigmas, noise, seed, region)
