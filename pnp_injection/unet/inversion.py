"""Deterministic DDIM inversion of the source latent (docs/pnp.md, section 2)."""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass

import torch

from .. import placement, region
from ..inputs import check_latent, check_whole_latent
from ..model_calls import HOST_SIGMA
from ..passes import Progress, run_loop
from ..schedule import sampling_sigmas
from . import families
from .patches import without_pnp
from .schedule import check_inversion_steps, inversion_sigmas


@dataclass(frozen=True, eq=False)
class Trajectory:
    """The source's inversion path at every sampling sigma, in the model's latent space."""

    sigmas: torch.Tensor          # (N+1,) sampling schedule, descending, ends at 0
    latents: torch.Tensor         # (N, B, C, H, W): x(sigma_i), i = 0..N-1
    conditioning: list            # the inversion prompt, reused for the source pass
    family: str                   # layer-table family of the model it was made with
    source: torch.Tensor | None = None   # x(sigma_N = 0): the source latent, the path's end
    mask: torch.Tensor | None = None     # the source latent's noise_mask (Set Latent Noise Mask), if any

    @property
    def path(self) -> torch.Tensor | None:
        """x at every sampling sigma, sigma_0 ... sigma_N = 0: [N+1, B, C, H, W]."""
        if self.source is None:
            return None
        return torch.cat([self.latents, self.source.to(self.latents)[None]])

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def __deepcopy__(self, memo):  # immutable: never duplicate its tensors
        return self


def invert(model_patcher, latent: torch.Tensor, conditioning, steps: int = 50,
           evaluations: int = 999, scheduler: str = "ddim_uniform", mask: torch.Tensor | None = None) -> Trajectory:
    """DDIM-invert `latent` (user latent space) with `conditioning` and no guidance.

    One step from fine sigma a to the next b evaluates the model at the *higher* level b on
    the input whose VP value is x_vp(a), takes eps from its denoised output (eps and v
    models alike), and moves x(b) = x(a) + (sigma_b - sigma_a) * eps.
    """
    family = families.family_of(model_patcher)  # DiT/flow models stop here, before any work
    check_latent(latent)
    if mask is not None:  # the source latent's noise_mask: checked now, used when sampling
        region.check_mask(mask, latent.shape, latent.shape[0])
    check_whole_latent(conditioning, "The inversion prompt (PnP DDIM Inversion's `conditioning`)")
    model_sampling = model_patcher.get_model_object("model_sampling")
    sigmas = sampling_sigmas(model_sampling, scheduler, steps)
    check_inversion_steps(evaluations, steps)
    # Some schedulers return more points than asked (ddim_uniform when 1000 % steps != 0).
    fine, record = inversion_sigmas(model_sampling, sigmas, max(evaluations, len(sigmas) - 1))
    sigma_data = float(model_sampling.sigma_data)
    progress = Progress(len(fine) - 1)
    count = len(sigmas) - 1
    latents = placement.allocate((count, *latent.shape), torch.float32, placement.storage_device())
    written = 0

    def keep_latent(x, times: int) -> None:  # x(sigma_i) in sampling order: sigma_0 first, filled from the end
        nonlocal written
        for _ in range(times):
            written += 1
            latents[count - written].copy_(x)

    def vp_scale(sigma):  # x_vp = x_k * vp_scale(sigma)
        return sigma_data / (sigma ** 2 + sigma_data ** 2) ** 0.5

    def loop(model, x, fine_sigmas):
        # The encoded latent is x_vp at timestep 0; move to k-space at that level.
        fine_sigmas = fine_sigmas.float().tolist()  # one read of the device
        x = x / vp_scale(fine_sigmas[0])
        marks = Counter(record)  # a sampling sigma at timestep 0 is recorded at the start
        keep_latent(x, marks[0])
        ones = x.new_ones(x.shape[0])
        for j in range(len(fine_sigmas) - 1):
            a, b = fine_sigmas[j], fine_sigmas[j + 1]
            x_in = x * (vp_scale(a) / vp_scale(b))   # VP value x_vp(a), read at level b
            eps = (x_in - model(x_in, b * ones, **{HOST_SIGMA: b})) / b
            x = x + (b - a) * eps
            keep_latent(x, marks[j + 1])
            progress.step()
        return x

    started = time.perf_counter()
    run_loop(without_pnp(model_patcher), conditioning, latent, fine, loop)
    logging.info(f"PnP DDIM Inversion: trajectory {placement.summary([latents])}, {len(fine) - 1} evaluations "
                 f"in {time.perf_counter() - started:.1f} s")
    source = placement.keep(model_patcher.model.process_latent_in(latent.float()))
    return Trajectory(sigmas=sigmas, latents=latents, conditioning=conditioning, family=family, source=source,
                      mask=mask)


def to_user_latent(model_patcher, x: torch.Tensor) -> torch.Tensor:
    """A latent of the model's internal space as LATENT outputs carry it."""
    return model_patcher.model.process_latent_out(x.float())
