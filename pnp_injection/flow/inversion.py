"""Inversion of a Flux source with RF-Solver or FireFlow, keeping the source's features on the way.

As the official code (RF-Solver-Edit: FLUX_Image_Edit/src/edit.py line 157, src/flux/sampling.py
lines 90-134; FireFlow: src/edit.py line 182, src/flux/sampling.py lines 185-248): the encoded
source sits at sigma 0; the schedule is walked upwards to sigma 1 with the source prompt at Flux
guidance 1, one solver step per sampling step. The features are kept during the inversion
itself (no separate source pass): at the inversion steps whose upper end is one of the first
`keep_steps` sampling sigmas, the evaluations the solver makes there, stored under that upper
end (see bank). The result at sigma 1 is the noise the target is sampled from.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

import comfy.patcher_extension as ext
import torch

from .. import disk, notices, placement, region
from ..errors import PnPError
from ..inputs import VAE_SCALE, check_finite, check_latent, check_whole_latent, pixel_size
from ..model_calls import HOST_SIGMA, without_wrappers
from ..passes import Progress, run_loop
from ..recompute import SourceCalls
from . import layers as flux_layers
from . import schedule as flux_schedule
from . import families, official, solvers, text_padding
from .bank import FeatureBank, estimate_bytes, inversion_slot, slot_count
from .patches import WRAPPER_KEY as INJECTION_KEY
from .patches import Recorder

RECORDER_KEY = "pnp_flux_inversion"


def with_guidance(conditioning, guidance: float):
    """A copy of a CONDITIONING with Flux guidance set (what FluxGuidance does)."""
    return [[c, {**extras, "guidance": guidance}] for c, extras in conditioning]


def guided(model_patcher, conditioning, guidance: float):
    """The conditioning at `guidance` for a guidance-distilled family (Flux.1, Flux.2, HunyuanVideo).
    Chroma is not distilled: its guidance input is the host's default (0), as its pipelines run it, any
    FluxGuidance on the prompt is dropped as the other families' is replaced, and the nodes'
    `guidance` does not apply (logged)."""
    if families.family_of(model_patcher) is families.CHROMA:
        logging.info("PnP Flux: Chroma has no distilled guidance; the `guidance` input is not used on Chroma.")
        return [[c, {k: v for k, v in extras.items() if k != "guidance"}] for c, extras in conditioning]
    return with_guidance(conditioning, guidance)


def check_schedule(sigmas: torch.Tensor) -> None:
    if not (abs(float(sigmas[0]) - 1.0) < 1e-6 and float(sigmas[-1]) == 0.0):
        raise PnPError(f"The schedule runs from {float(sigmas[0]):.4f} to {float(sigmas[-1]):.4f}; the Flux inversion "
                       f"goes from the source (sigma 0) up to pure noise (sigma 1): choose a scheduler that starts at "
                       f"sigma 1 (official, simple, beta or normal).")


def check_source(model_patcher, latent: torch.Tensor) -> None:
    family = families.family_of(model_patcher)
    video = family is families.HUNYUAN_VIDEO
    if video and latent.ndim != 5:
        raise PnPError(f"The source latent has shape {tuple(latent.shape)}; HunyuanVideo edits a video latent [batch, "
                       f"channels, frames, height, width]: VAE Encode the clip's frames with the HunyuanVideo VAE.")
    if not video and latent.ndim == 5:
        raise PnPError(f"The source latent is a video latent {tuple(latent.shape)} but this model edits images: use a "
                       f"HunyuanVideo model for a video, or encode one image.")
    check_latent(latent[:, :, 0] if video else latent)
    if video:
        _check_video_patches(model_patcher, latent)
    if not torch.isfinite(latent).all():
        raise PnPError("The source latent contains NaN or infinite values: re-encode the source.")
    channels = model_patcher.model.latent_format.latent_channels
    if latent.shape[1] != channels:
        vae = "the Flux VAE (VAE Encode with the Flux ae)" if family in (families.FLUX1, families.CHROMA) \
            else f"the {family.label} VAE"
        kind = "Flux" if family is families.FLUX1 else family.label
        raise PnPError(f"The source latent has {latent.shape[1]} channels but this {kind} model's latents have "
                       f"{channels}: encode the source with {vae}.")


def _check_video_patches(model_patcher, latent: torch.Tensor) -> None:
    """HunyuanVideo cuts the latent into patches (1x2x2) without padding it, as Flux does: other sizes fail deep in
    the host's model."""
    _, height, width = model_patcher.model.diffusion_model.patch_size
    if latent.shape[-2] % height or latent.shape[-1] % width:
        pixels = f"{height * VAE_SCALE}" if height == width else \
            f"{height * VAE_SCALE} (height) and {width * VAE_SCALE} (width)"
        raise PnPError(f"The clip's latent is {latent.shape[-2]}x{latent.shape[-1]} (frames of about "
                       f"{pixel_size(latent.shape)}), which HunyuanVideo cannot cut into its {height}x{width} patches: "
                       f"resize the frames to multiples of {pixels} pixels (Upscale Image before VAE Encode, as "
                       f"pnp-hunyuan-video's Resize to 480x480 does).")


def invert(model_patcher, latent: torch.Tensor, conditioning, steps: int = official.AUTO,
           keep_steps: int = official.AUTO,
           preset: str = "rf-solver-edit", custom_layers: str = "", solver: str = "rf_solver",
           scheduler: str = flux_schedule.OFFICIAL, guidance: float = 1.0,
           mask: torch.Tensor | None = None, first_step: int = 0,
           tokens: torch.Tensor | None = None, bank: str = "auto",
           what: str = "PnP Flux/Chroma/HunyuanVideo Inversion") -> FeatureBank:
    """Invert `latent` (user latent space) and keep the layers' features for `keep_steps`
    sampling steps from `first_step` (of the image tokens `tokens`, default all), and the
    inverted path at every sigma (masked edits). `mask` is the source latent's noise_mask, kept
    for sampling. The tables live where `bank` says (placement.MODES); `what` names the node in its text.
    `steps` and `keep_steps` left at AUTO take the official values of the method on the model's family
    (official.py)."""
    layers = flux_layers.resolve(model_patcher, preset, custom_layers)  # other families stop here
    solvers.check_solver(solver)
    family = families.family_of(model_patcher).name
    steps = official.steps(steps, family, solver)
    keep_steps = official.kept(keep_steps, steps, family, solver)
    check_source(model_patcher, latent)
    if mask is not None:  # checked now, used when sampling
        region.check_mask(mask, latent.shape, latent.shape[0])
    check_finite(guidance=guidance)
    check_whole_latent(conditioning, "The inversion prompt (PnP Flux/Chroma/HunyuanVideo Inversion's `conditioning`)")
    sigmas = flux_schedule.sampling_sigmas(model_patcher, scheduler, steps, latent.shape)
    check_schedule(sigmas)
    if not 0 <= first_step + keep_steps <= steps:
        raise PnPError(f"`keep_steps` is {keep_steps}; it counts sampling steps whose features the bank keeps: "
                       f"give 0 to {steps}.")

    slots = slot_count(solver, steps, keep_steps)
    text_tokens = text_padding.length(model_patcher.model.diffusion_model, layers,  # HunyuanVideo: padded
                                      max(context.shape[1] for context, _ in conditioning))
    estimate = estimate_bytes(model_patcher, layers, latent.shape, text_tokens, slots,
                              None if tokens is None else len(tokens))
    chosen = placement.choose(bank, estimate, placement.storage_device(), disk.free_bytes,
                              slots * latent.numel() * 4)  # each slot's latent, float32
    tables = placement.recording_tables(chosen, lambda key: slots, lambda t: placement.storage_device())
    calls = SourceCalls(placement.storage_device()) if chosen.mode == "recompute" else None
    recorder = Recorder(layers, lambda sigma: inversion_slot(sigmas, sigma, solver, keep_steps, first_step), tables,
                        tokens, calls)
    patched = without_wrappers(model_patcher, INJECTION_KEY)  # invert the plain network, never an injected one
    patched.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, RECORDER_KEY, recorder)
    progress = Progress(steps)
    path = placement.allocate((steps + 1, *latent.shape), torch.float32, placement.storage_device())
    started = time.perf_counter()

    def loop(model, x, ascending):
        ones = x.new_ones(x.shape[0])
        path[steps].copy_(x)  # the source, at sigma 0

        def velocity(x_, sigma, evaluation):
            model(x_, sigma * ones, **{HOST_SIGMA: sigma})
            return recorder.velocity

        def after_step(i, x_):  # x at ascending[i + 1] = sampling sigma_{steps - 1 - i}
            path[steps - 1 - i].copy_(x_)
            progress.step()
        solvers.walk(solver, velocity, x, ascending, after_step)
        return torch.zeros_like(x)  # ComfyUI divides the result by 1 - sigma_last = 0: not used

    run_loop(patched, guided(model_patcher, conditioning, guidance), latent, sigmas.flip(0), loop)
    bank = FeatureBank(
        sigmas=sigmas, noise=placement.keep(path[0]), path=path, mask=mask,
        tables={key: tables.complete(key, slots, key) for key in layers.keys()}, layers=layers, solver=solver,
        steps_kept=keep_steps, text_tokens=int(recorder.text_tokens), architecture=families.signature(model_patcher),
        first_step=first_step, tokens=tokens, calls=calls,
    )
    kept = (f"{keep_steps} of {steps} steps of {solver} kept ({solvers.evaluations(solver, steps)} model "
            f"evaluations)")
    info = placement.report(what, chosen, bank.tables.values(), time.perf_counter() - started, kept,
                            calls.nbytes() if calls is not None else 0)
    notices.show(info)
    bank = replace(bank, info=info)
    return bank
