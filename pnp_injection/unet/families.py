"""Which family a U-Net is: the key of its layer tables (`layers.PRESETS`) and the start of a bank's
architecture signature. A model without a U-Net is refused before any work, with the nodes of this
pack that do take it.
"""
from __future__ import annotations

import comfy.model_sampling
import comfy.supported_models as sm

from ..errors import PnPError

# The host's model classes of the flow wing's families (flow/families.py `family_of`: Flux.1, Chroma, Flux.2,
# HunyuanVideo). A wing imports no other, so this wing's refusal knows them by name; tests/test_refusal_messages.py
# checks that the two wings agree on every family.
FLOW_WING_MODELS = ("Flux", "Chroma", "Flux2", "HunyuanVideo")
FLUX_NODES = "PnP Flux/Chroma/HunyuanVideo Inversion and PnP Flux/Chroma/HunyuanVideo Sampler"
VELOCITY_EDITS = "PnP FlowEdit, PnP UniEdit-Flow or PnP RF-Inversion"  # the velocity wing's: any rectified-flow model


def family_of(model_patcher) -> str:
    """The layer-table family of a ComfyUI model, or a clear error for non-U-Net models."""
    base = model_patcher.model
    config = getattr(base, "model_config", None)
    unet = getattr(base, "diffusion_model", None)
    name = type(config).__name__ if config is not None else type(base).__name__
    if unet is None or not hasattr(unet, "output_blocks"):
        raise PnPError(
            f"PnP needs a U-Net with decoder ResBlocks (SD 1.x, SD 2.x, SDXL); this model is "
            f"{name}, a transformer (DiT/flow) model with no ResBlocks. Load an SD 1.x, 2.x or "
            f"SDXL checkpoint, or {_elsewhere(model_patcher)}."
        )
    if isinstance(config, sm.SDXL):
        return "sdxl"
    if isinstance(config, sm.SD20):
        return "sd2"
    if isinstance(config, sm.SD15):
        return "sd1"
    return name


def _elsewhere(model_patcher) -> str:
    """Which nodes of the pack edit a model without a U-Net: the flow wing's for its families, the
    velocity edits for any rectified-flow model, none for the rest."""
    if type(model_patcher.model).__name__ in FLOW_WING_MODELS:
        return f"edit this model with {FLUX_NODES}, or with {VELOCITY_EDITS}"
    if isinstance(model_patcher.get_model_object("model_sampling"), comfy.model_sampling.CONST):
        return f"edit this rectified-flow model with {VELOCITY_EDITS}"
    return "edit another model: no node of this pack edits this one (its sampling is not rectified flow)"


def model_name(model_patcher) -> str:
    """The family and config of a model, as a signature starts (`sd1:SD15`)."""
    return f"{family_of(model_patcher)}:{type(model_patcher.model.model_config).__name__}"
