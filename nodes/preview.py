from comfy_api.latest import io

from ..pnp_injection.unet import preview
from .types import CATEGORY, FeatureBank


class PnPFeaturePreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPFeaturePreview",
            display_name="PnP Feature Preview",
            category=CATEGORY,
            description="The first three principal components of captured features as an RGB image "
                        "(the paper's figure 3): the structure PnP carries over from the source.",
            inputs=[
                FeatureBank.Input("feature_bank", tooltip="From PnP Capture Features or PnP Load Feature Bank."),
                io.Int.Input("step", default=0, min=0, max=1000, tooltip="Sampling step (0 = the noisiest)."),
                io.Combo.Input("features", options=["resblock", "attention input"], default="resblock",
                               tooltip="The injected ResBlock features, or the input of one self-attention layer "
                                       "(its queries and keys are projected from it)."),
                io.Int.Input("block", default=-1, min=-1, max=100,
                             tooltip="Output block number; -1: the bank's first layer of that kind."),
                io.Int.Input("transformer_index", default=0, min=0, max=100,
                             tooltip="For attention input: the transformer within the block."),
            ],
            outputs=[io.Image.Output("image", display_name="image", tooltip="At the latent's size; one picture per source row.")],
        )

    @classmethod
    def execute(cls, feature_bank, step, features, block, transformer_index) -> io.NodeOutput:
        kind = "resblock" if features == "resblock" else "attention"
        return io.NodeOutput(preview.preview(feature_bank, step, kind, None if block < 0 else block,
                                             transformer_index))
