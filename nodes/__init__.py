"""ComfyUI nodes of the pack: thin shells over `pnp_injection`."""
from comfy_api.latest import ComfyExtension, io

from .bank_files import PnPLoadFeatureBank, PnPSaveFeatureBank
from .capture import PnPCaptureFeatures
from .flux import FLUX_NODES
from .flux_kv_edit import KV_EDIT_NODES
from .generation import PnPGenerateSource
from .injection import PnPApplyInjection, PnPGuider, PnPSampler, PnPSigmas
from .inversion import PnPInversion
from .preview import PnPFeaturePreview, PnPFluxFeaturePreview
from .velocity import VELOCITY_NODES

NODES = [PnPInversion, PnPGenerateSource, PnPCaptureFeatures, PnPApplyInjection, PnPSampler, PnPSigmas,
         PnPGuider, PnPSaveFeatureBank, PnPLoadFeatureBank, PnPFeaturePreview, *FLUX_NODES,
         *KV_EDIT_NODES, *VELOCITY_NODES, PnPFluxFeaturePreview]
NODE_IDS = ["PnPInversion", "PnPGenerateSource", "PnPCaptureFeatures", "PnPApplyInjection", "PnPSampler",
            "PnPSigmas", "PnPGuider", "PnPSaveFeatureBank", "PnPLoadFeatureBank", "PnPFeaturePreview",
            "PnPFluxInversion", "PnPFluxSampler", "PnPFluxFireFlowInversion", "PnPFluxFireFlowSampler",
            "PnPFluxApplyInjection", "PnPFluxNoise", "PnPRFSolverSampler", "PnPFireFlowSampler", "PnPFluxSaveBank",
            "PnPFluxLoadBank", "PnPFluxKVEditInversion", "PnPFluxKVEditSampler", "PnPFlowEdit", "PnPUniEdit",
            "PnPRFInversion", "PnPEditGuider", "PnPFlowEditSampler", "PnPUniInversion", "PnPUniEditSampler",
            "PnPRFInversionInvert", "PnPRFInversionSampler", "PnPEditSigmas", "PnPFluxFeaturePreview"]


class PnPExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
