"""The U-Net patches: record source features, or overwrite them while sampling (spec 3, 4).

Both are forward hooks on the layers' own modules (the ResBlock's last residual conv, and
attn1's `to_q` / `to_k`), registered by a DIFFUSION_MODEL wrapper for the one U-Net call
that needs them and removed in `finally`. Nothing else of the model is touched: the hooks
never outlive a call, another pack's attn1 replace patch on the same layer still runs (it
receives our queries and keys), and LoRA keys stay intact.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch

from . import layers as layer_sets
from .errors import PnPError
from .schedule import step_at

WRAPPER_KEY = "pnp_injection"


@contextmanager
def forward_hooks(hooks: dict[torch.nn.Module, Callable]):
    handles = [module.register_forward_hook(fn) for module, fn in hooks.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def call_sigma(transformer_options) -> float:
    sigmas = transformer_options.get("sigmas")
    if sigmas is None:
        raise PnPError("PnP features are keyed by sigma, but this U-Net call carries none: "
                       "run the model through a ComfyUI sampler.")
    return float(sigmas.reshape(-1)[0])


def rows_from_source(source: torch.Tensor, rows: int, chunks: int, like: torch.Tensor) -> torch.Tensor:
    """Source rows for every row of every cond/uncond chunk: a source of 1 broadcasts,
    a source of B feeds row r of each chunk from source row r."""
    per_chunk = rows // max(chunks, 1)
    source = source.to(device=like.device, dtype=like.dtype)
    if source.shape[0] == 1:
        return source.expand(rows, *source.shape[1:])
    if source.shape[0] == per_chunk and per_chunk * chunks == rows:
        return source.repeat(chunks, *([1] * (source.ndim - 1)))
    raise PnPError(
        f"The feature bank holds {source.shape[0]} source row(s) but the target batch is "
        f"{per_chunk}: use a bank of 1 source image, or one source frame per target row."
    )


def step_hooks(unet, layers: layer_sets.LayerSet, step: int | None, feature_steps: int, attention_steps: int,
               hook_for: Callable[[str, object], Callable]) -> dict[torch.nn.Module, Callable]:
    """The forward hooks of one U-Net call at sampling step `step`: ResBlocks for steps below
    `feature_steps`, queries and keys below `attention_steps`. `hook_for(table, key)` makes
    each hook; table is "residual", "queries" or "keys", as in the bank."""
    if step is None or step >= max(feature_steps, attention_steps):
        return {}
    mods = layer_sets.modules(unet, layers)
    hooks = {}
    if step < feature_steps:
        hooks.update({m: hook_for("residual", b) for b, m in mods.residual.items()})
    if step < attention_steps:
        hooks.update({m: hook_for("queries", k) for k, m in mods.to_q.items()})
        hooks.update({m: hook_for("keys", k) for k, m in mods.to_k.items()})
    return hooks


class Recorder:
    """DIFFUSION_MODEL wrapper of the source pass: keeps each layer's output per step."""

    def __init__(self, sigmas: torch.Tensor, layers: layer_sets.LayerSet, feature_steps: int,
                 attention_steps: int, store: Callable[[torch.Tensor], torch.Tensor]):
        self.sigmas, self.layers, self.store = sigmas, layers, store
        self.feature_steps, self.attention_steps = feature_steps, attention_steps
        self.residual: dict[int, dict[int, torch.Tensor]] = {b: {} for b in layers.resblocks}
        self.queries: dict[tuple, dict[int, torch.Tensor]] = {k: {} for k in layers.attention}
        self.keys: dict[tuple, dict[int, torch.Tensor]] = {k: {} for k in layers.attention}

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        step = step_at(self.sigmas, call_sigma(transformer_options))

        def keep(table: str, key):
            kept = getattr(self, table)[key]

            def hook(module, args, output):
                kept[step] = self.store(output.detach())
            return hook

        hooks = step_hooks(executor.class_obj, self.layers, step, self.feature_steps, self.attention_steps, keep)
        with forward_hooks(hooks):
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)


class Injector:
    """DIFFUSION_MODEL wrapper of target sampling: overwrites the layers with the bank's
    tensors of the current step, in every row of every chunk."""

    def __init__(self, bank, feature_steps: int, attention_steps: int):
        self.bank, self.feature_steps, self.attention_steps = bank, feature_steps, attention_steps

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        bank = self.bank
        step = step_at(bank.sigmas, call_sigma(transformer_options))
        chunks = len(transformer_options.get("cond_or_uncond", [0]))

        def replace(table: str, key):
            source = getattr(bank, table)[key][step]

            def hook(module, args, output):
                return rows_from_source(source, output.shape[0], chunks, output)
            return hook

        hooks = step_hooks(executor.class_obj, bank.layers, step, self.feature_steps, self.attention_steps, replace)
        if hooks:
            bank.check_latent_shape(x.shape, batch=False)
        with forward_hooks(hooks):
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)


class SamplingCheck:
    """OUTER_SAMPLE wrapper: refuses a schedule or latent the bank cannot serve, before any
    U-Net evaluation."""

    def __init__(self, bank, injected_steps: int):
        self.bank, self.injected_steps = bank, injected_steps

    def __call__(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        self.bank.check_schedule(sigmas, self.injected_steps)
        self.bank.check_latent_shape(latent_image.shape, batch=True)
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)


def apply_injection(model_patcher, bank, feature_injection: float = 0.8, attention_injection: float = 0.5):
    """A clone of `model_patcher` that injects `bank` while sampling; the input is untouched."""
    import comfy.patcher_extension as ext

    feature_steps, attention_steps = bank.steps_for(model_patcher, feature_injection, attention_injection)
    patched = model_patcher.clone()
    for kind in (ext.WrappersMP.OUTER_SAMPLE, ext.WrappersMP.DIFFUSION_MODEL):
        patched.remove_wrappers_with_key(kind, WRAPPER_KEY)  # re-applying replaces, never stacks
    patched.add_wrapper_with_key(ext.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY,
                                 SamplingCheck(bank, max(feature_steps, attention_steps)))
    patched.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                 Injector(bank, feature_steps, attention_steps))
    return patched
