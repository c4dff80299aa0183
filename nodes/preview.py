"""The feature previews of both wings: what a bank carries over, as a picture."""
from comfy_api.latest import io

from ..pnp_injection.flow import preview as flow_preview
from ..pnp_injection.unet import preview
from .flux import FluxFeatureBank
from .types import CATEGORY, FLUX_CATEGORY, FeatureBank

IMAGE_TIP = "At the source image's size (each feature cell a block of pixels); one picture per source row."


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
            outputs=[io.Image.Output("image", display_name="image", tooltip=IMAGE_TIP)],
        )

    @classmethod
    def execute(cls, feature_bank, step, features, block, transformer_index) -> io.NodeOutput:
        kind = "resblock" if features == "resblock" else "attention"
        return io.NodeOutput(preview.preview(feature_bank, step, kind, None if block < 0 else block,
                                             transformer_index))


class PnPFluxFeaturePreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPFluxFeaturePreview",
            display_name="PnP Flux/Chroma/HunyuanVideo Feature Preview",
            category=FLUX_CATEGORY,
            description="The first three principal components of a Flux-family bank's kept features (Flux.1, Chroma, "
                        "Flux.2, HunyuanVideo) as an RGB image (the paper's figure 3): the structure the injection "
                        "carries over from the source, one tensor of one block at one step.",
            inputs=[
                FluxFeatureBank.Input("feature_bank", tooltip="From a PnP Flux/Chroma/HunyuanVideo Inversion node or PnP Flux/Chroma/HunyuanVideo Load Feature "
                                                              "Bank."),
                io.String.Input("site", default="",
                                tooltip="The kept tensor to show, as <double|single>.<block>.<q|k|v>, e.g. "
                                        "'single.20.v'; empty: the bank's first. An error lists what the bank holds."),
                io.Int.Input("step", default=-1, min=-1, max=1000,
                             tooltip="Sampling step (0 = the noisiest); -1: the first the bank holds. Only kept steps "
                                     "can be shown (PnP Flux/Chroma/HunyuanVideo Inversion's keep_steps; KV-Edit: from skip_steps on)."),
                io.Int.Input("frame", default=0, min=-1, max=10000,
                             tooltip="For a video bank (HunyuanVideo): the latent frame (each is 4 video frames, the "
                                     "first 1); -1: every frame, one picture each. Images have frame 0 only."),
            ],
            outputs=[io.Image.Output("image", display_name="image", tooltip=IMAGE_TIP + " A KV-Edit bank keeps the "
                                                                                        "background only: the edited "
                                                                                        "region is black.")],
        )

    @classmethod
    def execute(cls, feature_bank, site, step, frame) -> io.NodeOutput:
        return io.NodeOutput(flow_preview.preview(feature_bank, site, step, frame))
