"""The pack's own socket types and categories."""
from comfy_api.latest import io

Trajectory = io.Custom("PNP_TRAJECTORY")
FeatureBank = io.Custom("PNP_FEATURE_BANK")

CATEGORY = "sampling/pnp"  # the U-Net nodes
FLUX_CATEGORY = "sampling/pnp/flux"  # the Flux nodes
EDIT_CATEGORY = "sampling/pnp/edit"  # the velocity edits (FlowEdit, UniEdit-Flow, RF-Inversion) on any flow model
# Where ComfyUI keeps its own GUIDER nodes (comfy_extras/nodes_custom_sampler.py: BasicGuider, CFGGuider).
GUIDER_CATEGORY = "sampling/custom_sampling/guiders"
# Where ComfyUI's own SAMPLER nodes sit (comfy_extras/nodes_custom_sampler.py: KSamplerSelect,
# SamplerEulerAncestral, ...): users look for samplers there.
SAMPLER_CATEGORY = "sampling/custom_sampling/samplers"

MASK_TIP = ("Optional: where to edit (white, 1) and where to keep the source (black, 0); soft edges blend. Draw it "
            "on the source in Load Image's mask editor, at the source's size. Outside it the result is the source. "
            "It wins over a noise_mask the source latent carried into the inversion (Set Latent Noise Mask).")


def mask_input():
    return io.Mask.Input("mask", optional=True, tooltip=MASK_TIP)
