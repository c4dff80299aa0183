"""ComfyUI nodes of the pack: thin shells over `pnp_injection`."""
from comfy_api.latest import ComfyExtension, io

from .capture import PnPCaptureFeatures
from .injection import PnPApplyInjection, PnPSampler, PnPSigmas
from .inversion import PnPInversion

NODES = [PnPInversion, PnPCaptureFeatures, PnPApplyInjection, PnPSampler, PnPSigmas]
NODE_IDS = ["PnPInversion", "PnPCaptureFeatures", "PnPApplyInjection", "PnPSampler", "PnPSigmas"]


class PnPExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
