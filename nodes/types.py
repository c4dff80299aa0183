"""The pack's own socket types and categories."""
from comfy_api.latest import io

Trajectory = io.Custom("PNP_TRAJECTORY")
FeatureBank = io.Custom("PNP_FEATURE_BANK")

CATEGORY = "sampling/pnp"  # the U-Net nodes
FLUX_CATEGORY = "sampling/pnp/flux"  # the Flux nodes
# Where ComfyUI's own SAMPLER nodes sit (comfy_extras/nodes_custom_sampler.py: KSamplerSelect,
# SamplerEulerAncestral, ...): users look for samplers there.
SAMPLER_CATEGORY = "sampling/custom_sampling/samplers"
