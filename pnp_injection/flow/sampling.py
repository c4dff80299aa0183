"""Sampling the Flux target from the inverted latent, with injection (PnP Flux/Chroma/HunyuanVideo Sampler), and
the inverted latent as ComfyUI NOISE (for SamplerCustomAdvanced).

ComfyUI's flow samplers start from sigma_0 * noise + (1 - sigma_0) * latent_image; at
sigma_0 = 1 the latent image is multiplied by 0, so the inverted latent must enter as the
noise, never as the latent.
"""
from __future__ import annotations

import comfy.model_management
import comfy.samplers
import latent_preview
import torch

from .. import passes
from ..model_calls import target_rows
from ..inputs import check_finite, check_whole_latent
from . import official, solvers
from .bank import FeatureBank
from .inversion import guided
from .patches import apply_injection


class InvertedNoise:
    """A ComfyUI NOISE whose noise is the bank's inverted latent (model space, as noise is)."""

    def __init__(self, bank: FeatureBank):
        self.bank = bank
        self.seed = 0

    def generate_noise(self, input_latent) -> torch.Tensor:
        samples = input_latent["samples"]
        self.bank.check_latent(samples.shape)
        return self.bank.noise_for(samples.shape[0]).to(device="cpu", dtype=torch.float32)


def check_prompt(bank: FeatureBank, conditioning) -> None:
    for context, extras in conditioning:
        bank.check_text(context.shape[1], extras.get("attention_mask"))


def pnp_sample(model_patcher, bank: FeatureBank, positive, guidance: float = official.AUTO,
               inject: int = official.AUTO, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sample the target prompt from the bank's inverted latent on the bank's schedule with
    the bank's solver, Flux guidance `guidance` (no classifier-free guidance, as the official
    code), injecting the first `inject` steps. AUTO takes the official guidance of the bank's
    method on its family (official.py) and injects every step the bank kept. A batch of prompts
    gives one latent per prompt. With a mask (or the source's noise_mask) the edit is regional
    (`region`). Returns a LATENT's samples."""
    guidance = official.guidance(guidance, bank.family, bank.solver)
    check_finite(guidance=guidance)
    check_whole_latent(positive, "The target prompt (PnP Flux/Chroma/HunyuanVideo Sampler's `positive`)")
    inject = bank.check_injection(model_patcher, inject)
    patched = apply_injection(model_patcher, bank, inject, mask)
    if inject:
        check_prompt(bank, positive)
    noise = bank.noise_for(target_rows(bank.noise.shape[0], positive))
    conditioning = guided(model_patcher, positive, guidance)
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)
    preview = latent_preview.prepare_callback(patched, bank.steps)

    def callback(step, x0, x, total):
        comfy.model_management.throw_exception_if_processing_interrupted()
        preview(step, x0, x, total)

    latent = torch.zeros_like(noise)  # multiplied by 1 - sigma_0 = 0
    return passes.sample(guider, latent, solvers.sampler_for(bank.solver), bank.sigmas, noise=noise,
                         callback=callback)
