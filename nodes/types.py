"""The pack's own socket types and categories."""
from comfy_api.latest import io

from ..pnp_injection import placement

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

# The mask input's tooltip, in named parts so that a node can keep what applies to it and word the rest.
MASK_WHERE = ("Optional: where to edit (white, 1) and where to keep the source (black, 0); soft edges blend. Draw it "
              "on the source in Load Image's mask editor, at the source's size. Outside it the result is the source.")
MASK_WINS = "It wins over a noise_mask the source latent carried into the inversion (Set Latent Noise Mask)."
MASK_TIP = f"{MASK_WHERE} {MASK_WINS}"


def mask_input():
    return io.Mask.Input("mask", optional=True, tooltip=MASK_TIP)


BANK_TIP = ("Where the bank's tables live. auto (default): in memory when they take at most half of the memory free, "
            "else on disk when it has room, else recompute. memory: the fastest. disk: a file in ComfyUI's temp "
            "folder, read ahead while sampling, deleted with the bank. recompute: no tables; each kept tensor is "
            "computed again while sampling (one more model call per injected step or evaluation): the least "
            "memory. Every mode gives the same result; the node shows the bank's size, place, kept steps and time.")


def bank_input():
    return io.Combo.Input("bank", options=list(placement.MODES), default="auto", optional=True, tooltip=BANK_TIP)
