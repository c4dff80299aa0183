"""Running our own loops of U-Net evaluations through ComfyUI's sampling machinery.

Going through a guider (rather than calling the U-Net by hand) keeps everything a ComfyUI
user expects: model loading and offloading, conditioning processing, ControlNet, hooks,
wrappers, and the host's interrupt and progress handling.
"""
from __future__ import annotations

from typing import Callable

import comfy.model_management
import comfy.samplers
import comfy.utils
import torch

from .errors import PnPError
from .model_calls import patcher_without_step_caches

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma batch) -> denoised

# Sampler-level guidance hooks (PAG, SAG, RescaleCFG and packs built the same way): they act on
# guided sampling, and run extra U-Net passes at the same sigma. Inversion and the source pass
# are unguided evaluations of the network, so they never run.
GUIDANCE_HOOKS = ("sampler_cfg_function", "sampler_pre_cfg_function", "sampler_post_cfg_function",
                  "disable_cfg1_optimization")


def unguided(model_patcher):
    """A clone without sampler-level guidance hooks and without step caches. Everything else that
    changes the network function (weights such as LoRA, block patches such as FreeU, wrappers) stays."""
    clone = patcher_without_step_caches(model_patcher, "while PnP inverts or records the source, as each of "
                                                       "these calls is kept")
    for key in GUIDANCE_HOOKS:
        clone.model_options.pop(key, None)
    return clone


def run_loop(model_patcher, conditioning, latent: torch.Tensor, sigmas: torch.Tensor,
             loop: Callable[[ModelFn, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Evaluate `loop(model, x, sigmas)` with `conditioning` at cfg 1 (one cond chunk), unguided.

    `latent` is in the user's latent space (as VAE Encode gives it); `loop` gets it in the
    model's internal space and returns a latent in that space, which comes back converted.
    `model(x, sigma, **entries)` puts `entries` into that call's transformer_options.
    """
    def sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return loop(model_call(model, extra_args or {}), x, sigmas)

    guider = comfy.samplers.CFGGuider(unguided(model_patcher))
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)  # no guidance: the official inversion and source pass use none
    return sample(guider, latent, comfy.samplers.KSAMPLER(sampler_function), sigmas, bar=False)


def model_call(model, extra_args: dict) -> Callable[..., torch.Tensor]:
    """A sampler function's model as `call(x, sigma, **entries)`, `entries` added to the call's
    transformer_options (how a loop tells its own wrappers about one call, as the host's options do)."""
    def call(x, sigma, **entries):
        if not entries:
            return model(x, sigma, **extra_args)
        options = dict(extra_args.get("model_options", {}))
        options["transformer_options"] = {**options.get("transformer_options", {}), **entries}
        return model(x, sigma, **{**extra_args, "model_options": options})
    return call


def sampler(name: str):
    """ComfyUI's sampler of that name, or a clear error."""
    if name not in comfy.samplers.SAMPLER_NAMES:
        raise PnPError(f"Unknown sampler {name!r}; choose one of {comfy.samplers.SAMPLER_NAMES}.")
    return comfy.samplers.sampler_object(name)


def sample(guider, latent: torch.Tensor, sampler, sigmas: torch.Tensor, noise: torch.Tensor | None = None,
           callback=None, seed: int = 0, bar: bool = True, denoise_mask: torch.Tensor | None = None) -> torch.Tensor:
    """`guider.sample` without autograd; no noise by default (sampling starts at `latent`).
    The result sits where ComfyUI's core samplers put theirs (the intermediate device)."""
    noise = torch.zeros_like(latent) if noise is None else noise
    with torch.no_grad():
        out = guider.sample(noise, latent, sampler, sigmas, denoise_mask=denoise_mask, callback=callback,
                            disable_pbar=not (bar and comfy.utils.PROGRESS_BAR_ENABLED), seed=seed)
    return out.to(comfy.model_management.intermediate_device())


class Progress:
    """A ComfyUI progress bar that also stops promptly on interrupt."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)

    def step(self) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.bar.update(1)
