"""The U-Net patches: record the source's features, or inject them while sampling (docs/pnp.md, sections 3 and 4).

ResBlocks: there is no patch point for a ResBlock's residual branch, so a forward hook on its
last conv is registered by a DIFFUSION_MODEL wrapper for the one U-Net call that needs it and
removed in `finally`.

Self-attention: an `attn1_patch` placed first in the model's chain. Recording keeps attn1's
input, the normed hidden state; injecting sets attention's query and key inputs to the
source's and leaves the value input the target's own, so q = to_q(source), k = to_k(source),
v = to_v(target): the paper's "queries and keys from the source" exactly. Patches after it
(HyperTile, token merging, attn1 replace patches of PAG or other packs) see consistent
inputs, and the bank holds one tensor per attention layer instead of two.

What a U-Net call records or injects is put into that call's transformer_options by the
wrapper (`CALL_KEY`), so the attention patch holds no state and every clone may share it.
"""
from __future__ import annotations

import logging
from functools import partial
from typing import Callable

import comfy.patcher_extension as ext
import torch

from .. import notices, region
from ..errors import PnPError
from ..inputs import check_whole_latent_prompts
from ..model_calls import (SamplingRun, call_sigma, current_run, outside_compiler, rows_from_source, sampling_run,
                           with_clock, without_wrappers)
from ..placement import Tables
from ..recompute import Recomputed, SourceCalls
from ..streaming import StepFeed
from ..schedule import later_departure, step_at
from . import layers as layer_sets

WRAPPER_KEY = "pnp_injection"        # our wrappers, on every model we patch
CALL_KEY = "pnp_injection"           # transformer_options entry of one U-Net call: its attention handler

def attention_patch(n, context, value, extra_options):
    """attn1_patch: hands this layer's input to the call's handler; a tensor it returns
    becomes attention's query and key input, the value input stays the target's."""
    handler = extra_options.get(CALL_KEY)
    block = extra_options.get("block")
    if handler is None or block is None or block[0] != "output":
        return n, context, value
    source = handler((block[1], extra_options.get("block_index", 0)), n)
    if source is None:
        return n, context, value
    return source, source, value


def with_attention_patch_first(model_patcher) -> None:
    """Put `attention_patch` first in the (cloned) model's attn1_patch chain, exactly once."""
    options = model_patcher.model_options.setdefault("transformer_options", {})
    chain = options.setdefault("patches", {}).get("attn1_patch", [])
    options["patches"]["attn1_patch"] = [attention_patch] + [p for p in chain if p is not attention_patch]


def without_pnp(model_patcher):
    """A clone with the pack's own wrappers and attention patch removed (inversion and capture
    of a model that already went through PnP Apply Feature Injection)."""
    clean = without_wrappers(model_patcher, WRAPPER_KEY)
    patches = clean.model_options.get("transformer_options", {}).get("patches", {})
    if "attn1_patch" in patches:
        patches["attn1_patch"] = [p for p in patches["attn1_patch"] if p is not attention_patch]
    return clean


def unet_call(executor, layers: layer_sets.LayerSet, residual: Callable | None, attention: Callable | None,
              x, timesteps, context, y, control, transformer_options, **kwargs):
    """One U-Net call with PnP's work: `residual(block, output)` on each ResBlock's residual
    branch (a forward hook: a tensor it returns replaces the output) and `attention(key, n)` as
    the call's attention handler (see `attention_patch`). None leaves that kind alone."""
    hooks = {}
    if residual is not None:
        def hook(module, args, out, block):
            return residual(block, out)
        unet = executor.class_obj
        hooks = {layer_sets.residual_module(unet, b): partial(hook, block=b) for b in layers.resblocks}
    if attention is not None:
        transformer_options = {**transformer_options, CALL_KEY: attention}
    return outside_compiler(hooks, executor, x, timesteps, context, y, control, transformer_options, **kwargs)


def checked(replacement: torch.Tensor, replaced: torch.Tensor, layer: str, transformer_options) -> torch.Tensor:
    """The replacement, if it has the shape of what it replaces; else a PnPError naming the
    layer and the model's other patches (one of them changed the U-Net's inner shapes), or,
    with no other patch on the model, the bank (its features were not recorded on this
    latent's whole grid)."""
    if replacement.shape == replaced.shape:
        return replacement
    others = [f"{kind} {getattr(p, '__qualname__', type(p).__name__)}"
              for kind, chain in transformer_options.get("patches", {}).items()
              for p in chain if p is not attention_patch]
    mismatch = (f"PnP cannot inject {layer}: the bank holds a tensor of shape {tuple(replacement.shape)} but this "
                f"U-Net call has {tuple(replaced.shape)} there.")
    if not others:
        raise PnPError(
            f"{mismatch} No patch on the model changes the U-Net's shapes, so the bank's features were not "
            f"recorded on the whole latent of the source: it was captured with an area prompt (Conditioning "
            f"(Set Area), or Set Mask with \"mask bounds\") by an earlier version of the pack, or written by other "
            f"software. Capture the source again with a prompt without area (PnP DDIM Inversion, PnP Capture "
            f"Features) and save it with PnP Save Feature Bank."
        )
    raise PnPError(
        f"{mismatch} A patch on the model changes the U-Net's inner shapes at PnP's injected steps "
        f"({', '.join(others)}): remove it from the model that PnP samples, or apply it after PnP's injected steps."
    )


def resblock_name(block: int) -> str:
    return f"the ResBlock of output block {block}"


def attention_name(key: tuple[int, int]) -> str:
    return f"the self-attention of output block {key[0]} @ {key[1]}"


class Recorder:
    """DIFFUSION_MODEL wrapper of the source pass: writes, per step (found from the call's
    sigma), each ResBlock's residual branch and each attention layer's input of the first
    `rows` rows into the bank's tables. The first evaluation at a step is the one kept: an
    extra evaluation at the same sigma can neither overwrite nor multiply the bank."""

    def __init__(self, sigmas: torch.Tensor, layers: layer_sets.LayerSet, feature_count: int,
                 attention_count: int, rows: int, tables: Tables, calls: SourceCalls | None = None):
        self.sigmas, self.layers, self.rows, self.tables = sigmas, layers, rows, tables
        self.feature_count, self.attention_count, self.calls = feature_count, attention_count, calls

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        sigma = call_sigma(transformer_options)
        step = step_at(self.sigmas, sigma)
        if step is not None and step < max(self.feature_count, self.attention_count) and self.calls is not None:
            self.calls.keep(step, sigma, (x[: self.rows], timesteps[: self.rows], context[: self.rows],
                                          None if y is None else y[: self.rows], control, transformer_options),
                            kwargs, transformer_options, control)
        residual, attention = recording(self.layers, step, self.feature_count, self.attention_count,
                                        lambda key, t: self.tables.put(key, step, t[: self.rows]))
        return unet_call(executor, self.layers, residual, attention,
                         x, timesteps, context, y, control, transformer_options, **kwargs)


def recording(layers: layer_sets.LayerSet, step: int | None, feature_count: int, attention_count: int,
              put: Callable[[tuple, torch.Tensor], None]):
    """unet_call's `residual` and `attention` for a source pass at `step`: each kept tensor goes to `put(key, t)`."""
    residual = attention = None
    if step is not None and step < feature_count:
        def residual(block, out):
            put(("residual", block), out)
    if step is not None and step < attention_count:
        def attention(key, n):
            if key in layers.attention:
                put(("attention", key), n)
    return residual, attention


class Injection:
    """Target sampling: overwrites the layers with the bank's tensors of the current step, in
    every row of every chunk. `outer_sample` (OUTER_SAMPLE wrapper) refuses a schedule, latent
    or attention chain the bank cannot serve before any U-Net evaluation and gives the run its
    own streaming state (`SamplingRun`), dropped when sampling ends; `diffusion_model`
    (DIFFUSION_MODEL wrapper) injects per call. Immutable: clones of the model share it."""

    def __init__(self, bank, feature_count: int, attention_count: int, inject_outside: bool = True):
        self.bank, self.feature_count, self.attention_count = bank, feature_count, attention_count
        self.inject_outside = inject_outside  # False: a masked run injects inside its mask only (README: not chosen)

    def __deepcopy__(self, memo):
        return self

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        self.bank.check_schedule(sigmas, max(self.feature_count, self.attention_count))
        self.bank.check_latent(latent_image.shape, batch=True)
        check_whole_latent_prompts(getattr(executor.class_obj, "conds", None))
        check_attention_chain(executor.class_obj.model_options, needed=self.attention_count > 0)
        note_departures(self.bank.sigmas, sigmas, noise)
        with sampling_run(executor.class_obj, self.new_run()):
            return with_clock(executor, noise, latent_image, sampler, sigmas, *args, **kwargs)

    def diffusion_model(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        step = step_at(self.bank.sigmas, call_sigma(transformer_options))
        if step is None or step >= max(self.feature_count, self.attention_count):
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        self.bank.check_latent(x.shape, batch=False)
        chunks = len(transformer_options.get("cond_or_uncond", [0]))
        run = current_run(transformer_options, self, self.new_run)
        if run.recomputed is not None:  # bank `recompute`: the source pass of this step, run again
            slices = run.recomputed.get(step, lambda: self.recompute(step, executor, transformer_options, x))

            def fetch(key, like):
                return slices[key].to(like)
        else:
            def fetch(key, like):
                return run.feed.get(step, key, like)

        masked = None if self.inject_outside else transformer_options.get(region.RUN_KEY)
        mask = None if masked is None else masked[0]

        def source(kind: str, key, replaced: torch.Tensor, name: str) -> torch.Tensor:
            step_tensor = fetch((kind, key), replaced)
            out = checked(rows_from_source(step_tensor, replaced.shape[0], chunks), replaced, name, transformer_options)
            if mask is None:
                return out
            block = key if kind == "residual" else key[0]
            h, w = layer_sets.output_resolution(executor.class_obj, block, x.shape[-2], x.shape[-1])
            m = rows_from_source(torch.nn.functional.interpolate(mask.to(out), size=(h, w), mode="bilinear"),
                                 replaced.shape[0], chunks)
            m = m if kind == "residual" else m.flatten(2).transpose(1, 2)  # [rows, tokens, 1]
            return out * m + replaced * (1 - m)

        residual = attention = None
        if step < self.feature_count:
            def residual(block, out):
                return source("residual", block, out, resblock_name(block))
        if step < self.attention_count:
            def attention(key, n):
                return source("attention", key, n, attention_name(key)) if key in self.bank.attention else None
        return unet_call(executor, self.bank.layers, residual, attention,
                         x, timesteps, context, y, control, transformer_options, **kwargs)


    def new_run(self) -> SamplingRun:
        if self.bank.calls is not None:
            return SamplingRun(self, recomputed=Recomputed())
        return SamplingRun(self, StepFeed(self.bank.tables))

    def recompute(self, step: int, executor, transformer_options, x: torch.Tensor) -> dict:
        """The bank's tensors of `step`, computed again by its source pass (bank `recompute`), in the bank's dtypes."""
        kept = {}
        residual, attention = recording(self.bank.layers, step, self.feature_count, self.attention_count,
                                        lambda key, t: kept.__setitem__(key, t.detach().clone()))
        self.bank.calls.run(step, executor, transformer_options, x.device,
                            call=lambda ex, *args, **kwargs: unet_call(ex, self.bank.layers, residual, attention,
                                                                       *args, **kwargs))
        tables = self.bank.tables
        return {key: t.to(tables[key].dtype) for key, t in kept.items()}


def note_departures(bank_sigmas: torch.Tensor, sigmas: torch.Tensor, noise: torch.Tensor) -> None:
    """A warning on the node (and in the log) for a run the bank serves but that is not the method's: noise added
    to the start latent, or a schedule that leaves the bank's after the injected steps."""
    if bool(noise.any()):  # once per run, before any model call
        notices.show("PnP: the sampler adds noise to the start latent (KSampler's add_noise, or a NOISE other than "
                     "Disable Noise), so the edit starts from a noised latent, not from the inversion's. Turn "
                     "add_noise off (KSampler (Advanced)) or give SamplerCustomAdvanced Disable Noise.",
                     logging.WARNING)
    later = later_departure(bank_sigmas, sigmas)
    if later:
        notices.show(later, logging.WARNING)


def check_attention_chain(model_options, needed: bool) -> None:
    """Our attention patch must be there when attention is injected, and come first: a patch
    before it would hand it tokens that no longer match the bank's (HyperTile's tiles, merged
    tokens)."""
    chain = model_options.get("transformer_options", {}).get("patches", {}).get("attn1_patch", [])
    if needed and attention_patch not in chain:
        raise PnPError("PnP's attention patch is no longer on this model (a node after PnP Apply Feature "
                       "Injection replaced the model's attention patches): apply PnP Apply Feature Injection "
                       "after that node.")
    if attention_patch in chain and chain[0] is not attention_patch:
        before = chain[: chain.index(attention_patch)]
        names = ", ".join(getattr(p, "__qualname__", type(p).__name__) for p in before)
        raise PnPError(
            f"Another attention patch ({names}) was put before PnP's in the model's attn1 chain, so PnP "
            f"would see its changed tokens: apply PnP Apply Feature Injection after that node, or drop it."
        )


MASK_FIX = "Invert and capture the source again (PnP DDIM Inversion, PnP Capture Features), or remove the mask."
SCHEDULE_FIX = ("Sample with the same steps and scheduler as PnP DDIM Inversion, denoise 1.0 (or feed PnP Sigmas to "
                "SamplerCustomAdvanced).")


def apply_injection(model_patcher, bank, feature_injection: float = 0.8, attention_injection: float = 0.5,
                    mask: torch.Tensor | None = None, inject_outside: bool = True):
    """A clone of `model_patcher` that injects `bank` while sampling; the input is untouched.

    With a mask (this one, else a noise_mask on the sampled latent, else the source's), the
    edit is regional (`region`): outside the mask sampling follows the source's trajectory;
    injection acts on the whole latent, as without a mask (`inject_outside` False restricts it to
    the mask: the alternative the README measures)."""
    feature_count, attention_count = bank.check_injection(model_patcher, feature_injection, attention_injection)
    patched = without_pnp(model_patcher)  # re-applying replaces, never stacks
    injection = Injection(bank, feature_count, attention_count, inject_outside)
    patched.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, injection.outer_sample)
    patched.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, injection.diffusion_model)
    region.apply(patched, bank.source_path, mask if mask is not None else bank.mask, WRAPPER_KEY, MASK_FIX,
                 SCHEDULE_FIX)
    if attention_count:
        with_attention_patch_first(patched)
    return patched
