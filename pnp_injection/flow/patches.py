"""The Flux patches: record the source's q/k/v projections during inversion, overwrite them
while sampling.

Both are forward hooks on the sites' own projection modules (a double block's
`img_attn.qkv`, a single block's `linear1`), registered by a DIFFUSION_MODEL wrapper for the
one model call that needs them and removed in `finally`: no class swap, no block replace
patch taken (another pack's ("single_block", i) replace patch still runs around ours), and
LoRA keys stay intact. A hook reads or writes the site's q, k or v columns, for all tokens or
the image tokens after the text. Injection is keyed by the call's sigma (FeatureBank.slot_at).
"""
from __future__ import annotations

from typing import Callable

import comfy.patcher_extension as ext
import torch

from .. import placement
from ..errors import PnPError
from ..model_calls import call_sigma, outside_compiler, rows_from_source, without_wrappers
from . import layers as flux_layers
from .bank import FeatureBank

WRAPPER_KEY = "pnp_flux_injection"


def call_parts(args, kwargs):
    """context and transformer_options of a Flux DIFFUSION_MODEL call
    (x, timestep, context, y, guidance, ref_latents, control, transformer_options)."""
    context = kwargs["context"] if "context" in kwargs else args[2]
    options = kwargs["transformer_options"] if "transformer_options" in kwargs else args[7]
    return context, options


def region(site: flux_layers.Site, output: torch.Tensor, text_tokens: int, cols: slice) -> torch.Tensor:
    """The view of a projection's output that holds one tensor of the site."""
    if site.tokens == "image" and site.stream == "single":
        return output[:, text_tokens:, cols]
    return output[:, :, cols]


def site_hooks(net, layers: flux_layers.FluxLayerSet, text_tokens: int,
               act: Callable[[str, torch.Tensor], None]) -> dict[torch.nn.Module, Callable]:
    """Forward hooks that call `act(key, view)` for every tensor of every site."""
    hooks = {}
    for site, module in flux_layers.modules(net, layers).items():
        parts = [(site.key(t), flux_layers.columns(net, t)) for t in site.tensors]

        def hook(module, args, output, site=site, parts=parts):
            for key, cols in parts:
                act(key, region(site, output, text_tokens, cols))
        hooks[module] = hook
    return hooks


class Recorder:
    """DIFFUSION_MODEL wrapper of the inversion: keeps the sites' tensors under `slot` (set by
    the inversion loop before each call; None keeps nothing) and the raw model output (the
    velocity, readable at sigma 0 too, where the denoised estimate carries none)."""

    def __init__(self, layers: flux_layers.FluxLayerSet):
        self.layers = layers
        self.slot: int | None = None
        self.kept: dict[str, dict[int, torch.Tensor]] = {key: {} for key in layers.keys()}
        self.velocity: torch.Tensor | None = None
        self.text_tokens: int | None = None

    def __call__(self, executor, *args, **kwargs):
        context, _ = call_parts(args, kwargs)
        self.text_tokens = context.shape[1]
        hooks = {}
        if self.slot is not None:
            slot = self.slot

            def keep(key, view):  # the first evaluation at a slot is the source's; extra ones never overwrite it
                if slot not in self.kept[key]:
                    self.kept[key][slot] = placement.keep(view)
            hooks = site_hooks(executor.class_obj, self.layers, context.shape[1], keep)
        out = outside_compiler(hooks, executor, *args, **kwargs)
        self.velocity = out.float()
        return out


class Injection:
    """The wrappers of sampling with injection: an OUTER_SAMPLE check (before any model
    evaluation) that frees the streamed slices when sampling ends, and the DIFFUSION_MODEL
    wrapper that overwrites the sites with the bank's slot in every row of every cond/uncond
    chunk."""

    def __init__(self, bank: FeatureBank, inject: int):
        self.bank, self.inject = bank, inject
        self.feed = placement.StepFeed(bank.tables)

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        bank = self.bank
        if self.inject:
            bank.check_schedule(sigmas, self.inject)
            bank.check_latent(latent_image.shape)
            guider = executor.class_obj
            used = ["positive"] + (["negative"] if getattr(guider, "cfg", 1.0) != 1.0 else [])
            for name in used:
                for cond in getattr(guider, "conds", {}).get(name, []):
                    if cond.get("cross_attn") is not None:
                        bank.check_text(cond["cross_attn"].shape[1])
        try:
            return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        finally:
            self.feed.release()

    def diffusion_model(self, executor, *args, **kwargs):
        context, options = call_parts(args, kwargs)
        slot = self.bank.slot_at(call_sigma(options), self.inject)
        if slot is None:
            return executor(*args, **kwargs)
        self.bank.check_latent(args[0].shape if args else kwargs["x"].shape)
        self.bank.check_text(context.shape[1])
        chunks = len(options.get("cond_or_uncond", [0]))

        def replace(key, view):
            source = rows_from_source(self.feed.get(slot, key, view), view.shape[0], chunks)
            if source.shape != view.shape:
                raise token_mismatch(key, source.shape[1], view.shape[1])
            view.copy_(source)
        hooks = site_hooks(executor.class_obj, self.bank.layers, context.shape[1], replace)
        return outside_compiler(hooks, executor, *args, **kwargs)


def token_mismatch(key: str, bank_tokens: int, call_tokens: int) -> PnPError:
    return PnPError(
        f"PnP Flux cannot inject {key}: the bank holds {bank_tokens} tokens there but this model call has "
        f"{call_tokens}. The inversion's and the target's model calls differ in their tokens: reference latents "
        f"(Flux Kontext's ReferenceLatent) on one prompt and not on the other, or another node's patch. Give PnP "
        f"Flux Inversion's prompt and the target prompt the same reference latents."
    )


def apply_injection(model_patcher, bank: FeatureBank, inject: int = 20):
    """A clone of `model_patcher` that injects `bank` at the first `inject` steps; the input
    is untouched."""
    bank.check_injection(model_patcher, inject)
    injection = Injection(bank, inject)
    patched = without_wrappers(model_patcher, WRAPPER_KEY)  # re-applying replaces, never stacks
    patched.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, injection.outer_sample)
    patched.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, injection.diffusion_model)
    return patched
