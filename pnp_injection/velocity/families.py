"""Which models the velocity-level edits run on, and what sets one family apart.

FlowEdit, UniEdit-Flow and RF-Inversion need nothing of a model but its velocity v(x, t) on the
straight path x_t = (1 - t) x_0 + t * noise. That is what ComfyUI's CONST model sampling means
(comfy/model_sampling.py: the sampler starts from sigma * noise + (1 - sigma) * latent, and
denoised = x - sigma * output), so every model whose sampling is CONST qualifies, whatever its
architecture: Flux.1/Flux.2, Chroma, SD3/SD3.5, AuraFlow, Wan 2.1/2.2, HunyuanVideo and 1.5,
LTX-Video, Qwen-Image, Lumina2/Z-Image, HiDream. A family here only chooses defaults (each method's
official schedule and settings, where its official code ran on that family) and how UniEdit-Flow's
diffusers code groups latent cells.
"""
from __future__ import annotations

from dataclasses import dataclass

import comfy.model_sampling
import comfy.supported_models as sm

from ..errors import PnPError


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    # Latent cells per side that one position of the family's diffusers pipeline latent holds: 2 where the
    # pipeline packs 2x2 patches into its latent (Flux.1, Chroma, Qwen-Image), 1 where it keeps ComfyUI's
    # layout. UniEdit-Flow's diffusers scheduler computes its mask per position (UniEditEulerScheduler.py
    # lines 124-137: over the channel dim of the latent the pipeline hands it).
    packed_cells: int = 1


FLUX1 = Family("flux1", "Flux.1", 2)
FLUX1_SCHNELL = Family("flux1_schnell", "Flux.1 schnell", 2)
SD3 = Family("sd3", "SD3/SD3.5")
WAN = Family("wan", "Wan")
GENERIC = Family("flow", "rectified-flow model")

# model_base classes by name (older hosts lack some), for the families with a label of their own.
_BY_CLASS = {
    "Flux2": Family("flux2", "Flux.2"),
    "Chroma": Family("chroma", "Chroma", 2),
    "ChromaRadiance": Family("chroma_radiance", "Chroma Radiance"),
    "SD3": SD3,
    "AuraFlow": Family("auraflow", "AuraFlow"),
    "WAN21": WAN, "WAN22": WAN,
    "HunyuanVideo": Family("hunyuan_video", "HunyuanVideo"),
    "HunyuanVideo15": Family("hunyuan_video15", "HunyuanVideo 1.5"),
    "LTXV": Family("ltxv", "LTX-Video"),
    "QwenImage": Family("qwen_image", "Qwen-Image", 2),
    "Lumina2": Family("lumina2", "Lumina2 / Z-Image"),
    "HiDream": Family("hidream", "HiDream"),
}

SUPPORTED = ("models whose sampling is rectified flow (ComfyUI's CONST model sampling): Flux.1, Flux.2, Chroma, "
             "SD3/SD3.5, AuraFlow, Wan 2.1/2.2, HunyuanVideo and 1.5, LTX-Video, Qwen-Image, Lumina2/Z-Image, HiDream")


def family_of(model_patcher, method: str) -> Family:
    """The model's family, or a PnPError (before any work) when its sampling is not rectified flow."""
    model_sampling = model_patcher.get_model_object("model_sampling")
    base = model_patcher.model
    if not isinstance(model_sampling, comfy.model_sampling.CONST):
        kinds = " and ".join(c.__name__ for c in type(model_sampling).__mro__[1:]
                             if c.__module__ == "comfy.model_sampling") or "another model sampling"
        what = type(getattr(base, "model_config", base)).__name__
        raise PnPError(f"{method} edits {SUPPORTED}. This model ({what}) samples with {kinds}: load one of those "
                       f"models, or use PnP DDIM Inversion for SD 1.x, SD 2.x and SDXL U-Nets.")
    for cls in type(base).__mro__:  # the most derived host class first (Chroma and Flux.2 derive from Flux)
        if cls.__module__ != "comfy.model_base":
            continue
        if cls.__name__ == "Flux":
            return FLUX1_SCHNELL if isinstance(base.model_config, sm.FluxSchnell) else FLUX1
        if cls.__name__ in _BY_CLASS:
            return _BY_CLASS[cls.__name__]
    return GENERIC


def guidance_distilled(model_patcher) -> bool:
    """Whether the model takes an embedded guidance value (Flux.1 dev, Flux.2, HunyuanVideo 1.0: a `guidance`
    entry of the conditioning, what FluxGuidance sets) instead of classifier-free guidance."""
    params = getattr(model_patcher.model.diffusion_model, "params", None)
    return bool(getattr(params, "guidance_embed", False))


def signature(model_patcher) -> str:
    """What a kept inversion is tied to: the model's class and its latent's channels (another model refuses it)."""
    base = model_patcher.model
    return f"{type(base).__name__}:{base.latent_format.latent_channels}ch"
