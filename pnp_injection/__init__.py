"""Plug-and-Play diffusion features (Tumanyan et al., CVPR 2023) on ComfyUI models.

The engine, usable without the node layer. Its top level is the shared core: errors, input
checks, schedules and sigma keys, bank placement and streaming, bank-file I/O and integrity,
model-call plumbing, layer-text parsing and the sampling passes. One sub-package per model family (a
wing) builds on it; a wing imports the core and itself, never another wing, and the core
imports no wing:

- `unet` (SD 1.x, SD 2.x, SDXL: the paper's method)
    trajectory = unet.inversion.invert(model, latent, conditioning, steps, evaluations, scheduler)
    bank = unet.bank.capture(model, trajectory, feature_steps, attention_steps, preset)
    samples = unet.sampling.pnp_sample(model, bank, positive, negative, cfg, ...)
- `flow` (rectified-flow transformers: Flux.1, Chroma, Flux.2, HunyuanVideo; RF-Solver-Edit, FireFlow, KV-Edit)
    bank = flow.inversion.invert(model, latent, conditioning, steps, keep_steps, ...)
    samples = flow.sampling.pnp_sample(model, bank, positive, guidance, inject)
"""
from .errors import PnPError  # noqa: F401
