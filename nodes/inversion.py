from comfy_api.latest import io

import comfy.samplers

from ..pnp_injection.unet import inversion
from .types import CATEGORY, Trajectory


class PnPInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPInversion",
            display_name="PnP DDIM Inversion",
            category=CATEGORY,
            description="Deterministic DDIM inversion of the source latent: the noise path that "
                        "PnP reads the source's structure from.",
            inputs=[
                io.Model.Input("model", tooltip="The SD 1.x / 2.x / SDXL model; use the same one for capture and sampling."),
                io.Latent.Input("latent", tooltip="The source image, VAE-encoded. A noise_mask on it (Set Latent Noise Mask) "
                                                 "makes the edit regional: outside the mask the result is the source."),
                io.Conditioning.Input("conditioning", tooltip="The inversion prompt. The paper uses an empty prompt (CLIP Text Encode of \"\")."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="Sampling steps of the translation. The bank, PnP Sampler and any sampler you use must have this many steps."),
                io.Int.Input("inversion_steps", default=999, min=1, max=10000,
                             tooltip="Model evaluations of the inversion (at least `steps`). 999 visits every timestep: the official fidelity. "
                                     "Equal to `steps` is the fast mode: about 20x faster, less faithful to the source."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="ddim_uniform",
                               tooltip="Sampling schedule. ddim_uniform is the official DDIM schedule (timesteps 981, 961, ..., 1 for 50 steps)."),
            ],
            outputs=[
                Trajectory.Output("trajectory", display_name="trajectory", tooltip="The source latent at every sampling sigma: feed PnP Capture Features."),
                io.Latent.Output("inverted_latent", display_name="latent", tooltip="The inverted start latent: usable with KSamplerAdvanced (add_noise disabled) on the same schedule."),
            ],
        )

    @classmethod
    def execute(cls, model, latent, conditioning, steps, inversion_steps, scheduler) -> io.NodeOutput:
        trajectory = inversion.invert(model, latent["samples"], conditioning, steps, inversion_steps, scheduler,
                                      latent.get("noise_mask"))
        start = {"samples": inversion.to_user_latent(model, trajectory.latents[0])}
        return io.NodeOutput(trajectory, start)
