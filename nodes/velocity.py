"""The velocity-edit nodes: FlowEdit, UniEdit-Flow and RF-Inversion on any rectified-flow model, as one node per
method and as ComfyUI parts (an edit GUIDER, SAMPLERs, inversions with their NOISE and SIGMAS) for
SamplerCustomAdvanced. Thin shells over `pnp_injection.velocity`."""
from comfy_api.latest import io

from ..pnp_injection.velocity import flowedit, rf_inversion, uniedit
from ..pnp_injection.velocity.guider import EditGuider
from ..pnp_injection.velocity.inversion import InvertedNoise
from ..pnp_injection.velocity.sampling import AUTO, source_samples
from .types import EDIT_CATEGORY, GUIDER_CATEGORY, SAMPLER_CATEGORY, mask_input

Inversion = io.Custom("PNP_FLOW_INVERSION")

MODEL_TIP = ("Any rectified-flow model (Flux.1/2, Chroma, SD3/3.5, AuraFlow, Wan 2.1/2.2, HunyuanVideo and 1.5, "
             "LTX-Video, Qwen-Image, Lumina2/Z-Image, HiDream). It is not modified.")
SOURCE_LATENT_TIP = ("The source image or video, VAE-encoded with the model's VAE. A noise_mask on it (Set Latent Noise "
                     "Mask) makes the edit regional.")
SOURCE_PROMPT_TIP = "A description of the source (the edit moves from this prompt to `positive`)."
TARGET_TIP = "The target prompt: the source as it should become. A batch of prompts gives one edit per prompt."
NEGATIVE_TIP = ("The negative prompt of classifier-free guidance (official: empty). Needed where a scale above 1 applies "
                "to a model with CFG (SD3, Wan, Qwen-Image, ...); unused on guidance-distilled models (Flux.1 dev).")
INVERSION_PROMPT_TIP = "The prompt of the inversion (official: empty; connect a text encode of no text)."
AUTO_TIP = " -1: the official value for this model."
SCALE_TIP = ("On guidance-distilled models (Flux.1 dev, Flux.2, HunyuanVideo) the embedded guidance; on others "
             "classifier-free guidance with `negative`.")
# The sockets every velocity node shares, one meaning each (tests/test_node_docs.py MEANINGS).
MODEL = io.Model.Input("model", tooltip=MODEL_TIP)
SOURCE_LATENT = io.Latent.Input("latent", tooltip=SOURCE_LATENT_TIP)
SOURCE_PROMPT = io.Conditioning.Input("source_prompt", tooltip=SOURCE_PROMPT_TIP)
TARGET = io.Conditioning.Input("positive", tooltip=TARGET_TIP)
NEGATIVE = io.Conditioning.Input("negative", optional=True, tooltip=NEGATIVE_TIP)
INVERSION_PROMPT = io.Conditioning.Input("inversion_prompt", tooltip=INVERSION_PROMPT_TIP)
EDITED_LATENT = io.Latent.Output("edited_latent", display_name="latent", tooltip="The edited latent: VAE Decode it.")


def _steps(official: str):
    return io.Int.Input("steps", default=AUTO, min=AUTO, max=1000,
                        tooltip=f"Steps of the schedule ({official}), the method's official schedule for this model." +
                                AUTO_TIP)


def _scale(name: str, official: str, what: str):
    return io.Float.Input(name, default=AUTO, min=AUTO, max=100.0, step=0.1,
                          tooltip=f"{what} ({official}). {SCALE_TIP}{AUTO_TIP}")


FLOWEDIT_KNOBS = [
    io.Int.Input("n_max", default=AUTO, min=AUTO, max=1000,
                 tooltip="Edited steps, counted from the end of the schedule (official: 24 of 28 on Flux, 33 of 50 on "
                         "SD3). More lets the edit change more (shape, layout); fewer keeps more of the source." + AUTO_TIP),
    io.Int.Input("n_min", default=0, min=0, max=1000,
                 tooltip="Last steps sampled plainly from the target instead of edited (official: 0). Raising it adds "
                         "detail the target asks for, at the cost of the source's fine structure."),
    io.Int.Input("n_avg", default=1, min=1, max=64,
                 tooltip="Noise draws averaged per step (official: 1). More is steadier and slower (2 evaluations each)."),
]


class PnPFlowEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPFlowEdit", display_name="PnP FlowEdit", category=EDIT_CATEGORY,
            description="FlowEdit (Kulikov et al., ICCV 2025): edits a source image or video toward the target prompt "
                        "without inversion, on any rectified-flow model (Flux, SD3.5, Wan video, Qwen-Image, ...). "
                        "Knobs at -1 take the official values (Flux: 28 steps, n_max 24, guidance 1.5 and 5.5; SD3: 50 "
                        "steps, n_max 33, CFG 3.5 and 13.5).",
            inputs=[
                MODEL,
                SOURCE_LATENT,
                SOURCE_PROMPT,
                TARGET,
                NEGATIVE,
                _steps("official: 28 on Flux, 50 on SD3"),
                *FLOWEDIT_KNOBS,
                _scale("source_scale", "official: 1.5 on Flux, 3.5 on SD3", "Guidance of the source prompt"),
                _scale("target_scale", "official: 5.5 on Flux, 13.5 on SD3",
                       "Guidance of the target prompt: higher follows the prompt more strongly"),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the noise FlowEdit draws at each step: another seed gives another edit."),
                mask_input(),
            ],
            outputs=[EDITED_LATENT],
        )

    @classmethod
    def execute(cls, model, latent, source_prompt, positive, steps, n_max, n_min, n_avg, source_scale, target_scale,
                seed, negative=None, mask=None) -> io.NodeOutput:
        return io.NodeOutput({"samples": flowedit.edit(model, latent, source_prompt, positive, negative, steps, n_max,
                                                       n_min, n_avg, source_scale, target_scale, seed, mask)})


UNIEDIT_KNOBS = [
    io.Float.Input("alpha", default=uniedit.ALPHA, min=0.0, max=1.0, step=0.01,
                   tooltip="Share of the steps inverted, then edited (official: 0.6; the authors recommend 0.6 to 0.8). "
                           "Higher edits more (shape, layout); lower keeps more of the source."),
]
OMEGA = io.Float.Input("omega", default=uniedit.OMEGA, min=0.0, max=100.0, step=0.1,
                       tooltip="Strength of the edit's correction along the velocity difference (official: 5). Higher "
                               "follows the target prompt more; 0 is velocity fusion alone.")
RULE = io.Combo.Input("rule", options=[uniedit.AUTO, *uniedit.RULES], default=uniedit.AUTO,
                      tooltip="How the region-aware mask is made. flux: the official FLUX code's (|v_tar - v_src| per "
                              "2x2 token, min-max over the image, round(alpha N) steps). scheduler: the official "
                              "diffusers schedulers' (signed difference, per latent cell, floor(alpha N) steps). auto: "
                              "flux on Flux.1, scheduler on every other model, as the official code runs them.")


class PnPUniEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPUniEdit", display_name="PnP UniEdit-Flow", category=EDIT_CATEGORY,
            description="UniEdit-Flow (Jiao et al., ICLR 2026): Uni-Inv inverts the source part of the way, then Uni-Edit "
                        "samples it back with the velocity difference of the source and target prompts, on any "
                        "rectified-flow model (Flux, SD3, Wan video, ...). Official: 15 steps, alpha 0.6, omega 5, no CFG.",
            inputs=[
                MODEL,
                SOURCE_LATENT,
                INVERSION_PROMPT,
                SOURCE_PROMPT,
                TARGET,
                NEGATIVE,
                _steps("official: 15"),
                *UNIEDIT_KNOBS, OMEGA,
                _scale("scale", "official: 1, no classifier-free guidance", "Guidance of both prompts"),
                RULE,
                mask_input(),
            ],
            outputs=[EDITED_LATENT],
        )

    @classmethod
    def execute(cls, model, latent, inversion_prompt, source_prompt, positive, steps, alpha, omega, scale, rule,
                negative=None, mask=None) -> io.NodeOutput:
        return io.NodeOutput({"samples": uniedit.edit(model, latent, inversion_prompt, source_prompt, positive, negative,
                                                      steps, alpha, omega, scale, rule, mask)})


RF_KNOBS = [
    io.Float.Input("eta", default=rf_inversion.ETA, min=0.0, max=1.0, step=0.01,
                   tooltip="Pull of the sampling toward the source, over the controlled steps (official: 0.9). Higher "
                           "keeps more of the source; lower edits more."),
    io.Float.Input("start", default=rf_inversion.START, min=0.0, max=1.0, step=0.01,
                   tooltip="Where the pull begins, as a fraction of the steps (official: 0)."),
    io.Float.Input("stop", default=rf_inversion.STOP, min=0.0, max=1.0, step=0.01,
                   tooltip="Where the pull ends, as a fraction of the steps (official: 0.25, 7 of 28). Later keeps more "
                           "of the source; earlier edits more."),
]
GAMMA = io.Float.Input("gamma", default=rf_inversion.GAMMA, min=0.0, max=1.0, step=0.01,
                       tooltip="Pull of the inversion toward the random noise (official: 0.5). Higher makes the inverted "
                               "latent more like noise: easier to edit, less faithful.")


class PnPRFInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPRFInversion", display_name="PnP RF-Inversion", category=EDIT_CATEGORY,
            description="RF-Inversion (Rout et al., ICLR 2025): a controlled forward ODE inverts the source, then a "
                        "controlled reverse ODE samples the target prompt while pulling toward the source, on any "
                        "rectified-flow model. Official (Flux.1): 28 steps, gamma 0.5, eta 0.9 over the first 25%, "
                        "guidance 3.5.",
            inputs=[
                MODEL,
                SOURCE_LATENT,
                io.Conditioning.Input("inversion_prompt", tooltip=INVERSION_PROMPT_TIP + " The official inversion runs "
                                      "guidance-distilled models at guidance 0."),
                TARGET,
                NEGATIVE,
                _steps("official: 28"),
                GAMMA, *RF_KNOBS,
                _scale("target_scale", "official: 3.5", "Guidance of the target prompt"),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="Seed of the random noise the inversion steers toward."),
                mask_input(),
            ],
            outputs=[EDITED_LATENT],
        )

    @classmethod
    def execute(cls, model, latent, inversion_prompt, positive, steps, gamma, eta, start, stop, target_scale, seed,
                negative=None, mask=None) -> io.NodeOutput:
        return io.NodeOutput({"samples": rf_inversion.edit(model, latent, inversion_prompt, positive, negative, steps,
                                                           gamma, eta, start, stop, target_scale, seed, mask)})


class PnPEditGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPEditGuider", display_name="PnP Edit Guider", category=GUIDER_CATEGORY,
            description="A GUIDER holding the source and the target prompts of one model, for FlowEdit Sampler (PnP) and "
                        "UniEdit Sampler (PnP) in SamplerCustomAdvanced.",
            inputs=[
                MODEL,
                SOURCE_PROMPT,
                TARGET,
                NEGATIVE,
                _scale("source_scale", "official: the sampler's method's", "Guidance of the source prompt"),
                _scale("target_scale", "official: the sampler's method's", "Guidance of the target prompt"),
            ],
            outputs=[io.Guider.Output("guider", display_name="guider", tooltip="For SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, source_prompt, positive, source_scale, target_scale, negative=None) -> io.NodeOutput:
        return io.NodeOutput(EditGuider(model, source_prompt, positive, negative, source_scale, target_scale))


class PnPFlowEditSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPFlowEditSampler", display_name="FlowEdit Sampler (PnP)", category=SAMPLER_CATEGORY,
            description="FlowEdit as a SAMPLER for SamplerCustomAdvanced, with PnP Edit Guider, Random Noise, any sigmas "
                        "and the source latent as latent_image.",
            inputs=FLOWEDIT_KNOBS,
            outputs=[io.Sampler.Output("sampler", display_name="sampler", tooltip="For SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, n_max, n_min, n_avg) -> io.NodeOutput:
        return io.NodeOutput(flowedit.sampler(n_max, n_min, n_avg))


def _inversion_outputs(method: str):
    return [
        Inversion.Output("inversion", display_name="inversion", tooltip=f"For {method} Sampler (PnP)."),
        io.Noise.Output("inverted_noise", display_name="noise",
                        tooltip="For SamplerCustomAdvanced: makes it start at the inverted latent (give it the source "
                                "latent as latent_image)."),
        io.Sigmas.Output("edit_sigmas", display_name="sigmas", tooltip="The edit's sigmas, for SamplerCustomAdvanced."),
    ]


class PnPUniInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPUniInversion", display_name="PnP Uni-Inv Inversion", category=EDIT_CATEGORY,
            description="Uni-Inv (UniEdit-Flow): inverts the source along the first `alpha` of the sigmas, for UniEdit "
                        "Sampler (PnP) in SamplerCustomAdvanced.",
            inputs=[
                MODEL,
                SOURCE_LATENT,
                INVERSION_PROMPT,
                io.Sigmas.Input("sigmas", tooltip="The edit's whole schedule, 1 ... 0 (any scheduler; PnP Edit Sigmas gives "
                                                  "the official one)."),
                *UNIEDIT_KNOBS, RULE,
                io.Float.Input("guidance", default=uniedit.GUIDANCE, min=0.0, max=100.0, step=0.1,
                               tooltip="Embedded guidance of the inversion on guidance-distilled models (official: 1). "
                                       "Other models invert without guidance."),
            ],
            outputs=_inversion_outputs("UniEdit"),
        )

    @classmethod
    def execute(cls, model, latent, inversion_prompt, sigmas, alpha, rule, guidance) -> io.NodeOutput:
        inversion = uniedit.invert(model, source_samples(model, latent), inversion_prompt, sigmas, alpha, rule, guidance,
                                   latent.get("noise_mask"))
        return io.NodeOutput(inversion, InvertedNoise(inversion), inversion.sigmas.clone())


class PnPUniEditSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPUniEditSampler", display_name="UniEdit Sampler (PnP)", category=SAMPLER_CATEGORY,
            description="Uni-Edit (UniEdit-Flow) as a SAMPLER for SamplerCustomAdvanced, with PnP Edit Guider and the "
                        "noise and sigmas of PnP Uni-Inv Inversion.",
            inputs=[Inversion.Input("inversion", tooltip="From PnP Uni-Inv Inversion."), OMEGA],
            outputs=[io.Sampler.Output("sampler", display_name="sampler", tooltip="For SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, inversion, omega) -> io.NodeOutput:
        return io.NodeOutput(uniedit.sampler(inversion, omega))


class PnPRFInversionInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPRFInversionInvert", display_name="PnP RF-Inversion Invert", category=EDIT_CATEGORY,
            description="RF-Inversion's controlled forward ODE: inverts the source toward the noise, for RF-Inversion "
                        "Sampler (PnP) in SamplerCustomAdvanced.",
            inputs=[
                MODEL,
                SOURCE_LATENT,
                INVERSION_PROMPT,
                io.Noise.Input("noise", tooltip="The random noise the inversion steers toward (Random Noise)."),
                io.Sigmas.Input("sigmas", tooltip="The edit's schedule, 1 ... 0 (any scheduler; PnP Edit Sigmas gives the "
                                                  "official one)."),
                GAMMA,
                io.Float.Input("guidance", default=rf_inversion.INVERSION_GUIDANCE, min=0.0, max=100.0, step=0.1,
                               tooltip="Embedded guidance of the inversion on guidance-distilled models (official: 0). "
                                       "Other models invert without guidance."),
            ],
            outputs=_inversion_outputs("RF-Inversion"),
        )

    @classmethod
    def execute(cls, model, latent, inversion_prompt, noise, sigmas, gamma, guidance) -> io.NodeOutput:
        inversion = rf_inversion.invert(model, source_samples(model, latent), inversion_prompt, sigmas,
                                        noise.generate_noise(latent), gamma, guidance, latent.get("noise_mask"))
        return io.NodeOutput(inversion, InvertedNoise(inversion), inversion.sigmas.clone())


class PnPRFInversionSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPRFInversionSampler", display_name="RF-Inversion Sampler (PnP)", category=SAMPLER_CATEGORY,
            description="RF-Inversion's controlled reverse ODE as a SAMPLER for SamplerCustomAdvanced, with any guider "
                        "of the target prompt and the noise and sigmas of PnP RF-Inversion Invert.",
            inputs=[Inversion.Input("inversion", tooltip="From PnP RF-Inversion Invert."), *RF_KNOBS],
            outputs=[io.Sampler.Output("sampler", display_name="sampler", tooltip="For SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, inversion, eta, start, stop) -> io.NodeOutput:
        return io.NodeOutput(rf_inversion.sampler(inversion, eta, start, stop))


METHODS = {"FlowEdit": flowedit, "UniEdit-Flow": uniedit, "RF-Inversion": rf_inversion}


class PnPEditSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPEditSigmas", display_name="PnP Edit Sigmas", category=EDIT_CATEGORY,
            description="A method's official schedule for this model and source, for SamplerCustomAdvanced (the schedule "
                        "the one-node edits use).",
            inputs=[
                MODEL,
                io.Latent.Input("latent", tooltip="The source latent (Flux's schedule depends on its size)."),
                io.Combo.Input("method", options=list(METHODS), default="FlowEdit", tooltip="The edit the sigmas are for."),
                _steps("official: FlowEdit 28 on Flux / 50 on SD3, UniEdit-Flow 15, RF-Inversion 28"),
            ],
            outputs=[io.Sigmas.Output("sigmas", display_name="sigmas", tooltip="1 ... 0, for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, latent, method, steps) -> io.NodeOutput:
        return io.NodeOutput(METHODS[method].official_sigmas(model, steps, latent["samples"].shape))


VELOCITY_NODES = [PnPFlowEdit, PnPUniEdit, PnPRFInversion, PnPEditGuider, PnPFlowEditSampler, PnPUniInversion,
                  PnPUniEditSampler, PnPRFInversionInvert, PnPRFInversionSampler, PnPEditSigmas]
