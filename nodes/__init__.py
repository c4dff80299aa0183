"""ComfyUI nodes of the pack: thin shells over `pnp_injection`."""
from comfy_api.latest import ComfyExtension, io

from .bank_files import PnPLoadFeatureBank, PnPSaveFeatureBank
from .capture import PnPCaptureFeatures
from .injection import PnPApplyInjection, PnPSampler, PnPSigmas
from .inversion import PnPInversion

NODES = [PnPInversion, PnPCaptureFeatures, PnPApplyInjection, PnPSampler, PnPSigmas, PnPSaveFeatureBank,
         PnPLoadFeatureBank]
NODE_IDS = ["PnPInversion", "PnPCaptureFeatures", "PnPApplyInjection", "PnPSampler", "PnPSigmas",
            "PnPSaveFeatureBank", "PnPLoadFeatureBank"]


class PnPExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
