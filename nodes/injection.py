from comfy_api.latest import io

import comfy.samplers

from ..pnp_injection import PnPError
from ..pnp_injection.unet import guidance, patches, sampling
from .types import CATEGORY, FeatureBank, Trajectory, mask_input

FEATURE_TIP = ("A fraction of the steps (0-1, not a count) with the source's ResBlock features injected (paper: 0.8). "
               "Higher keeps more of the source's structure; lower follows the prompt more freely.")
ATTENTION_TIP = ("A fraction of the steps (0-1, not a count) with the source's self-attention queries/keys injected "
                 "(paper: 0.5). "
                 "Higher keeps the layout tighter; too high can leak the source's appearance.")


def _negative_schedule_inputs():
    return [
        io.Float.Input("negative_alpha", default=1.0, min=0.0, max=1.0, step=0.01, optional=True,
                       tooltip="Negative-prompt schedule of the latent-diffusion PnP code: weight of the unconditional "
                               "prompt against `source_negative`. 1 with `constant` is ordinary guidance (the default)."),
        io.Combo.Input("negative_schedule", options=guidance.SCHEDULES, default="constant", optional=True,
                       tooltip="How the unconditional weight changes over the steps: constant, linear (1 - i/(N-1)) or "
                               "exp (exp(-6 i/(N-1))). With linear and exp the negative prompt weighs more as sampling goes on."),
        io.Conditioning.Input("source_negative", optional=True,
                              tooltip="The negative prompt blended in by the schedule. Default: the source prompt "
                                      "(pushes the result away from the source's appearance)."),
    ]


def _injection_inputs():
    return [
        io.Float.Input("feature_injection", default=0.8, min=0.0, max=1.0, step=0.01, tooltip=FEATURE_TIP),
        io.Float.Input("attention_injection", default=0.5, min=0.0, max=1.0, step=0.01, tooltip=ATTENTION_TIP),
    ]


class PnPApplyInjection(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPApplyInjection",
            display_name="PnP Apply Feature Injection",
            category=CATEGORY,
            description="A patched copy of the model that injects the bank while sampling, for stock samplers "
                        "(KSamplerAdvanced without noise, SamplerCustomAdvanced with PnP Sigmas) on the bank's schedule.",
            inputs=[
                io.Model.Input("model", tooltip="The model the bank was captured with. It is not modified."),
                FeatureBank.Input("feature_bank", tooltip="From PnP Capture Features."),
                *_injection_inputs(),
                mask_input(),
            ],
            outputs=[io.Model.Output("patched_model", display_name="model", tooltip="A patched clone; sample it from the inverted latent on the bank's schedule.")],
        )

    @classmethod
    def execute(cls, model, feature_bank, feature_injection, attention_injection, mask=None) -> io.NodeOutput:
        return io.NodeOutput(patches.apply_injection(model, feature_bank, feature_injection, attention_injection, mask))


class PnPSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPSampler",
            display_name="PnP Sampler",
            category=CATEGORY,
            description="Samples the target prompt from the source's inverted latent with PnP injection: "
                        "the source's structure, the prompt's appearance.",
            inputs=[
                io.Model.Input("model", tooltip="The unpatched model the bank was captured with."),
                FeatureBank.Input("feature_bank", tooltip="From PnP Capture Features."),
                io.Conditioning.Input("positive", tooltip="The target prompt."),
                io.Conditioning.Input("negative", tooltip="The paper uses \"ugly, blurry, black, low res, unrealistic\"."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance (paper: 7.5). Higher follows the prompt more strongly."),
                *_injection_inputs(),
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES, default="ddim",
                               tooltip="ddim (deterministic, eta 0) is the paper's. Ancestral/SDE samplers add fresh noise and weaken the structure."),
                *_negative_schedule_inputs(),
                mask_input(),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent", tooltip="The translated latent: VAE Decode it.")],
        )

    @classmethod
    def execute(cls, model, feature_bank, positive, negative, cfg, feature_injection, attention_injection,
                sampler_name, negative_alpha=1.0, negative_schedule="constant", source_negative=None,
                mask=None) -> io.NodeOutput:
        samples = sampling.pnp_sample(model, feature_bank, positive, negative, cfg, feature_injection,
                                      attention_injection, sampler_name, negative_alpha, negative_schedule,
                                      source_negative, mask)
        return io.NodeOutput({"samples": samples})


class PnPSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPSigmas",
            display_name="PnP Sigmas",
            category=CATEGORY,
            description="The schedule of a feature bank or trajectory, for SamplerCustomAdvanced.",
            inputs=[
                FeatureBank.Input("feature_bank", optional=True, tooltip="A bank from PnP Capture Features."),
                Trajectory.Input("trajectory", optional=True, tooltip="Or a trajectory from PnP DDIM Inversion."),
            ],
            outputs=[io.Sigmas.Output("sigmas", display_name="sigmas", tooltip="sigma_0 ... 0: sample with these so injection stays keyed to the source's steps.")],
        )

    @classmethod
    def execute(cls, feature_bank=None, trajectory=None) -> io.NodeOutput:
        source = feature_bank if feature_bank is not None else trajectory
        if source is None:
            raise PnPError("PnP Sigmas needs a feature bank or a trajectory: connect one of them.")
        return io.NodeOutput(source.sigmas.clone())


class PnPGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPGuider",
            display_name="PnP Guider (negative-prompt schedule)",
            category=CATEGORY,
            description="Classifier-free guidance with the latent-diffusion PnP negative-prompt schedule, for "
                        "SamplerCustomAdvanced. Use it with the model from PnP Apply Feature Injection.",
            inputs=[
                io.Model.Input("model", tooltip="Usually the patched model from PnP Apply Feature Injection."),
                io.Conditioning.Input("positive", tooltip="The target prompt."),
                io.Conditioning.Input("negative", tooltip="The unconditional prompt (the latent-diffusion code uses \"\")."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Guidance scale (the latent-diffusion code uses 10 for real images)."),
                io.Float.Input("negative_alpha", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Weight of the unconditional prompt against `source_negative` at the first step."),
                io.Combo.Input("negative_schedule", options=guidance.SCHEDULES, default="linear",
                               tooltip="constant, linear (1 - i/(N-1)) or exp (exp(-6 i/(N-1))): with linear and exp "
                                       "the negative prompt weighs more as sampling goes on."),
                FeatureBank.Input("feature_bank", optional=True,
                                  tooltip="Its source prompt is the default `source_negative`."),
                io.Conditioning.Input("source_negative", optional=True,
                                      tooltip="The negative prompt blended in. Default: the bank's source prompt."),
            ],
            outputs=[io.Guider.Output("guider", display_name="guider", tooltip="For SamplerCustomAdvanced, with PnP Sigmas.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, negative_alpha, negative_schedule, feature_bank=None,
                source_negative=None) -> io.NodeOutput:
        guider = guidance.NegativeScheduleGuider(model, negative_alpha, negative_schedule)
        guider.set_conds(positive, negative, sampling.source_negative_or_prompt(feature_bank, source_negative))
        guider.set_cfg(cfg)
        return io.NodeOutput(guider)
