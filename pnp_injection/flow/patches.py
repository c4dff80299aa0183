"""The flow wing's patches (every family of `families.FAMILIES`): record the source's q/k/v
projections during inversion, overwrite them while sampling.

Both are forward hooks on the sites' own projection modules (a double block's
`img_attn.qkv`, a single block's `linear1`), registered by a DIFFUSION_MODEL wrapper for the
one model call that needs them and removed in `finally`: no class swap, no block replace
patch taken (another pack's ("single_block", i) replace patch still runs around ours), and
LoRA keys stay intact. A hook reads or writes the site's q, k or v columns, for all tokens or
the image tokens alone (after the text; before it on HunyuanVideo, `site_view`). Injection is
keyed by the call's sigma (FeatureBank.slot_at).
"""
from __future__ import annotations

import inspect
import logging
from typing import Callable

import comfy.patcher_extension as ext
import torch

from .. import notices, placement, region
from ..errors import PnPError
from ..inputs import check_whole_latent_prompts
from ..model_calls import (SamplingRun, call_sigma, current_run, outside_compiler, rows_from_source, sampling_run,
                           with_clock, without_wrappers)
from ..recompute import Recomputed, SourceCalls
from ..schedule import later_departure
from ..streaming import StepFeed
from . import layers as flux_layers
from . import official, text_padding
from .bank import SCHEDULE_FIX, FeatureBank, image_count
from .solvers import NAMES, solver_of

WRAPPER_KEY = "pnp_flux_injection"


def call_parts(executor, args, kwargs):
    """context and transformer_options of a DIFFUSION_MODEL call, wherever the family's `_forward`
    puts them (Flux: x, timestep, context, y, guidance, ref_latents, control, transformer_options;
    Chroma: x, timestep, context, guidance, control, transformer_options)."""
    return call_part(executor, args, kwargs, "context"), call_part(executor, args, kwargs, "transformer_options")


def call_part(executor, args, kwargs, name: str):
    """One argument of a DIFFUSION_MODEL call by its name in the family's `_forward` (None when not given)."""
    net_class = type(executor.class_obj)
    if net_class not in _POSITIONAL_NAMES:  # a plain dict: torch.compile traces this wrapper
        _POSITIONAL_NAMES[net_class] = list(inspect.signature(net_class._forward).parameters)[1:]  # without self
    names = _POSITIONAL_NAMES[net_class]
    if name in kwargs:
        return kwargs[name]
    index = names.index(name) if name in names else len(args)
    return args[index] if index < len(args) else None


_POSITIONAL_NAMES: dict[type, list[str]] = {}


def site_view(site: flux_layers.Site, tensor: str, net, output: torch.Tensor, text_tokens: int,
              text_first: bool = True) -> torch.Tensor:
    """The view of a module's output that holds one tensor of the site: [batch, tokens, hidden]
    columns of a projection, or [batch, tokens, heads, head_dim] of a QK-norm's output. A single
    block holds the text before the image (`text_first`, Flux) or after it (HunyuanVideo)."""
    normed = flux_layers.is_normed(site, tensor)
    tokens_first = output.transpose(1, 2) if normed else output  # norms give [B, H, L, D]
    if site.tokens == "image" and site.stream == "single":
        length = tokens_first.shape[1]
        tokens_first = tokens_first[:, text_tokens:] if text_first else tokens_first[:, :length - text_tokens]
    return tokens_first if normed else tokens_first[:, :, flux_layers.columns(net, tensor)]


def site_hooks(net, layers: flux_layers.FluxLayerSet, text_tokens: int,
               act: Callable[[flux_layers.Site, str, torch.Tensor], None]) -> dict[torch.nn.Module, Callable]:
    """Forward hooks that call `act(site, tensor, view)` for every tensor of every site."""
    hooks, text_first = {}, flux_layers.text_first(net)
    for module, parts in flux_layers.modules(net, layers).items():
        def hook(module, args, output, parts=parts):
            for site, tensor in parts:
                act(site, tensor, site_view(site, tensor, net, output, text_tokens, text_first))
        hooks[module] = hook
    return hooks


class Recorder:
    """DIFFUSION_MODEL wrapper of the inversion: writes the sites' tensors of each call into
    the bank's tables under the slot its sigma belongs to (`inversion_slot`; calls outside the
    kept steps keep nothing), and keeps the raw model output (the velocity, readable at sigma 0
    too, where the denoised estimate carries none). For a bank that is recomputed while sampling
    it also keeps each kept call's inputs (`calls`)."""

    def __init__(self, layers: flux_layers.FluxLayerSet, slot_of: Callable[[float], int | None],
                 tables: placement.Tables, tokens: torch.Tensor | None = None, calls: SourceCalls | None = None):
        self.layers, self.slot_of, self.tables, self.tokens = layers, slot_of, tables, tokens  # tokens: image tokens kept
        self.calls = calls
        self.velocity: torch.Tensor | None = None
        self.text_tokens: int | None = None

    def __call__(self, executor, *args, **kwargs):
        context, options = call_parts(executor, args, kwargs)
        self.text_tokens = text_padding.length(executor.class_obj, self.layers, context.shape[1])  # HunyuanVideo: 256
        sigma = call_sigma(options)
        slot = self.slot_of(sigma)
        hooks = {}
        if slot is not None:
            if self.calls is not None:
                self.calls.keep(slot, sigma, args, kwargs, options, call_part(executor, args, kwargs, "control"))
            hooks = site_hooks(executor.class_obj, self.layers, self.text_tokens,
                               kept_views(self.tokens, context.device, lambda key, t: self.tables.put(key, slot, t)))
        out = text_padding.call(self.text_tokens, hooks, executor, *args, **kwargs)  # every call padded, as official
        self.velocity = out.float()
        return out


def kept_views(tokens: torch.Tensor | None, device: torch.device, put: Callable[[str, torch.Tensor], None]):
    """site_hooks' act for a source call: each site's [batch, tokens, hidden] (the kept image tokens alone, where
    `tokens` is given) goes to `put(key, t)`."""
    tokens = None if tokens is None else tokens.to(device)  # once per call, not per site

    def keep(site, tensor, view):
        view = view.flatten(2)
        put(site.key(tensor), view if tokens is None else view[:, tokens])
    return keep


class Injection:
    """The wrappers of sampling with injection: an OUTER_SAMPLE check (before any model
    evaluation) that gives the run its own streaming state (`SamplingRun`), dropped when
    sampling ends, and the DIFFUSION_MODEL wrapper that overwrites the sites with the bank's
    slot in every row of every cond/uncond chunk. Immutable: clones of the model share it."""

    def __init__(self, bank: FeatureBank, inject: int, attn_scale: float = 0.0):
        self.bank, self.inject, self.attn_scale = bank, inject, attn_scale

    def __deepcopy__(self, memo):
        return self

    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        bank, guider = self.bank, executor.class_obj
        bank.check_schedule(sigmas, self.inject)
        bank.check_latent(latent_image.shape)
        used = ["positive"] + (["negative"] if getattr(guider, "cfg", 1.0) != 1.0 else [])
        conds = [cond for name in used for cond in getattr(guider, "conds", {}).get(name, [])]
        if self.inject:
            for cond in conds:
                if cond.get("cross_attn") is not None:
                    bank.check_text(cond["cross_attn"].shape[1], cond.get("attention_mask"))
        check_whole_latent_prompts(getattr(guider, "conds", None))
        check_sampler(bank, self.inject, sampler)
        note_departures(bank, self.inject, sampler, conds, noise, sigmas)
        with sampling_run(guider, self.new_run()):
            return with_clock(executor, noise, latent_image, sampler, sigmas, *args, **kwargs)

    def new_run(self) -> SamplingRun:
        if self.bank.calls is not None:  # bank `recompute`: one slot at a time, each slot used by one evaluation
            return SamplingRun(self, recomputed=Recomputed(keep_slots=1))
        return SamplingRun(self, StepFeed(self.bank.tables))

    def recompute(self, slot: int, executor, options: dict, x: torch.Tensor) -> dict:
        """The bank's tensors of `slot`, computed again by the inversion's call there (bank `recompute`), in the
        bank's dtypes, exactly as the Recorder kept them."""
        bank, kept = self.bank, {}
        hooks = site_hooks(executor.class_obj, bank.layers, bank.text_tokens,
                           kept_views(bank.tokens, x.device, lambda key, t: kept.__setitem__(key, t.detach().clone())))
        bank.calls.run(slot, executor, options, x.device,
                       call=lambda ex, *args, **kwargs: text_padding.call(bank.text_tokens, hooks, ex, *args, **kwargs))
        return {key: t.to(bank.tables[key].dtype) for key, t in kept.items()}

    def diffusion_model(self, executor, *args, **kwargs):
        context, options = call_parts(executor, args, kwargs)
        slot = self.bank.slot_at(call_sigma(options), self.inject)
        if slot is None:
            return executor(*args, **kwargs)
        x = args[0] if args else kwargs["x"]
        self.bank.check_latent(x.shape)
        self.bank.check_text(context.shape[1])
        chunks = len(options.get("cond_or_uncond", [0]))
        run = current_run(options, self, self.new_run)
        if run.recomputed is not None:  # bank `recompute`: the inversion's call at this slot, run again
            slices = run.recomputed.get(slot, lambda: self.recompute(slot, executor, options, x))

            def fetch(key, like):
                return slices[key].to(device=like.device, dtype=like.dtype)
        else:
            def fetch(key, like):
                return run.feed.get(slot, key, like)

        tokens = None if self.bank.tokens is None else self.bank.tokens.to(x.device)  # once per call, not per site

        def inject(site, tensor, view):
            key = site.key(tensor)
            shape = view.shape if tokens is None else (view.shape[0], len(tokens), *view.shape[2:])
            source = rows_from_source(fetch(key, view), view.shape[0], chunks)
            source = text_padding.unpadded(executor.class_obj, site, source, self.bank.text_tokens, context.shape[1])
            if source.shape[1] != shape[1]:
                raise token_mismatch(key, source.shape[1], shape[1])
            source = source.reshape(shape)
            if tensor in site.added:
                view.add_(source)
            elif tokens is None:
                view.copy_(source)
            else:  # only the kept tokens (KV-Edit: the background's)
                view[:, tokens] = source
        hooks = site_hooks(executor.class_obj, self.bank.layers, context.shape[1], inject)
        if tokens is not None and self.attn_scale and len(tokens):
            kwargs["attention_mask"] = self.attention_bias(executor.class_obj, x, tokens, context.shape[1],
                                                           kwargs.get("attention_mask"))
        return outside_compiler(hooks, executor, *args, **kwargs)

    def attention_bias(self, net, x: torch.Tensor, tokens: torch.Tensor, text_tokens: int, given) -> torch.Tensor:
        """KV-Edit's attention scale (Xilluill/KV-Edit models/kv_edit.py lines 48-62, used at lines
        189-193): `attn_scale` added to the attention logits of every query on the kept (background)
        image tokens' keys, in every block (flux/modules/layers.py lines 315 and 378)."""
        if given is not None:
            raise PnPError("KV-Edit's attn_scale adds its own attention mask, and this model call carries one "
                           "already (another node sets an attention mask): set attn_scale to 0.")
        bias = torch.zeros(1, 1, text_tokens + image_count(x.shape), device=x.device,
                           dtype=getattr(net, "dtype", None) or x.dtype)
        bias[..., text_tokens + tokens] = self.attn_scale
        return bias


def check_sampler(bank: FeatureBank, inject: int, sampler) -> None:
    """A FireFlow bank holds only the midpoints of FireFlow's steps (other samplers' calls would
    find nothing), and the FireFlow sampler on an RF-Solver bank is neither algorithm: refuse both."""
    solver = solver_of(sampler)
    if not inject or solver == bank.solver:
        return
    if bank.solver == "fireflow":
        raise PnPError(f"This bank was kept for FireFlow (PnP Flux/Chroma/HunyuanVideo Inversion (FireFlow)): it "
                       f"holds the features of FireFlow's midpoint evaluations only, which "
                       f"{NAMES.get(solver, 'this sampler')} does not make. Sample it with PnP "
                       f"Flux/Chroma/HunyuanVideo Sampler, or with FireFlow Sampler (PnP Flux) in SamplerCustomAdvanced.")
    if solver == "fireflow":
        raise PnPError(f"This bank was kept for {NAMES[bank.solver]} but the sampler is FireFlow Sampler (PnP Flux). "
                       f"Sample it with {'RF-Solver Sampler (PnP Flux)' if bank.solver == 'rf_solver' else 'euler'}, "
                       f"or invert with PnP Flux/Chroma/HunyuanVideo Inversion (FireFlow) for the FireFlow sampler.")


def note_departures(bank: FeatureBank, inject: int, sampler, conds, noise: torch.Tensor, sigmas: torch.Tensor) -> None:
    """A warning on the node (and in the log) for each way the advanced route departs from the method without an
    error: another solver, no guidance, other noise than the inverted latent, a schedule that leaves the bank's
    after the injected steps. Each is a valid choice, but a user should know."""
    warn = lambda text: notices.show(text, logging.WARNING)  # noqa: E731
    if inject and bank.solver == "rf_solver" and solver_of(sampler) != "rf_solver":
        warn("PnP Flux: this bank was kept for RF-Solver (two evaluations per step) but the sampler is not RF-Solver "
             "Sampler (PnP Flux): each step injects only its first evaluation's features.")
    if conds and not any("guidance" in cond for cond in conds):
        settings = official.settings(bank.family, bank.solver)
        method = "FireFlow" if bank.solver == "fireflow" else "RF-Solver-Edit"
        warn(f"PnP Flux: the prompt has no Flux guidance set (FluxGuidance); the model uses its default (3.5). "
             f"{method} samples the target at guidance {settings.guidance:g}.")
    start = None if bank.is_kv_edit else bank.noise_for(noise.shape[0]).to(noise)  # KV-Edit starts on its path
    if start is not None and not torch.equal(noise, start):  # once per run, before any model call
        warn("PnP Flux: the NOISE is not the bank's inverted latent (PnP Flux/Chroma/HunyuanVideo Noise), so the edit "
             "does not start from the inversion: connect PnP Flux/Chroma/HunyuanVideo Noise's noise to "
             "SamplerCustomAdvanced.")
    later = later_departure(bank.sigmas[bank.first_step:], sigmas)
    if later:
        warn(later)


def token_mismatch(key: str, bank_tokens: int, call_tokens: int) -> PnPError:
    """The error for a site whose token count differs between the bank and this model call.

    By the time a site is replaced, the latent's size and (for all-token layers) the text
    tokens were checked, and a loaded bank holds at least its source's tokens: the difference
    is in image tokens beyond the latent's own, i.e. reference latents on one prompt only."""
    head = (f"PnP Flux cannot inject {key}: the bank holds {bank_tokens} tokens there but this model call has "
            f"{call_tokens}. Neither the latent's size nor the prompt's text causes this, so")
    if bank_tokens < call_tokens:
        return PnPError(
            f"{head} this call has {call_tokens - bank_tokens} image tokens more than the inversion's: the target "
            f"prompt carries reference latents (Flux Kontext's ReferenceLatent) that PnP Flux/Chroma/HunyuanVideo "
            f"Inversion's prompt did not, or larger ones, or another node adds image tokens. Give PnP "
            f"Flux/Chroma/HunyuanVideo Inversion's prompt the same reference latents as the target prompt and invert "
            f"again, or remove them from the target prompt."
        )
    return PnPError(
        f"{head} the inversion's calls had {bank_tokens - call_tokens} image tokens more than this one: PnP "
        f"Flux/Chroma/HunyuanVideo Inversion's prompt carried reference latents (Flux Kontext's ReferenceLatent) that "
        f"the target prompt lacks, or larger ones. Give the target prompt the same reference latents, or invert "
        f"again without them."
    )


MASK_FIX = "Invert the source again with PnP Flux/Chroma/HunyuanVideo Inversion, or remove the mask."


def apply_kv_injection(model_patcher, bank: FeatureBank, attn_scale: float = 1.0):
    """A clone of `model_patcher` for KV-Edit's editing: at every edited step the kept
    (background) tokens' keys and values are the bank's, with `attn_scale` on their attention."""
    inject = bank.check_injection(model_patcher, bank.steps_kept)
    return with_injection(model_patcher, Injection(bank, inject, attn_scale))


def with_injection(model_patcher, injection: Injection):
    """A clone of `model_patcher` with `injection`'s wrappers; re-applying replaces, never stacks."""
    patched = without_wrappers(model_patcher, WRAPPER_KEY)
    patched.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, injection.outer_sample)
    patched.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, injection.diffusion_model)
    return patched


def refuse_kv_edit(bank: FeatureBank) -> None:
    """A KV-Edit bank serves KV-Edit's sampler only (the other samplers would inject a part of the image)."""
    if bank.is_kv_edit:
        raise PnPError("This bank was kept for KV-Edit (PnP Flux Inversion (KV-Edit)): it holds the background's keys "
                       "and values from the skipped steps on. Sample it with PnP Flux Sampler (KV-Edit).")


def apply_injection(model_patcher, bank: FeatureBank, inject: int = official.AUTO, mask: torch.Tensor | None = None):
    """A clone of `model_patcher` that injects `bank` at the first `inject` steps (AUTO: all it kept); the input
    is untouched. With a mask (this one, else a noise_mask on the sampled latent, else the
    source's) the edit is regional (`region`): outside the mask sampling follows the inverted
    path; injection acts on the whole latent, as without a mask."""
    refuse_kv_edit(bank)
    inject = bank.check_injection(model_patcher, inject)
    patched = with_injection(model_patcher, Injection(bank, inject))
    region.apply(patched, bank.source_path, mask if mask is not None else bank.mask, WRAPPER_KEY, MASK_FIX,
                 SCHEDULE_FIX)
    return patched
