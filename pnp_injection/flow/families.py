"""Which family a flow transformer is, and what the family fixes: its label, its latent's channels
and patch size, the text length its calls see, and the architecture a bank was made on.

Families (`FAMILIES`): Flux.1 (dev, schnell, Kontext), its descendants Chroma and Flux.2 as the
host defines them (comfy/ldm/chroma, Flux2 in comfy/supported_models.py), and HunyuanVideo
(comfy/ldm/hunyuan_video). All four have double- and single-stream blocks with the layout of
`layers`; Flux.2's text is padded to 512 tokens and its image tokens are latent cells (patch size 1)
instead of 2x2 patches; HunyuanVideo's tokens are 1x2x2 cells over frames, and its single blocks
hold the text after the video tokens (`layers.text_first`). Every other model is refused by
`family_of` before any work, with the nodes of this pack that do take it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import comfy.ldm.flux.model
import comfy.model_base
import comfy.model_sampling
import comfy.supported_models as sm

from ..errors import PnPError

SUPPORTED = ("The Flux nodes (PnP Flux/Chroma/HunyuanVideo Inversion and the nodes after it) run on Flux.1 "
             "dev/schnell/Kontext, Chroma, Flux.2 and HunyuanVideo")
VELOCITY_EDITS = "PnP FlowEdit, PnP UniEdit-Flow or PnP RF-Inversion"  # the velocity wing's: any rectified-flow model


@dataclass(frozen=True)
class Family:
    name: str       # in bank signatures: "flux1", "chroma", "flux2", "hunyuan_video"
    label: str      # as users know it
    patch: int | tuple[int, ...] = 2  # latent cells per image token (bank.image_count): 2x2, or per axis
    channels: int = 16                # of its latents


# Text a family's prompt is padded to in the model calls that carry text features: Flux.2 left-pads to 512 tokens
# inside the host (comfy/model_base.py, Flux2.extra_conds). HunyuanVideo's official code pads every prompt to 256
# tokens, masked (Hunyuanvideo_Video_Edit/hyvideo/config.py line 101); the host does not, so this wing pads the
# inversion's calls itself (`PADDED_HERE`, flow/text_padding.py), and a shorter target takes the bank's first tokens.
TEXT_PADDED_TO = {"flux2": 512, "hunyuan_video": 256}
PADDED_HERE = ("hunyuan_video",)


def text_tokens(family_name: str, prompt_tokens: int, source_tokens: int = 0) -> int:
    """The text tokens a model call of the family sees for a prompt of `prompt_tokens`, as the bank counts them; while
    sampling a bank whose source calls had `source_tokens`, a family padded here counts a target up to that length as
    that length (it takes the bank's first tokens, text_padding.unpadded)."""
    if family_name in PADDED_HERE and source_tokens:
        return max(prompt_tokens, source_tokens)
    return max(prompt_tokens, TEXT_PADDED_TO.get(family_name, 0))


# RF-Solver-Edit's official code exists for Flux.1 and HunyuanVideo (`layers.for_family`); Chroma and Flux.2 take its
# rule by analogy. HunyuanVideo puts the video tokens first and the text last (`layers.text_first`).
FLUX1, CHROMA = Family("flux1", "Flux.1"), Family("chroma", "Chroma")
FLUX2 = Family("flux2", "Flux.2", patch=1, channels=128)  # a token per latent cell (comfy/supported_models.py Flux2)
HUNYUAN_VIDEO = Family("hunyuan_video", "HunyuanVideo", patch=(1, 2, 2))  # frames unpatched
FAMILIES = (FLUX1, CHROMA, FLUX2, HUNYUAN_VIDEO)


def family_of(model_patcher) -> Family:
    """The model's family, or a PnPError (before any work) saying what the Flux nodes run on and which
    nodes of the pack take this model instead."""
    base = model_patcher.model
    config = getattr(base, "model_config", None)
    net = getattr(base, "diffusion_model", None)
    chroma_model = getattr(comfy.model_base, "Chroma", None)
    chroma_net = _module_class("comfy.ldm.chroma.model", "Chroma")
    flux2_model, flux2_config = getattr(comfy.model_base, "Flux2", None), getattr(sm, "Flux2", None)
    if (type(base) is comfy.model_base.Flux and type(config) in (sm.Flux, sm.FluxSchnell)
            and type(net) is comfy.ldm.flux.model.Flux and len(net.params.axes_dim) == 3):
        return FLUX1
    if chroma_model is not None and type(base) is chroma_model and type(net) is chroma_net:
        return CHROMA
    if (flux2_model is not None and type(base) is flux2_model and type(config) is flux2_config
            and type(net) is comfy.ldm.flux.model.Flux and len(net.params.axes_dim) == 4):
        return FLUX2
    if (type(base) is getattr(comfy.model_base, "HunyuanVideo", None)
            and type(config) is getattr(sm, "HunyuanVideo", None) and type(net) is _HUNYUAN_NET):
        return HUNYUAN_VIDEO
    name = type(config).__name__ if config is not None else type(base).__name__
    if hasattr(net, "output_blocks"):
        kind, fix = "a U-Net", "use PnP DDIM Inversion (and the U-Net nodes after it) on this U-Net"
    elif isinstance(model_patcher.get_model_object("model_sampling"), comfy.model_sampling.CONST):
        kind = "another rectified-flow model"
        fix = f"edit this one with {VELOCITY_EDITS}, which run on any rectified-flow model"
    else:
        kind = "another transformer family"
        fix = "edit another model: no node of this pack edits this one (its sampling is not rectified flow)"
    raise PnPError(f"{SUPPORTED}; this model is {name}, {kind}. Load a Flux.1, Chroma, Flux.2 or HunyuanVideo "
                   f"checkpoint for these nodes, or {fix}.")


def _module_class(module: str, name: str):
    """A host class that older hosts may lack (None there)."""
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


_HUNYUAN_NET = _module_class("comfy.ldm.hunyuan_video.model", "HunyuanVideo")


def is_hunyuan_video(net) -> bool:
    """Whether a diffusion model (not its patcher) is the host's HunyuanVideo network."""
    return _HUNYUAN_NET is not None and isinstance(net, _HUNYUAN_NET)


def check_flux1(model_patcher, method: str) -> None:
    """Methods whose official code runs on Flux.1 only and that have no rule to carry over."""
    family = family_of(model_patcher)
    if family is not FLUX1:
        raise PnPError(f"{method} is built for Flux.1 and this model is {family.label}: use PnP "
                       f"Flux/Chroma/HunyuanVideo Inversion (RF-Solver) with the 'rf-solver-edit (by analogy)' layers, "
                       f"or a Flux.1 checkpoint.")


def signature(model_patcher) -> str:
    """Identifies the architecture a bank was made on: family, block counts and widths."""
    net = model_patcher.model.diffusion_model
    return (f"{family_of(model_patcher).name}:{len(net.double_blocks)}x{len(net.single_blocks)}:"
            f"hidden{net.hidden_size}:heads{net.num_heads}")
