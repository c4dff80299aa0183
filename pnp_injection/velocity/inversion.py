"""What a velocity edit keeps of an inversion (Uni-Inv, RF-Inversion's controlled forward ODE): the inverted
latent, the sigmas the edit samples from it, the source, and the inverted path for regional edits. A few
latents: no features, no bank.

On the SamplerCustomAdvanced route the inversion node gives three things: the inversion (for the edit
sampler), the edit's sigmas, and a NOISE (`InvertedNoise`) such that the sampler's first latent,
sigma_0 * noise + (1 - sigma_0) * latent_image, is the inverted latent whatever latent image is given; the
edit samplers check all three agree before any model work.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import comfy.model_management
import torch

from ..errors import PnPError
from ..inputs import check_finite
from ..passes import Progress, run_loop
from ..schedule import SIGMA_RTOL
from . import families
from .calls import Velocity, velocities, with_raw_velocity
from .masks import check_mask


@dataclass(frozen=True, eq=False)
class Inversion:
    method: str                 # the edit it serves: "UniEdit-Flow" or "RF-Inversion"
    latent: torch.Tensor        # the inverted latent (model space), where the edit starts
    sigmas: torch.Tensor        # the edit's sigmas, from the inverted latent's level down to 0
    source: torch.Tensor        # the source latent (model space)
    levels: torch.Tensor        # the kept path's noise levels, ascending from 0 (the source)
    path: torch.Tensor          # the latent at each level: [levels, B, ...]
    architecture: str           # families.signature of the model it was made with
    latent_format: object       # that model's latent format (the NOISE needs its process_in)
    mask: torch.Tensor | None = None   # the source latent's noise_mask, if it carried one
    rule: str = ""              # UniEdit-Flow's mask rule (uniedit.RULES)

    def __deepcopy__(self, memo):  # immutable: clones of a graph's outputs never duplicate its tensors
        return self

    def at(self, sigma: float) -> torch.Tensor:
        """The inverted path at noise level `sigma`: a kept level, or linear between its two neighbours."""
        levels = self.levels.tolist()
        j = next((i for i, level in enumerate(levels) if level >= sigma * (1 - SIGMA_RTOL)), len(levels) - 1)
        if j == 0 or abs(levels[j] - sigma) <= SIGMA_RTOL * max(sigma, 1e-12):
            return self.path[j]
        w = (sigma - levels[j - 1]) / (levels[j] - levels[j - 1])
        return torch.lerp(self.path[j - 1], self.path[j], w)

    def check_run(self, model, sigmas: torch.Tensor, x: torch.Tensor, sampler: str) -> torch.Tensor:
        """Before any model work: the run is this inversion's (model, sigmas, noise); returns its first latent."""
        guider = model.inner_model
        here = families.signature(guider.model_patcher)
        if here != self.architecture:
            raise PnPError(f"This inversion was made with another model ({self.architecture}), not this one ({here}): "
                           f"invert with the model {sampler} samples.")
        given = sigmas.detach().float().cpu()
        if given.shape != self.sigmas.shape or not torch.allclose(given, self.sigmas, rtol=SIGMA_RTOL, atol=1e-6):
            shown = ", ".join(f"{s:.4f}" for s in given[:4].tolist())
            want = ", ".join(f"{s:.4f}" for s in self.sigmas[:4].tolist())
            raise PnPError(f"The sigmas given to SamplerCustomAdvanced ({shown}, ...) are not the {self.method} "
                           f"inversion's ({want}, ...): connect the inversion node's `sigmas` output.")
        start = self.latent.to(x).expand_as(x)
        if not torch.allclose(x, start, rtol=1e-3, atol=1e-4):
            raise PnPError(f"SamplerCustomAdvanced's noise is not the {self.method} inversion's: connect the inversion "
                           f"node's `noise` output (the sampler starts from the inverted latent).")
        return start


class InvertedNoise:
    """A ComfyUI NOISE that makes the sampler start at the inverted latent z: for the latent image L given to
    the sampler (in the model's space), (z - (1 - sigma_0) L) / sigma_0."""

    def __init__(self, inversion: Inversion):
        self.inversion, self.seed = inversion, 0

    def generate_noise(self, input_latent) -> torch.Tensor:
        samples, z = input_latent["samples"], self.inversion.latent
        if tuple(samples.shape[1:]) != tuple(z.shape[1:]) or samples.shape[0] % z.shape[0]:
            raise PnPError(f"SamplerCustomAdvanced's latent_image has shape {tuple(samples.shape)} but the "
                           f"{self.inversion.method} inversion's latent {tuple(z.shape)}: give it the source latent.")
        # as the guider does (comfy/samplers.py CFGGuider.inner_sample): an all-zero latent is not shifted
        image = self.inversion.latent_format.process_in(samples) if torch.count_nonzero(samples) else samples
        sigma = float(self.inversion.sigmas[0])
        z = z.expand(samples.shape[0], *z.shape[1:])
        return ((z - (1 - sigma) * image.to(z)) / sigma).float().cpu()


def invert(model_patcher, latent: torch.Tensor, conditioning, schedule: torch.Tensor, edit_sigmas: torch.Tensor,
           method: str, walk: Callable[[Velocity, torch.Tensor, list, Callable], torch.Tensor], guidance: float,
           mask: torch.Tensor | None = None, rule: str = "") -> Inversion:
    """Invert `latent` (user space) with `walk(velocity, x, schedule as a list, keep)`, from the source, with the
    inversion prompt `conditioning`, unguided, at embedded `guidance` on guidance-distilled models; `keep(level,
    x)` records the path after each step. The edit then samples `edit_sigmas` from the result."""
    families.family_of(model_patcher, method)
    check_source(model_patcher, latent)
    check_finite(guidance=guidance)
    if mask is not None:  # the source latent's noise_mask: checked now, used by the edit
        check_mask(mask, latent.shape, latent.shape[0])
    if families.guidance_distilled(model_patcher):
        conditioning = [[c, {**extras, "guidance": guidance}] for c, extras in conditioning]
    levels, path, result = [], [], []
    progress = Progress(len(edit_sigmas) - 1)
    started = time.perf_counter()

    def keep(level: float, x: torch.Tensor) -> None:
        levels.append(level)
        path.append(x.to(comfy.model_management.intermediate_device(), copy=True))
        if len(levels) > 1:
            progress.step()

    def loop(call, x, ascending):
        keep(0.0, x)
        result.append(walk(velocities(call), x, schedule.tolist(), keep))
        return torch.zeros_like(x)  # ComfyUI divides a flow sampler's result by 1 - its last sigma: unused

    source = model_patcher.model.process_latent_in(latent.float())
    run_loop(with_raw_velocity(model_patcher), conditioning, latent, schedule.flip(0), loop)
    logging.info(f"PnP {method}: inverted {len(levels) - 1} steps in {time.perf_counter() - started:.1f} s")
    return Inversion(method=method, latent=result[0].to(comfy.model_management.intermediate_device()),
                     sigmas=edit_sigmas.float().cpu(), source=source.to(comfy.model_management.intermediate_device()),
                     levels=torch.tensor(levels, dtype=torch.float64), path=torch.stack(path),
                     architecture=families.signature(model_patcher), latent_format=model_patcher.model.latent_format,
                     mask=mask, rule=rule)


def check_source(model_patcher, latent: torch.Tensor) -> None:
    """A source latent of the model's channels, finite, image or video."""
    if latent.ndim not in (4, 5) or latent.numel() == 0:
        raise PnPError(f"The source latent has shape {tuple(latent.shape)}; an edit needs an image latent [batch, "
                       f"channels, height, width] or a video latent [batch, channels, frames, height, width]: connect "
                       f"VAE Encode of the source.")
    channels = model_patcher.model.latent_format.latent_channels
    if latent.shape[1] != channels:
        raise PnPError(f"The source latent has {latent.shape[1]} channels but this model's latents have {channels}: "
                       f"encode the source with this model's VAE.")
    if not torch.isfinite(latent).all():
        raise PnPError("The source latent contains NaN or infinite values: re-encode the source.")
