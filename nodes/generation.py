from comfy_api.latest import io

import comfy.samplers

from ..pnp_injection.unet import generation
from .types import CATEGORY, Trajectory


class PnPGenerateSource(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPGenerateSource",
            display_name="PnP Generate Source",
            category=CATEGORY,
            description="Generates the source image from noise and records its sampling path as the trajectory, "
                        "so PnP reads the exact generation path: no inversion, no inversion error.",
            inputs=[
                io.Model.Input("model", tooltip="The model to generate with; capture and translate with the same one."),
                io.Conditioning.Input("positive", tooltip="The source prompt; also the source pass's prompt in capture."),
                io.Conditioning.Input("negative", tooltip="Negative prompt of the generation."),
                io.Latent.Input("latent", tooltip="An empty latent of the size to generate (Empty Latent Image)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed of the generation."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Sampling steps; the translation uses the same schedule."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="Guidance of the generation."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="ddim_uniform",
                               tooltip="Sampling schedule, shared with the translation."),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="ddim",
                               tooltip="A deterministic sampler (ddim, euler) makes the recorded path the image's own."),
            ],
            outputs=[
                Trajectory.Output("trajectory", display_name="trajectory", tooltip="The generation path: feed PnP Capture Features."),
                io.Latent.Output("source_latent", display_name="latent", tooltip="The generated source image: VAE Decode it to see it."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, cfg, scheduler, sampler_name) -> io.NodeOutput:
        trajectory, samples = generation.generate(model, latent["samples"], positive, negative, cfg, seed, steps,
                                                  scheduler, sampler_name)
        return io.NodeOutput(trajectory, {"samples": samples})
