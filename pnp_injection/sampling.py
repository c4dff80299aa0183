"""Sampling the target with injection: the one-call path behind the PnP Sampler node."""
from __future__ import annotations

import torch

from .bank import FeatureBank
from .inversion import to_user_latent
from .patches import apply_injection


def start_latent(model_patcher, bank: FeatureBank) -> dict:
    """The bank's x(sigma_0) as a LATENT: sample it with noise disabled on the bank's schedule."""
    return {"samples": to_user_latent(model_patcher, bank.start)}


def pnp_sample(model_patcher, bank: FeatureBank, positive, negative, cfg: float = 7.5,
               feature_injection: float = 0.8, attention_injection: float = 0.5,
               sampler_name: str = "ddim") -> torch.Tensor:
    """Sample the target prompt from the bank's start latent on the bank's schedule."""
    import comfy.samplers
    import comfy.utils
    import latent_preview

    from .errors import PnPError

    if sampler_name not in comfy.samplers.SAMPLER_NAMES:
        raise PnPError(f"Unknown sampler {sampler_name!r}; choose one of {comfy.samplers.SAMPLER_NAMES}.")
    patched = apply_injection(model_patcher, bank, feature_injection, attention_injection)
    latent = start_latent(model_patcher, bank)["samples"]
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    callback = latent_preview.prepare_callback(patched, bank.steps)
    with torch.no_grad():
        return guider.sample(torch.zeros_like(latent), latent, comfy.samplers.sampler_object(sampler_name),
                             bank.sigmas, callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
                             seed=0)
