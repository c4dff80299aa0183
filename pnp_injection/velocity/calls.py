"""The velocity edits' model calls: velocities read through the host's own calls, and which prompt a call
evaluates.

Every evaluation goes through ComfyUI's sampling machinery (guider, cond batching, wrappers, ControlNet,
LoRA hooks), so the edits behave as any ComfyUI sampler does. The host's wrapped model returns the denoised
estimate D = x - sigma * v (CONST sampling), so v = (x - D) / sigma. At sigma 0 the estimate is x whatever v
is; the inversions' first evaluation sits there (Uni-Inv, RF-Inversion), so such a call asks an APPLY_MODEL
wrapper (`with_raw_velocity`) for the network's own output, returned as the estimate at unit sigma
(x - v): classifier-free guidance, linear in the estimates, then combines velocities exactly as elsewhere.
"""
from __future__ import annotations

from typing import Callable

import comfy.model_management
import comfy.patcher_extension as ext
import torch

from ..errors import PnPError
from ..model_calls import outside_compiler
from ..passes import model_call

SIDE = "pnp_edit_side"     # transformer_options entry: which prompt of an EditGuider this call evaluates
RAW = "pnp_raw_velocity"   # transformer_options entry: answer with x - v (the network's raw output v)
RAW_KEY = "pnp_velocity_raw"

Velocity = Callable[..., torch.Tensor]  # velocity(x, sigma, side=None) -> v


def sampler_velocity(model, extra_args: dict) -> Velocity:
    """The velocity of a KSAMPLER function's model. The host's inpainting blend is kept out of the calls: the
    velocity samplers keep the source outside a mask themselves."""
    return velocities(model_call(model, {**extra_args, "denoise_mask": None}))


def velocities(call) -> Velocity:
    """`velocity(x, sigma, side)` from `call(x, sigmas, **entries)` (passes.model_call): the prompt `side` of an
    EditGuider ("source" or "target"; None for a plain guider) at flow time `sigma`."""
    def velocity(x: torch.Tensor, sigma: float, side: str | None = None) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        entries = {} if side is None else {SIDE: side}
        if sigma == 0:
            entries[RAW] = True
        denoised = call(x, x.new_full((x.shape[0],), sigma), **entries)
        return (x - denoised) / (sigma if sigma else 1.0)
    return velocity


def with_raw_velocity(model_patcher):
    """A clone whose calls asked for it (RAW in transformer_options) answer x - v from the network's raw
    output v; every other call is untouched."""
    clone = model_patcher.clone()
    clone.add_wrapper_with_key(ext.WrappersMP.APPLY_MODEL, RAW_KEY, _raw_velocity)
    return clone


def _raw_velocity(executor, x, t, *args, **kwargs):
    options = kwargs.get("transformer_options", args[3] if len(args) > 3 else {})
    if not options.get(RAW):
        return executor(x, t, *args, **kwargs)
    outputs = []
    out = outside_compiler({executor.class_obj.diffusion_model: lambda module, inputs, output: outputs.append(output)},
                           executor, x, t, *args, **kwargs)
    if len(outputs) != 1 or not torch.is_tensor(outputs[0]) or outputs[0].shape != out.shape:
        raise PnPError("The inversion's first evaluation reads the model's velocity at sigma 0, and this model call "
                       f"ran the network {len(outputs)} times or gave it another shape (a node that splits or replaces "
                       "the model's calls, such as context windows): remove that node from the model you invert.")
    return x - outputs[0].float()
