"""The guiders of the velocity edits: the edit guider (one model, the source's and the target's prompts, each
with its own scale) and the plain target guider of RF-Inversion.

FlowEdit and UniEdit-Flow evaluate the source prompt and the target prompt at every edited step and work on
the difference of the two velocities. A GUIDER holds both, so that they run through SamplerCustomAdvanced
with any scheduler and sigmas; the edit samplers ask for one side per call (calls.SIDE). A scale is the
embedded guidance on guidance-distilled models (Flux.1 dev, Flux.2, HunyuanVideo: what FluxGuidance sets,
no classifier-free guidance) and classifier-free guidance with the negative prompt on every other model.
A scale left at AUTO takes the official value of the method that samples (each edit sampler's
`official_scales`).
"""
from __future__ import annotations

import comfy.model_patcher
import comfy.samplers
import node_helpers
import torch

from ..errors import PnPError
from ..inputs import check_finite
from ..model_calls import patcher_without_step_caches
from .calls import SIDE
from .families import guidance_distilled
from .sampling import AUTO
SOURCE_ROWS = "pnp_edit_source_rows"  # transformer_options entry: source rows of a run widened to a prompt batch


def scaled(model_patcher, conditioning, scale: float, negative, name: str):
    """`conditioning` at `scale` and the classifier-free guidance that goes with it: embedded guidance with cfg 1
    on guidance-distilled models, the prompt unchanged with cfg `scale` elsewhere (which needs a negative)."""
    check_finite(**{name: scale})
    if guidance_distilled(model_patcher):
        return node_helpers.conditioning_set_values(conditioning, {"guidance": scale}), 1.0
    if negative is None and scale != 1.0:
        raise PnPError(f"`{name}` is {scale}: classifier-free guidance needs a negative prompt. Connect `negative` "
                       f"(an empty prompt, as the official code uses), or set `{name}` to 1.")
    return conditioning, scale


def target_guider(model_patcher, target, negative, scale: float):
    """A plain guider of the target prompt at `scale` (RF-Inversion's reverse ODE)."""
    target, cfg = scaled(model_patcher, target, scale, negative, "guidance")
    guider = comfy.samplers.CFGGuider(model_patcher)
    guider.inner_set_conds({"positive": target, **({"negative": negative} if negative is not None else {})})
    guider.set_cfg(cfg)
    return guider


class EditGuider(comfy.samplers.CFGGuider):
    """Samples nothing by itself: an edit sampler (FlowEdit Sampler, UniEdit Sampler) drives it."""

    def __init__(self, model_patcher, source, target, negative=None, source_scale: float = AUTO,
                 target_scale: float = AUTO):
        # each step pairs a source and a target call at different points: a cache would answer one from the other
        super().__init__(patcher_without_step_caches(model_patcher, "for this edit, as each step pairs a source and "
                                                                    "a target call; the result is the edit without "
                                                                    "the cache"))
        self.prompts, self.negative = {"source": source, "target": target}, negative
        self.requested = {"source": source_scale, "target": target_scale}
        self.rows = prompt_rows(target)
        self.scales = {}

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        side = model_options.get("transformer_options", {}).get(SIDE, "target")
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"),
                                                self.conds["source" if side == "source" else "positive"],
                                                self.scales[side], model_options=model_options, seed=seed)

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        official = getattr(getattr(sampler, "sampler_function", None), "official_scales", None)
        if official is None:
            raise PnPError("PnP Edit Guider holds a source and a target prompt for an edit sampler: connect FlowEdit "
                           "Sampler (PnP) or UniEdit Sampler (PnP) to SamplerCustomAdvanced's `sampler`, or use "
                           "CFGGuider to sample the target prompt alone.")
        defaults = official(self.model_patcher)
        conds = {} if self.negative is None else {"negative": self.negative}
        for index, side in enumerate(("source", "target")):
            scale = defaults[index] if self.requested[side] == AUTO else self.requested[side]
            prompt, self.scales[side] = scaled(self.model_patcher, self.prompts[side], scale, self.negative,
                                               f"{side}_scale")
            conds["positive" if side == "target" else "source"] = prompt
        self.inner_set_conds(conds)
        rows, source_rows = self.rows, latent_image.shape[0]
        if rows > source_rows:  # a batch of target prompts: one edit per prompt
            if source_rows != 1:
                raise PnPError(f"The target prompt holds {rows} prompts but the source latent {source_rows} images: "
                               f"give one source image, or one prompt per source image.")
            latent_image, noise = (t.expand(rows, *t.shape[1:]).clone() for t in (latent_image, noise))
            if denoise_mask is not None and denoise_mask.shape[0] == 1:
                denoise_mask = denoise_mask.expand(rows, *denoise_mask.shape[1:])
        original = self.model_options
        self.model_options = comfy.model_patcher.create_model_options_clone(original)
        self.model_options.setdefault("transformer_options", {})[SOURCE_ROWS] = source_rows
        try:
            return super().sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        finally:
            self.model_options = original


def source_rows(extra_args: dict, rows: int) -> int:
    """The source rows of a run (fewer than its rows when an edit guider widened one source to a prompt batch)."""
    return extra_args.get("model_options", {}).get("transformer_options", {}).get(SOURCE_ROWS, rows)


def check_edit_guider(model, method: str) -> None:
    """An edit sampler's model must be driven by an EditGuider: with another guider both sides would be the
    same prompt, and the edit would silently do nothing."""
    if not isinstance(getattr(model, "inner_model", None), EditGuider):
        raise PnPError(f"{method} evaluates a source and a target prompt: give SamplerCustomAdvanced a PnP Edit Guider "
                       f"(source and target prompts) as its `guider`.")


def prompt_rows(conditioning) -> int:
    """The prompts of a CONDITIONING's batch (1 for a single prompt)."""
    return max((entry[0].shape[0] for entry in conditioning or [] if isinstance(entry[0], torch.Tensor)), default=1)
