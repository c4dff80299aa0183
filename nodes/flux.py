"""The flow wing's nodes, named for the families they serve (Flux.1 and Flux.2 as "Flux", Chroma,
HunyuanVideo): RF-Solver and FireFlow inversion with feature keeping, injected sampling, the inverted
latent as NOISE, the RF-Solver and FireFlow SAMPLERs, and flow bank files. Thin shells over
`pnp_injection.flow`."""
from comfy_api.latest import io

from ..pnp_injection.flow import bank_file as flux_bank_file
from ..pnp_injection.flow import layers as flux_layers
from ..pnp_injection.flow import official
from ..pnp_injection.flow import patches as flux_patches
from ..pnp_injection.flow import sampling as flux_sampling
from ..pnp_injection.flow import schedule as flux_schedule
from ..pnp_injection.errors import PnPError
from ..pnp_injection.flow import solvers
from ..pnp_injection.flow.inversion import invert
from .bank_files import LoadBank, SaveBank
from .types import FLUX_CATEGORY, SAMPLER_CATEGORY, bank_input, mask_input

FluxFeatureBank = io.Custom("PNP_FLUX_BANK")

SOURCE_TIP = ("The source image, VAE-encoded with the Flux VAE. A noise_mask on it (Set Latent Noise Mask) makes the "
              "edit regional: outside the mask the result is the source.")
FAMILIES = "Flux/Chroma/HunyuanVideo"  # in the display names: the node search matches names and display names only
INJECT_TIP = ("A count of sampling steps (not a fraction), from the first, with the source's kept features injected; "
              "at most the bank's `keep_steps`. -1 (auto): every step the bank kept (official: 20 of 25 on Flux.1, 2 "
              "on HunyuanVideo, 1 with FireFlow). Higher keeps more of the source's structure; lower lets the prompt "
              "change more.")
AUTO_STEPS_TIP = ("-1 (auto): the official count for the method on the model's family (RF-Solver-Edit: 25; FireFlow: "
                  "8).")
AUTO_KEEP_TIP = ("-1 (auto): the steps the official edit injects (RF-Solver-Edit: 20 on Flux.1, Chroma and Flux.2, 2 on "
                 "HunyuanVideo; FireFlow: 1).")


class PnPFluxInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPFluxInversion",
            display_name=f"PnP {FAMILIES} Inversion (RF-Solver)",
            category=FLUX_CATEGORY,
            description="Inverts a source latent (Flux.1, Chroma, Flux.2; a HunyuanVideo clip) up to pure noise with "
                        "RF-Solver and keeps the source's "
                        "attention features on the way (RF-Solver-Edit): the feature bank for PnP Flux/Chroma/HunyuanVideo Sampler.",
            inputs=[
                io.Model.Input("model", tooltip="A Flux.1 dev model; or Chroma or Flux.2 (with the 'by analogy' layers); or "
                                                "HunyuanVideo with a video latent (RF-Solver-Edit's official video edit). "
                                                "Use the same model for sampling."),
                io.Latent.Input("latent", tooltip=SOURCE_TIP),
                io.Conditioning.Input("conditioning", tooltip="The source prompt (a description of the source image, or empty). "
                                                              "On HunyuanVideo it is padded to 256 tokens and the padding "
                                                              "masked, as the official code (whose video example's source "
                                                              "prompt is empty)."),
                io.Int.Input("steps", default=official.AUTO, min=official.AUTO, max=1000,
                             tooltip=f"Steps of the inversion and of the sampling. {AUTO_STEPS_TIP}"),
                io.Int.Input("keep_steps", default=official.AUTO, min=official.AUTO, max=1000,
                             tooltip=f"Sampling steps (from the first) whose features the bank keeps: the most `inject` "
                                     f"of the sampler can use. {AUTO_KEEP_TIP}"),
                io.Float.Input("guidance", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Flux guidance of the inversion (official: 1). It replaces any FluxGuidance on the prompt."),
                io.Combo.Input("layers", options=flux_layers.PRESET_NAMES, default="rf-solver-edit",
                               tooltip="rf-solver-edit: values of all tokens in single blocks 20-37 (official, Flux.1; on "
                                       "HunyuanVideo the official video edit's 21-39, with `inject` 1 to 5). "
                                       "rf-solver-edit (by analogy): values of all tokens in the second half of the single blocks, "
                                       "RF-Solver-Edit's rule carried to Chroma and Flux.2, which have no official code (Chroma "
                                       "19-37, Flux.2 24-47). fireflow: values "
                                       "of all tokens in every single block (FireFlow's; PnP Flux/Chroma/HunyuanVideo Inversion (FireFlow) has its "
                                       "other strategies). stable-flow: keys and values of the image tokens in double blocks "
                                       "0,1,17,18 and single blocks 6,9,34,35,37 (Stable Flow injects them at every step: set "
                                       "`keep_steps` and `inject` to `steps`)."),
                io.Combo.Input("solver", options=list(solvers.SOLVERS), default="rf_solver",
                               tooltip="rf_solver: the official second-order step (2 model evaluations per step). fireflow: "
                                       "FireFlow's midpoint step reusing the previous midpoint's velocity (1 evaluation per step, "
                                       "plus 1). euler: first order, 1 evaluation per step; sample with euler then."),
                io.Combo.Input("scheduler", options=flux_schedule.SCHEDULERS, default=flux_schedule.OFFICIAL,
                               tooltip="official: RF-Solver-Edit's schedule, shifted for the source's size, exact at every step "
                                       "count (no ModelSamplingFlux needed). ComfyUI's schedulers (simple, beta, ...) follow the "
                                       "model's ModelSamplingFlux; simple equals official only when the steps divide 10,000."),
                io.String.Input("custom_layers", default="", optional=True,
                                tooltip="Overrides `layers`, e.g. 'single.20-37:v' or 'double.0,1,17,18:k,v; single.6,9,34,35,37:k,v@image' "
                                        "(blocks by number; tensors from q,k,v; '@image' keeps a single block's image tokens only)."),
                bank_input(),
            ],
            outputs=[FluxFeatureBank.Output("feature_bank", display_name="feature_bank",
                                            tooltip="The inverted latent and the kept features: feed PnP Flux/Chroma/HunyuanVideo Sampler, "
                                                    "PnP Flux/Chroma/HunyuanVideo Apply Feature Injection or PnP Flux/Chroma/HunyuanVideo Noise.")],
        )

    @classmethod
    def execute(cls, model, latent, conditioning, steps, keep_steps, guidance, layers, solver, scheduler,
                custom_layers="", bank="auto") -> io.NodeOutput:
        return io.NodeOutput(invert(model, latent["samples"], conditioning, steps, keep_steps, layers, custom_layers,
                                    solver, scheduler, guidance, latent.get("noise_mask"), bank=bank))


# FireFlow's recommended editing settings are official.FIREFLOW; its strategy replace_v is FireFlow's src/edit.py
# lines 277-279 (reuse_v 1).


class PnPFluxFireFlowInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPFluxFireFlowInversion",
            display_name=f"PnP {FAMILIES} Inversion (FireFlow)",
            category=FLUX_CATEGORY,
            description="Inverts a source latent (Flux.1, Chroma, Flux.2; a HunyuanVideo clip) up to pure noise with "
                        "FireFlow's solver (one model evaluation per step, reusing the previous midpoint's velocity) and "
                        "keeps the source's attention features on the way, at FireFlow's recommended settings: 8 steps, "
                        "1 kept step, every single block (0-37 on Flux.1). "
                        "The feature bank for PnP Flux/Chroma/HunyuanVideo Sampler.",
            inputs=[
                io.Model.Input("model", tooltip="A Flux.1 dev model (FireFlow's own); or Chroma, Flux.2 or HunyuanVideo, "
                                                "which take FireFlow's layers over their own single blocks. Use the "
                                                "same model for sampling."),
                io.Latent.Input("latent", tooltip=SOURCE_TIP),
                io.Conditioning.Input("conditioning", tooltip="The source prompt (a description of the source image, or empty)."),
                io.Int.Input("steps", default=official.AUTO, min=official.AUTO, max=1000,
                             tooltip="Steps of the inversion and of the sampling (FireFlow: 8; 15 for hard edits). Each "
                                     "costs one model evaluation, plus one per pass. -1 (auto): 8."),
                io.Int.Input("keep_steps", default=official.AUTO, min=official.AUTO, max=1000,
                             tooltip="Sampling steps (from the first) whose features the bank keeps: the most `inject` of "
                                     "the sampler can use (FireFlow: 1; 2 keeps more of the source). -1 (auto): 1."),
                io.Float.Input("guidance", default=1.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Flux guidance of the inversion (FireFlow: 1). It replaces any FluxGuidance on the prompt."),
                io.Combo.Input("strategy", options=list(flux_layers.STRATEGIES), default="replace_v",
                               tooltip="How the source's features act in every single block (0-37 on Flux.1). replace_v (FireFlow's default): the "
                                       "source's values replace the target's. add_q / add_k / add_v: the source's queries, keys "
                                       "or values are added (q and k after the QK-norm), for edits replace_v resists, at the cost "
                                       "of the source's structure; with replace_v they add control back."),
                io.Combo.Input("scheduler", options=flux_schedule.SCHEDULERS, default=flux_schedule.OFFICIAL,
                               tooltip="official: FireFlow's schedule (Flux's get_schedule, shifted for the source's size), exact "
                                       "at every step count. ComfyUI's schedulers follow the model's ModelSamplingFlux."),
                io.String.Input("custom_layers", default="", optional=True,
                                tooltip="Overrides `strategy`'s layers, e.g. 'single.0-37:v' or 'single.0-37:+q,v' ('+': the "
                                        "source's tensor is added instead of replacing; '@image' keeps a single block's image "
                                        "tokens only)."),
                bank_input(),
            ],
            outputs=[FluxFeatureBank.Output("feature_bank", display_name="feature_bank",
                                            tooltip="The inverted latent and the kept features: feed PnP Flux/Chroma/HunyuanVideo Sampler, "
                                                    "or PnP Flux/Chroma/HunyuanVideo Apply Feature Injection and PnP Flux/Chroma/HunyuanVideo Noise with FireFlow Sampler "
                                                    "(PnP Flux).")],
        )

    @classmethod
    def execute(cls, model, latent, conditioning, steps, keep_steps, guidance, strategy, scheduler,
                custom_layers="", bank="auto") -> io.NodeOutput:
        return io.NodeOutput(invert(model, latent["samples"], conditioning, steps, keep_steps,
                                    flux_layers.fireflow_preset(strategy), custom_layers, "fireflow", scheduler, guidance,
                                    latent.get("noise_mask"), bank=bank, what="PnP Flux/Chroma/HunyuanVideo Inversion (FireFlow)"))


def _inject_input(default: int = official.AUTO, tip: str = INJECT_TIP):
    return io.Int.Input("inject", default=default, min=official.AUTO, max=1000, tooltip=tip)


class PnPFluxSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPFluxSampler",
            display_name=f"PnP {FAMILIES} Sampler",
            category=FLUX_CATEGORY,
            description="Samples the target prompt from the inverted source with the bank's solver, replacing the "
                        "kept features at the first `inject` steps: the source's structure, the prompt's edit.",
            inputs=[
                io.Model.Input("model", tooltip="The unpatched Flux model of the inversion."),
                FluxFeatureBank.Input("feature_bank", tooltip="From PnP Flux/Chroma/HunyuanVideo Inversion."),
                io.Conditioning.Input("positive", tooltip="The target prompt. All-token layers (rf-solver-edit) carry the "
                                                          "source's text values too: on HunyuanVideo the prompts are "
                                                          "padded to 256 tokens and masked as the official code, so any "
                                                          "length up to 256 works; on Chroma the target must encode to "
                                                          "the source's token count."),
                io.Float.Input("guidance", default=official.AUTO, min=official.AUTO, max=100.0, step=0.1,
                               tooltip="Guidance of the target (the embedded guidance of Flux.1, Flux.2 and HunyuanVideo; "
                                       "Chroma has none). It replaces any FluxGuidance on the prompt. -1 (auto): the "
                                       "official value for the bank's method and family (RF-Solver-Edit: 5, 6 on "
                                       "HunyuanVideo; FireFlow: 2)."),
                _inject_input(),
                mask_input(),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent", tooltip="The edited latent: VAE Decode it.")],
        )

    @classmethod
    def execute(cls, model, feature_bank, positive, guidance, inject, mask=None) -> io.NodeOutput:
        return io.NodeOutput({"samples": flux_sampling.pnp_sample(model, feature_bank, positive, guidance, inject, mask)})


class PnPFluxFireFlowSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPFluxFireFlowSampler",
            display_name=f"PnP {FAMILIES} Sampler (FireFlow)",
            category=FLUX_CATEGORY,
            description="Deprecated, kept so that saved workflows load: PnP Flux/Chroma/HunyuanVideo Sampler samples "
                        "every bank with its own solver, FireFlow's included, and takes FireFlow's guidance 2 and its "
                        "kept step when left at auto. This node samples FireFlow banks only, at guidance 2 and inject 1 "
                        "by default.",
            is_deprecated=True,
            inputs=[
                io.Model.Input("model", tooltip="The unpatched Flux model of the inversion."),
                FluxFeatureBank.Input("feature_bank", tooltip="From PnP Flux/Chroma/HunyuanVideo Inversion (FireFlow)."),
                io.Conditioning.Input("positive", tooltip="The target prompt."),
                io.Float.Input("guidance", default=official.FIREFLOW.guidance, min=0.0, max=100.0, step=0.1,
                               tooltip="Flux guidance of the target (FireFlow: 2; 3 for edits it resists). It replaces any "
                                       "FluxGuidance on the prompt."),
                _inject_input(official.FIREFLOW.inject, "Sampling steps (from the first) with the source's kept features injected "
                                               "(FireFlow: 1; 2 keeps more of the source, with 15 steps). At most the bank's "
                                               "`keep_steps`. Higher keeps more of the source's structure; lower lets the "
                                               "prompt change more."),
                mask_input(),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent", tooltip="The edited latent: VAE Decode it.")],
        )

    @classmethod
    def execute(cls, model, feature_bank, positive, guidance, inject, mask=None) -> io.NodeOutput:
        flux_patches.refuse_kv_edit(feature_bank)  # before the solver: PnP Flux/Chroma/HunyuanVideo Sampler refuses it too
        if feature_bank.solver != "fireflow":
            raise PnPError(f"This bank was inverted with {feature_bank.solver}, not FireFlow: sample it with PnP {FAMILIES} "
                           f"Sampler, or invert with PnP Flux/Chroma/HunyuanVideo Inversion (FireFlow).")
        return io.NodeOutput({"samples": flux_sampling.pnp_sample(model, feature_bank, positive, guidance, inject, mask)})


class PnPFluxApplyInjection(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPFluxApplyInjection",
            display_name=f"PnP {FAMILIES} Apply Feature Injection",
            category=FLUX_CATEGORY,
            description="A patched copy of the Flux model that injects the bank while SamplerCustomAdvanced samples it "
                        "(with PnP Flux/Chroma/HunyuanVideo Noise's noise and sigmas, and the RF-Solver sampler).",
            inputs=[
                io.Model.Input("model", tooltip="The Flux model of the inversion. It is not modified."),
                FluxFeatureBank.Input("feature_bank", tooltip="From PnP Flux/Chroma/HunyuanVideo Inversion."),
                _inject_input(),
                mask_input(),
            ],
            outputs=[io.Model.Output("patched_model", display_name="model",
                                     tooltip="A patched clone; sample it with the bank's noise and sigmas.")],
        )

    @classmethod
    def execute(cls, model, feature_bank, inject, mask=None) -> io.NodeOutput:
        return io.NodeOutput(flux_patches.apply_injection(model, feature_bank, inject, mask))


class PnPFluxNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPFluxNoise",
            display_name=f"PnP {FAMILIES} Noise",
            category=FLUX_CATEGORY,
            description="The inverted source as NOISE, and the bank's schedule as SIGMAS, for SamplerCustomAdvanced. "
                        "Flux samplers multiply the latent image by 0 at sigma 1: the inverted latent must enter as the noise.",
            inputs=[FluxFeatureBank.Input("feature_bank", tooltip="From PnP Flux/Chroma/HunyuanVideo Inversion.")],
            outputs=[
                io.Noise.Output("noise", display_name="noise",
                                tooltip="The inverted latent; give SamplerCustomAdvanced any latent of the source's size "
                                        "(e.g. the source latent) as latent_image."),
                io.Sigmas.Output("sigmas", display_name="sigmas", tooltip="The bank's schedule, 1 ... 0."),
            ],
        )

    @classmethod
    def execute(cls, feature_bank) -> io.NodeOutput:
        return io.NodeOutput(flux_sampling.InvertedNoise(feature_bank), feature_bank.sigmas.clone())


def _sampler_schema(node_id: str, display_name: str, description: str) -> io.Schema:
    """A SAMPLER node of ours, with ComfyUI's own SAMPLER nodes; this host's schema has no search
    aliases, so the display name carries "PnP Flux" for the node search (which matches node ids
    and display names)."""
    return io.Schema(
        node_id=node_id, display_name=display_name, category=SAMPLER_CATEGORY, description=description, inputs=[],
        outputs=[io.Sampler.Output("sampler", display_name="sampler", tooltip="For SamplerCustomAdvanced.")],
    )


class PnPRFSolverSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _sampler_schema(
            "PnPRFSolverSampler", "RF-Solver Sampler (PnP Flux)",
            "The second-order RF-Solver step of RF-Solver-Edit as a SAMPLER for SamplerCustomAdvanced (two model "
            "evaluations per step; for flow models such as Flux). Part of the PnP Flux nodes, it sits with ComfyUI's "
            "samplers in sampling/custom_sampling/samplers; search \"pnp flux\" or \"rf-solver\" to find it.")

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(solvers.sampler("rf_solver"))


class PnPFireFlowSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return _sampler_schema(
            "PnPFireFlowSampler", "FireFlow Sampler (PnP Flux)",
            "FireFlow's step as a SAMPLER for SamplerCustomAdvanced: a midpoint step that reuses the previous step's "
            "midpoint velocity (one model evaluation per step, plus one; for flow models such as Flux). The sampler "
            "of a bank from PnP Flux/Chroma/HunyuanVideo Inversion (FireFlow); search \"pnp flux\" or \"fireflow\" to find it.")

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(solvers.sampler("fireflow"))


class PnPFluxSaveBank(SaveBank):
    node_id, display_name, category = "PnPFluxSaveBank", f"PnP {FAMILIES} Save Feature Bank", FLUX_CATEGORY
    description = ("Saves a Flux feature bank to ComfyUI's output folder (safetensors), to edit a source again "
                   "without inverting it.")
    bank_tip, default_prefix = "From PnP Flux/Chroma/HunyuanVideo Inversion.", "pnp_flux_bank"
    bank_type, bank_format, save = FluxFeatureBank, flux_bank_file.FORMAT, staticmethod(flux_bank_file.save)


class PnPFluxLoadBank(LoadBank):
    node_id, display_name, category = "PnPFluxLoadBank", f"PnP {FAMILIES} Load Feature Bank", FLUX_CATEGORY
    description = ("Loads a Flux feature bank saved by PnP Flux/Chroma/HunyuanVideo Save Feature Bank, from ComfyUI's input or output "
                   "folder.")
    file_tip = (f"A Flux bank file ({flux_bank_file.SUFFIX}) in the input folder, or one saved in the output folder "
                f"(marked [output]). Refresh the page to list a bank saved since.")
    output_tip = "Use like the output of PnP Flux/Chroma/HunyuanVideo Inversion."
    bank_type, bank_format, load = FluxFeatureBank, flux_bank_file.FORMAT, staticmethod(flux_bank_file.load)


FLUX_NODES = [PnPFluxInversion, PnPFluxSampler, PnPFluxFireFlowInversion, PnPFluxFireFlowSampler,
              PnPFluxApplyInjection, PnPFluxNoise, PnPRFSolverSampler, PnPFireFlowSampler, PnPFluxSaveBank,
              PnPFluxLoadBank]
