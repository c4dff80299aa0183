"""Plug-and-Play diffusion features (Tumanyan et al., CVPR 2023) on ComfyUI models.

The engine, usable without the node layer:
    trajectory = inversion.invert(model, latent, conditioning, steps, evaluations, scheduler)
    bank = bank.capture(model, trajectory, feature_steps, attention_steps, preset)
    patched = patches.apply_injection(model, bank, feature_injection, attention_injection)
    samples = sampling.pnp_sample(model, bank, positive, negative, cfg, ...)
"""
from . import bank, bank_file, errors, generation, guidance, inversion, layers, patches, passes, preview, sampling, schedule  # noqa: F401
from .errors import PnPError  # noqa: F401
