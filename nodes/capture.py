import torch
from comfy_api.latest import io

from ..pnp_injection import placement
from ..pnp_injection.unet import bank as banks
from ..pnp_injection.unet import layers
from .types import CATEGORY, FeatureBank, Trajectory, bank_input

PRECISIONS = {"model": None, "half": torch.float16}


class PnPCaptureFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPCaptureFeatures",
            display_name="PnP Capture Features",
            category=CATEGORY,
            description="Runs the source through the U-Net at the first steps of its trajectory and keeps the "
                        "decoder ResBlock features and the self-attention inputs whose queries/keys PnP injects.",
            inputs=[
                io.Model.Input("model", tooltip="The model the trajectory was inverted with."),
                Trajectory.Input("trajectory", tooltip="From PnP DDIM Inversion."),
                io.Float.Input("feature_steps", default=0.8, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps whose ResBlock features the bank keeps: the most `feature_injection` can use later."),
                io.Float.Input("attention_steps", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps whose self-attention inputs (source of the injected queries/keys) the bank keeps: the most `attention_injection` can use later."),
                io.Combo.Input("layers", options=layers.PRESET_NAMES, default="auto",
                               tooltip="Which layers to keep. auto: the paper's (SD 1.x/2.x: ResBlock of decoder layer 4, "
                                       "self-attention of layers 4-11); SDXL: output block 0 ResBlock, attention of output blocks 0-2."),
                io.String.Input("custom_layers", default="", optional=True,
                                tooltip="Overrides `layers` when not empty, e.g. 'res:output.4; attn:output.4-11@0' "
                                        "(output block numbers; @ transformer index, @* for all)."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="The source pass's prompt. Default: the inversion prompt (the paper's empty prompt)."),
                io.Combo.Input("bank_precision", options=list(PRECISIONS), default="model", optional=True,
                               tooltip="model: lossless, in the dtype the U-Net computes in (fp16 on most GPUs). "
                                       "half: half the memory for fp32 runs, with a small change of the output."),
                io.Combo.Input("bank_device", options=list(placement.DEVICES), default="offload", optional=True,
                               tooltip="offload: ComfyUI's intermediate device (system memory unless --gpu-only); each "
                                       "step's tensors reach the GPU just before they are needed, so the bank holds no GPU "
                                       "memory between runs. model: keep it on the GPU (no transfers). cpu: system memory always."),
                bank_input(),
            ],
            outputs=[FeatureBank.Output("feature_bank", display_name="feature_bank", tooltip="Source features per step: feed PnP Sampler or PnP Apply Feature Injection.")],
        )

    @classmethod
    def execute(cls, model, trajectory, feature_steps, attention_steps, layers, custom_layers="",
                conditioning=None, bank_precision="model", bank_device="offload", bank="auto") -> io.NodeOutput:
        return io.NodeOutput(banks.capture(model, trajectory, feature_steps, attention_steps, layers,
                                           custom_layers or "", conditioning, PRECISIONS[bank_precision],
                                           bank_device, bank))
