"""The KV-Edit nodes (Flux): a regional edit that keeps the background's keys and values."""
from comfy_api.latest import io

from ..pnp_injection.flow import kv_edit
from ..pnp_injection.flow import schedule as flux_schedule
from .flux import FluxFeatureBank
from .types import FLUX_CATEGORY, MASK_WHERE, bank_input


class PnPFluxKVEditInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPFluxKVEditInversion",
            display_name="PnP Flux Inversion (KV-Edit)",
            category=FLUX_CATEGORY,
            description="KV-Edit's inversion of a Flux.1 source (Euler steps up to pure noise): keeps the path and the "
                        "keys and values of the background (outside the mask) in every block, for PnP Flux/Chroma/HunyuanVideo Sampler "
                        "(KV-Edit), which generates only the masked region. Defaults: KV-Edit's demo.",
            inputs=[
                io.Model.Input("model", tooltip="A Flux.1 dev model. Use the same model for sampling."),
                io.Latent.Input("latent", tooltip="The source image, VAE-encoded with the Flux VAE; its sides multiples of "
                                                  "16 px. A noise_mask on it (Set Latent Noise Mask) is the mask when "
                                                  "`mask` is not connected."),
                io.Conditioning.Input("conditioning", tooltip="The source prompt (KV-Edit's demo: empty, or a description "
                                                              "of the source)."),
                io.Int.Input("steps", default=kv_edit.STEPS, min=1, max=1000,
                             tooltip="Steps of the inversion and of the edit's schedule (KV-Edit: 28)."),
                io.Int.Input("skip_steps", default=kv_edit.SKIP, min=0, max=999,
                             tooltip="Steps skipped at the start of the edit (KV-Edit: 4). Fewer follow the prompt more "
                                     "and keep less of the masked region's layout; the bank keeps steps from here on."),
                io.Float.Input("guidance", default=kv_edit.INVERSION_GUIDANCE, min=0.0, max=100.0, step=0.1,
                               tooltip="Flux guidance of the inversion (KV-Edit: 1.5)."),
                io.Combo.Input("scheduler", options=flux_schedule.SCHEDULERS, default=flux_schedule.OFFICIAL,
                               tooltip="official: Flux's get_schedule shifted for the source's size, as KV-Edit samples."),
                io.Mask.Input("mask", optional=True,
                              tooltip=f"{MASK_WHERE} KV-Edit uses it hard: every cell above 0 is edited. It wins "
                                      f"over the latent's noise_mask."),
                bank_input(),
            ],
            outputs=[FluxFeatureBank.Output("feature_bank", display_name="feature_bank",
                                            tooltip="The path and the background's keys and values: feed PnP Flux "
                                                    "Sampler (KV-Edit).")],
        )

    @classmethod
    def execute(cls, model, latent, conditioning, steps, skip_steps, guidance, scheduler, mask=None,
                bank="auto") -> io.NodeOutput:
        chosen = mask if mask is not None else latent.get("noise_mask")
        return io.NodeOutput(kv_edit.invert(model, latent["samples"], conditioning, chosen, steps, skip_steps, guidance,
                                            scheduler, bank))


class PnPFluxKVEditSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PnPFluxKVEditSampler",
            display_name="PnP Flux Sampler (KV-Edit)",
            category=FLUX_CATEGORY,
            description="Generates the target prompt in the bank's masked region only: the background's keys and values "
                        "come from the inversion in every block, and outside the mask the result is the source.",
            inputs=[
                io.Model.Input("model", tooltip="The unpatched Flux model of the inversion."),
                FluxFeatureBank.Input("feature_bank", tooltip="From PnP Flux Inversion (KV-Edit); its mask is the edit's."),
                io.Conditioning.Input("positive", tooltip="The target prompt: what the masked region becomes."),
                io.Float.Input("guidance", default=kv_edit.GUIDANCE, min=0.0, max=100.0, step=0.1,
                               tooltip="Flux guidance of the edit (KV-Edit: 5.5). Higher follows the prompt more strongly."),
                io.Float.Input("attn_scale", default=kv_edit.ATTN_SCALE, min=0.0, max=5.0, step=0.1,
                               tooltip="Added to the attention logits on the background's keys (KV-Edit: 1). Higher blends "
                                       "the edit with its surroundings; 0 leaves attention as it is."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent", tooltip="The edited latent: VAE Decode it.")],
        )

    @classmethod
    def execute(cls, model, feature_bank, positive, guidance, attn_scale) -> io.NodeOutput:
        return io.NodeOutput({"samples": kv_edit.sample(model, feature_bank, positive, guidance, attn_scale)})


KV_EDIT_NODES = [PnPFluxKVEditInversion, PnPFluxKVEditSampler]
