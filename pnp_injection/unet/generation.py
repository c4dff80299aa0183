"""Generated sources: sample the source from noise and record its path as the trajectory,
so the capture reads the exact generation path (no inversion error)."""
from __future__ import annotations

import comfy.sample
import comfy.samplers
import latent_preview
import torch

from .. import passes, schedule
from ..errors import PnPError
from ..inputs import check_finite, check_latent
from .inversion import Trajectory
from .families import family_of


def generate(model_patcher, latent: torch.Tensor, positive, negative, cfg: float = 7.5, seed: int = 0,
             steps: int = 50, scheduler: str = "ddim_uniform", sampler_name: str = "ddim"):
    """Sample `positive` from seeded noise; returns (trajectory, final latent in user space).

    x(sigma_i) is recorded at each step before the sampler moves on, in the model's space;
    the source pass later uses the generation prompt.
    """
    family = family_of(model_patcher)
    check_finite(cfg=cfg)
    check_latent(latent)
    chosen = passes.sampler(sampler_name)
    sigmas = schedule.sampling_sigmas(model_patcher.get_model_object("model_sampling"), scheduler, steps)
    recorded: dict[int, torch.Tensor] = {}
    preview = latent_preview.prepare_callback(model_patcher, len(sigmas) - 1)

    def callback(step, denoised, x, total):
        recorded.setdefault(step, x.detach().float().cpu().clone())
        preview(step, denoised, x, total)

    guider = comfy.samplers.CFGGuider(model_patcher)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    samples = passes.sample(guider, latent, chosen, sigmas, noise=comfy.sample.prepare_noise(latent, seed),
                            callback=callback, seed=seed)
    if sorted(recorded) != list(range(len(sigmas) - 1)):
        raise PnPError(f"The sampler {sampler_name!r} did not report every step; use ddim or euler.")
    latents = torch.stack([recorded[i] for i in range(len(sigmas) - 1)])
    source = model_patcher.model.process_latent_in(samples.float()).cpu()
    trajectory = Trajectory(sigmas=sigmas, latents=latents, conditioning=positive, family=family, source=source)
    return trajectory, samples
