"""Every rectified-flow family of the ComfyUI host (0.3.75) as a shrunk real host model, for the tests of
the velocity-level edits (FlowEdit, UniEdit-Flow, RF-Inversion), which must work on any model whose model
sampling is `comfy.model_sampling.CONST` (denoised = x - sigma * v, noise_scaling sigma * noise +
(1 - sigma) * x).

Each model is the host's supported_models config class with a shrunk unet_config (the one the host's
model_detection would give a real checkpoint, with widths, heads and text widths shrunk; block counts are
the real ones) turned into its model_base class by the config's own get_model, as a ModelPatcher in fp32 on
the CPU, random weights scaled like a real init (init_rf_weights). The host's own model detection
(model_config_from_unet_config) maps every shrunk config back to its class, except Z-Image's, which the host
tells from Lumina 2 by its real width 3840 alone. Flux.1, Chroma, Flux.2 and HunyuanVideo come from the
existing builders (flux_harness, family_reference, hunyuan_reference). Each evaluates a 6x10-cell latent (3
frames for video) in 0.03 to 0.15 s on one CPU thread, Flux.2 (512 text tokens) in 0.35 s.

    make(family, seed=0) -> ModelPatcher
    family_of(model) -> str
    conditioning(model, seed=1, tokens=8, batch=1, start=None) -> CONDITIONING
    latent(model, seed=2, size=(6, 10), frames=None, batch=1) -> user-space latent
    is_video(model), guidance_distilled(model), FAMILIES, SPECS

The table (real sizes -> shrunk; "tokens" is what the host's text encoder returns in this host):

family           supported_models / model_base   model sampling (CONST), t    latent (user space), VAE scale, patches
flux             Flux / Flux                     Flux shift 1.15, t = s       [B, 16, H, W]     /8, 2x2
flux2            Flux2 / Flux2                   Flux shift 2.02, t = s       [B, 128, H, W]    /16, 1x1
chroma           Chroma / Chroma                 Flux shift 1.15, t = s       [B, 16, H, W]     /8, 2x2
sd3              SD3 / SD3                       Discrete shift 3, t = 1000s  [B, 16, H, W]     /8, 2x2
auraflow         AuraFlow / AuraFlow             Discrete shift 1.73, t = s   [B, 4, H, W]      /8, 2x2 (SDXL VAE)
wan21_t2v        WAN21_T2V / WAN21               Discrete shift 8, t = 1000s  [B, 16, T, H, W]  /4 t, /8, 1x2x2
wan21_i2v        WAN21_I2V / WAN21 (i2v)         Discrete shift 8, t = 1000s  [B, 16, T, H, W]  + 20 concat channels
wan22_t2v        WAN22_T2V / WAN22 (TI2V 5B)     Discrete shift 8, t = 1000s  [B, 48, T, H, W]  /4 t, /16, 1x2x2
hunyuan_video    HunyuanVideo / HunyuanVideo     Discrete shift 7, t = 1000s  [B, 16, T, H, W]  /4 t, /8, 1x2x2
hunyuan_video15  HunyuanVideo15 / same           Discrete shift 7, t = 1000s  [B, 32, T, H, W]  /4 t, /16, 1x1x1, +33 ch
ltxv             LTXV / LTXV                     Flux shift 2.37, t = s       [B, 128, T, H, W] /8 t, /32, 1x1x1
qwen_image       QwenImage / QwenImage           Flux shift 1.15, t = s       [B, 16, 1, H, W]  /8, 2x2 (5-D, T = 1)
lumina2          Lumina2 / Lumina2               Discrete shift 6, t = s      [B, 16, H, W]     /8, 2x2
z_image          ZImage / Lumina2                Discrete shift 3, t = s      [B, 16, H, W]     /8, 2x2
hidream          HiDream / HiDream               Discrete shift 1 (*), 1000s  [B, 16, H, W]     /8, 2x2

(t is what the host's model_sampling.timestep(sigma) hands the diffusion model; "Flux" is
ModelSamplingFlux, "Discrete" ModelSamplingDiscreteFlow. (*) sm.HiDream defines sampling_settings twice;
the second, empty one wins, so the host's own default shift is 1.0 (users set 3.0 with ModelSamplingSD3).)

Real sizes -> shrunk (width / heads x head dim / depth / text widths):
- flux: 3072, 24x128, 19+38 blocks, T5 4096, CLIP-L pooled 768 -> 64, 2x32, 19+38, 32, 32 (flux_harness)
- flux2: 6144, 48x128, 8+48, Mistral 3x5120 -> 64, 2x32, 8+48, 32 (family_reference)
- chroma: 3072, 24x128, 19+38, T5 4096 -> 64, 2x32, 19+38, 32 (family_reference)
- sd3 (SD3.5-medium layout: qk rms-norm, dual self-attention in blocks 0-12, pos_embed 384^2):
  1536 = 64 * depth 24, 24x64, 24 blocks, context 4096 (CLIP-L 768 + CLIP-G 1280 zero-padded to 4096, then
  T5 4096), pooled 2048 -> 128 (depth 2: MMDiT ties width to depth), 2x64, num_blocks 24, context 64 (CLIP
  12 + 20 padded to 64, then T5 64), pooled 32, pos_embed 16^2.
- auraflow: 3072, 12x256, 4 double + 32 single, Pile-T5 2048, max_seq 1024 -> 64, 2x32, 4 + 32, 2048 (kept:
  sm.AuraFlow matches on cond_seq_dim 2048), 256.
- wan21_t2v (1.3B): 1536, 12x128, 30 blocks, ffn 8960, umT5 4096 -> 64, 2x32, 30, ffn 128, 32.
- wan21_i2v (14B): 5120, 40x128, 40 blocks, ffn 13824, in 36, CLIP-H 1280 -> 64, 2x32, 40, 128, in 36, 1280.
- wan22_t2v (5B TI2V): 3072, 24x128, 30 blocks, ffn 14336, in/out 48 -> 64, 2x32, 30, 128, 48.
- hunyuan_video: 3072, 24x128, 20+40, llama 4096, CLIP-L 768 -> 64, 2x32, 20+40, 32, 32 (hunyuan_reference)
- hunyuan_video15: 2048, 16x128, 54 double + 0 single, in 65, out 32, Qwen2.5-VL 3584, ByT5 1472,
  SigLIP 1152 -> 64, 2x32, 54 + 0, 65, 32, 32, 1472 (fixed by the host), 1152.
- ltxv (2B): 2048, 32x64, 28 blocks, T5 4096 -> 64, 2x32, 28, 32.
- qwen_image: 3072, 24x128, 60 blocks, Qwen2.5-VL 3584 -> 64, 2x32, 60, 32.
- lumina2: 2304, 24x96 (8 kv heads), 26 + 2 + 2 refiner layers, Gemma-2 2304 -> 96, 3x32 (1 kv head),
  26 + 2 + 2, 32.
- z_image: 3840, 30x128 (rope axes 32/48/48), 30 + 2 + 2, Qwen3 2560, pad tokens to a multiple of 32 ->
  288, 3x96 (24/36/36), 30 + 2 + 2, 32, 32. (The host's modulation needs min(dim, 256) == its 256-wide time
  embedding, so dim >= 256; and 8/3 * dim must be a multiple of 256 for the host's FFN width (rounded up to
  multiple_of 256) to equal diffusers' int(8/3 * dim) (the twin): 288 is the smallest such width.)
- hidream: 2560, 20x128, 16 double + 32 single, MoE 4 routed / 2 active, T5 4096, Llama-3.1 4096 x 32
  layers, pooled 2048 -> 64, 2x32, 16 + 32, 4 / 2, 32, 32 x 32 layers, 32.

What each family's CONDITIONING carries in this host (conditioning() gives the same keys and layout):
- flux: T5 context (padded, unmasked, to 256 tokens by the tokenizer) and CLIP-L pooled_output.
- flux2 / chroma / hunyuan_video: see family_reference / hunyuan_reference.
- sd3: context = [CLIP-L|CLIP-G (zero-padded in width) x 77 tokens ; T5 x 77+ tokens], pooled_output =
  [CLIP-L pooled | CLIP-G pooled]. No mask.
- auraflow: Pile-T5 context, always 256+ tokens, padding tokens ZEROED (zero_out_masked), no mask, no pooled.
- wan*: umT5 context, always 512+ tokens, padding ZEROED, no mask, no pooled. wan21_i2v additionally
  `clip_vision_output` (CLIP-H penultimate states [B, 257, 1280]) and, with a start image,
  `concat_latent_image` / `concat_mask` as WanImageToVideo sets them.
- hunyuan_video15: Qwen2.5-VL context, not padded (mask dropped when all ones); `conditioning_byt5small`
  only for prompts with quoted text (not given here).
- ltxv: T5 context padded to 128+ tokens WITH `attention_mask` (zeros at padding; the model requires it).
- qwen_image: Qwen2.5-VL context, not padded, no mask.
- lumina2 / z_image: Gemma-2 / Qwen3 context, not padded, `attention_mask` all ones (the host turns it into
  num_tokens and drops the mask).
- hidream: T5 context (128 tokens, no mask), pooled_output (CLIP-L|CLIP-G, 2048) and `conditioning_llama3`
  [B, 32 layers, 128 tokens, 4096].
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

import comfy.clip_vision
import comfy.model_patcher
import comfy.supported_models as sm
from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed

# flux_harness, family_reference and hunyuan_reference (the builders of Flux.1, Chroma, Flux.2 and
# HunyuanVideo) are imported where they are used: flux_harness imports this pack's nodes, and the other
# families must not depend on the engine importing.

TEXT = 32          # the shrunk text-encoder width of every family (real 2048 .. 4096)
POOLED = 32        # the shrunk pooled width (real 768 / 2048)
SD3_CLIP = (12, 20)  # SD3's shrunk CLIP-L and CLIP-G widths (real 768, 1280); their sum is SD3's pooled width
SD3_TEXT = 64        # SD3's shrunk T5 width, the width CLIP-L|CLIP-G is zero-padded to (real 4096)
HIDREAM_LLAMA_LAYERS = 32  # the Llama-3.1-8B hidden states the host's HiDream encoder stacks (all but the embedding)
# model_detection.py's HiDream llama_layers: the Llama layer each of the 16 + 32 blocks reads
HIDREAM_LLAMA_INDEX = list(range(32)) + [31] * 16
AURA_TEXT = 2048     # AuraFlow's Pile-T5 width, kept: the host detects AuraFlow by cond_seq_dim == 2048
CLIP_VISION = 1280   # CLIP-H penultimate width, fixed by the host's WAN i2v img_emb (MLPProj(1280, dim))
CLIP_VISION_TOKENS = 257
# What the shrunk Wan 2.1 / 2.2 models share (each adds its type, output width, depth and input channels).
WAN = dict(image_model="wan2.1", dim=64, num_heads=2, ffn_dim=128, patch_size=(1, 2, 2), freq_dim=256,
           window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6, text_dim=TEXT)


@dataclass(frozen=True)
class Spec:
    """How one family is built and fed: the host's config class, the shrunk unet_config, what its text encoder
    returns (width, whether it pads to a fixed length and how: "zeros" (zero_out_masked), "mask" (an
    attention_mask with zeros) or "tokens" (real pad-token outputs, unmasked)), whether it is a video model,
    and its real sizes in words."""
    config_class: type
    unet_config: dict = field(default_factory=dict)
    text: int = TEXT
    padding: str | None = None     # None (not padded), "zeros", "mask", "tokens"
    real_text_len: int | None = None  # the length the host's tokenizer pads to (real model)
    video: bool = False
    guidance: bool = False          # takes an embedded `guidance` value (distilled guidance) instead of CFG
    real: str = ""


SPECS = {
    "flux": Spec(sm.Flux, padding="tokens", real_text_len=256, guidance=True,
                 real="3072 wide, 24x128 heads, 19+38 blocks, T5 4096, pooled 768"),
    "flux2": Spec(sm.Flux2, guidance=True,
                  real="6144 wide, 48x128, 8+48 blocks, Mistral 15360 (left-padded to 512 by the model)"),
    "chroma": Spec(sm.Chroma, real="3072 wide, 24x128, 19+38 blocks, T5 4096 (not padded)"),
    "sd3": Spec(sm.SD3, dict(
        in_channels=16, out_channels=16, patch_size=2, depth=2, num_blocks=24, input_size=None,
        adm_in_channels=sum(SD3_CLIP),
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": SD3_TEXT, "out_features": 128}},
        num_patches=16 * 16, pos_embed_max_size=16, qk_norm="rms", pos_embed_scaling_factor=None,
        x_block_self_attn_layers=list(range(13))),
        text=SD3_TEXT, padding="tokens", real_text_len=154,
        real="SD3.5 medium: 1536 wide (64 x depth 24), 24x64, 24 blocks (dual attention 0-12), pos_embed 384^2, "
             "context 4096, pooled 2048"),
    "auraflow": Spec(sm.AuraFlow, dict(
        cond_seq_dim=AURA_TEXT, max_seq=256, n_double_layers=4, n_layers=36, dim=64, n_heads=2, global_conddim=64,
        in_channels=4, out_channels=4, patch_size=2),
        text=AURA_TEXT, padding="zeros", real_text_len=256,
        real="3072 wide, 12x256, 4+32 blocks, Pile-T5 2048, max_seq 1024"),
    "wan21_t2v": Spec(sm.WAN21_T2V, dict(WAN, model_type="t2v", out_dim=16, num_layers=30, in_dim=16),
        padding="zeros", real_text_len=512, video=True, real="1.3B: 1536 wide, 12x128, 30 blocks, ffn 8960, umT5 4096"),
    "wan21_i2v": Spec(sm.WAN21_I2V, dict(WAN, model_type="i2v", out_dim=16, num_layers=40, in_dim=36),
        padding="zeros", real_text_len=512, video=True,
        real="14B I2V: 5120 wide, 40x128, 40 blocks, ffn 13824, in 36 (16 + 4 mask + 16 image), CLIP-H 1280"),
    "wan22_t2v": Spec(sm.WAN22_T2V, dict(WAN, model_type="t2v", out_dim=48, num_layers=30, in_dim=48),
        padding="zeros", real_text_len=512, video=True, real="TI2V 5B: 3072 wide, 24x128, 30 blocks, ffn 14336, 48 ch"),
    "hunyuan_video": Spec(sm.HunyuanVideo, video=True, guidance=True,
                          real="13B: 3072 wide, 24x128, 20+40 blocks, llava-llama-3 4096, CLIP-L 768"),
    "hunyuan_video15": Spec(sm.HunyuanVideo15, dict(
        image_model="hunyuan_video", in_channels=65, out_channels=32, patch_size=[1, 1, 1], vec_in_dim=None,
        axes_dim=[8, 12, 12], meanflow=False, context_in_dim=TEXT, hidden_size=64, mlp_ratio=4.0, num_heads=2,
        depth=54, depth_single_blocks=0, theta=256, qkv_bias=True, byt5=True, guidance_embed=False,
        use_cond_type_embedding=True, vision_in_dim=1152),
        video=True, real="8.3B: 2048 wide, 16x128, 54 double blocks, in 65 (32 + 32 image + 1 mask), "
                         "Qwen2.5-VL 3584, ByT5 1472, SigLIP 1152"),
    "ltxv": Spec(sm.LTXV, dict(
        image_model="ltxv", num_layers=28, attention_head_dim=32, num_attention_heads=2, cross_attention_dim=64,
        caption_channels=TEXT, in_channels=128),
        padding="mask", real_text_len=128, video=True, real="2B: 2048 wide, 32x64, 28 blocks, T5 4096"),
    "qwen_image": Spec(sm.QwenImage, dict(
        image_model="qwen_image", in_channels=64, out_channels=16, num_layers=60, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=TEXT, axes_dims_rope=(8, 12, 12)),
        real="20B: 3072 wide, 24x128, 60 blocks, Qwen2.5-VL 3584"),
    "lumina2": Spec(sm.Lumina2, dict(
        image_model="lumina2", patch_size=2, in_channels=16, dim=96, cap_feat_dim=TEXT, n_layers=26, qk_norm=True,
        n_heads=3, n_kv_heads=1, axes_dims=[8, 12, 12], axes_lens=[300, 512, 512], rope_theta=10000.0,
        ffn_dim_multiplier=4.0),
        real="2.6B: 2304 wide, 24x96 (8 kv heads), 26 + 2 + 2 refiner blocks, Gemma-2 2304"),
    "z_image": Spec(sm.ZImage, dict(
        image_model="lumina2", patch_size=2, in_channels=16, dim=288, cap_feat_dim=TEXT, n_layers=30,
        qk_norm=True, n_heads=3, n_kv_heads=3, axes_dims=[24, 36, 36], axes_lens=[1536, 512, 512],
        rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0,
        pad_tokens_multiple=32),
        real="6B turbo: 3840 wide, 30x128, 30 + 2 + 2 refiner blocks, Qwen3-4B 2560"),
    "hidream": Spec(sm.HiDream, dict(
        image_model="hidream", attention_head_dim=32, axes_dims_rope=[16, 8, 8], caption_channels=[TEXT, TEXT],
        max_resolution=[128, 128], in_channels=16, llama_layers=HIDREAM_LLAMA_INDEX, num_attention_heads=2,
        num_routed_experts=4, num_activated_experts=2, num_layers=16, num_single_layers=32, out_channels=16,
        patch_size=2, text_emb_dim=POOLED),
        padding="tokens", real_text_len=128,
        real="I1 full: 2560 wide, 20x128, 16+32 blocks, MoE 4/2, T5 4096, Llama-3.1 4096 x 32 layers, pooled 2048"),
}
FAMILIES = tuple(SPECS)

# The other supported_models classes of this host whose model sampling is CONST, and why they have no
# fixture here (each is a variant of a family above, or not an image/video model).
OTHER_CONST = {
    "FluxInpaint": "Flux.1 Fill: flux with 96 input channels (image + 64-channel mask concatenated)",
    "FluxSchnell": "flux without guidance_embed, ModelType.FLOW: DiscreteFlow shift 1, multiplier 1 (t = sigma)",
    "ChromaRadiance": "Chroma in pixel space (3 channels, 16x16 patches, NeRF head)",
    "GenmoMochi": "Mochi 1 video (12-channel latents, DiscreteFlow shift 6, multiplier 1)",
    "HunyuanVideoI2V": "hunyuan_video with 33 input channels (concat image + mask)",
    "HunyuanVideoSkyreelsI2V": "hunyuan_video with 32 input channels (concat image)",
    "HunyuanVideo15_SR_Distilled": "hunyuan_video15 super-resolution (98 input channels)",
    "HunyuanImage21": "HunyuanImage 2.1 (hunyuan_video code, 2-D patches, 64-channel latents)",
    "HunyuanImage21Refiner": "HunyuanImage 2.1 refiner (patch 1x1x1)",
    "WAN21_FunControl2V": "wan with control-video channels (in_dim 48)",
    "WAN21_Vace": "wan + VACE control blocks",
    "WAN21_Camera": "wan + camera control adapter",
    "WAN22_Camera": "wan 2.2 + camera control adapter",
    "WAN22_S2V": "wan 2.2 speech-to-video (audio encoder)",
    "WAN21_HuMo": "wan + audio/reference (HuMo)",
    "WAN22_Animate": "wan 2.2 animate (pose/face adapters)",
    "Omnigen2": "OmniGen2 image model (Qwen2.5-VL 3B text, DiscreteFlow shift 2.6, multiplier 1)",
    "Hunyuan3Dv2": "3-D shape latents, not images",
    "Hunyuan3Dv2mini": "3-D shape latents, not images",
    "Hunyuan3Dv2_1": "3-D shape latents, not images",
    "ACEStep": "audio (music) latents",
}
_BY_CONFIG = {spec.config_class: name for name, spec in SPECS.items()}


# --- the models -------------------------------------------------------------------------------

def init_rf_weights(net: torch.nn.Module, seed: int) -> None:
    """flux_harness.init_flux_weights generalised to every family's modules: the weights of every norm
    (LayerNorm, RMSNorm, Flux's `.scale`, Aura's MultiHeadLayerNorm) 1 and their biases 0; Linear and Conv
    weights ~ N(0, 1/fan_in) (fan_in = in_features x kernel); Embedding tables N(0, 1); biases ~ N(0, 0.02^2);
    free tensors (modulation / scale-shift tables, positional encodings, register and pad tokens, MoE gates)
    ~ N(0, 1/last_dim). Nothing is zero, so no gate or output layer silences the model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            kind = type(module).__name__
            for name, p in module.named_parameters(recurse=False):
                if "Norm" in kind or name == "scale":
                    p.fill_(0.0 if name == "bias" else 1.0)
                elif p.ndim == 1:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
                elif isinstance(module, torch.nn.Embedding):
                    p.copy_(torch.randn(p.shape, generator=gen))
                elif isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
                    p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
        pos_embed = getattr(net, "pos_embed", None)
        if isinstance(pos_embed, torch.Tensor) and not isinstance(pos_embed, torch.nn.Parameter):
            # SD3's fixed sin-cos table: a buffer the checkpoint carries (torch.empty until loaded)
            size = net.pos_embed_max_size
            table = torch.from_numpy(get_2d_sincos_pos_embed(pos_embed.shape[-1], size))
            pos_embed.copy_(table.reshape(pos_embed.shape))


def patcher_from(model_config, seed: int, init=init_rf_weights):
    """A ModelPatcher around the model_base model the config's own get_model builds (as the host's checkpoint
    loader does: WAN21_I2V and WAN22 pass image_to_video=True there), fp32 on the CPU, weights from `init`."""
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, device="cpu")
    init(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def make(family: str, seed: int = 0, **config):
    """A ModelPatcher around a shrunk real host model of `family` (one of FAMILIES), fp32 on the CPU; `config`
    overrides entries of its unet_config (fewer blocks where a test needs speed, not the real depth)."""
    if family == "flux":
        import flux_harness
        return flux_harness.make_flux(seed)
    if family in ("chroma", "flux2"):
        import family_reference
        return family_reference.make_chroma(seed) if family == "chroma" else family_reference.make_flux2(seed)
    if family == "hunyuan_video":
        import hunyuan_reference
        return hunyuan_reference.make_hunyuan_video(seed)
    spec = SPECS[family]
    return patcher_from(spec.config_class({**spec.unet_config, **config}), seed)


def family_of(model) -> str:
    """The family name of a ModelPatcher built here (by its exact supported_models config class)."""
    config_class = type(model.model.model_config)
    if config_class not in _BY_CONFIG:
        raise TypeError(f"not a rectified-flow family of these tests: {config_class.__name__}")
    return _BY_CONFIG[config_class]


def is_video(model) -> bool:
    """A video family: its latents are [B, C, T, H, W] with T latent frames (Qwen-Image's are 5-D too, with
    T = 1, but it is an image model)."""
    return SPECS[family_of(model)].video


def guidance_distilled(model) -> bool:
    """Whether the family embeds a `guidance` conditioning value (guidance distillation: Flux.1 dev, Flux.2,
    HunyuanVideo) instead of using classifier-free guidance; read from the built model's config where the
    host makes it optional (Flux's and HunyuanVideo's guidance_embed)."""
    name = family_of(model)
    if name in ("flux", "flux2", "hunyuan_video", "hunyuan_video15"):
        return bool(model.model.model_config.unet_config.get("guidance_embed", False))
    return SPECS[name].guidance


# --- inputs -----------------------------------------------------------------------------------

def _text(gen, batch, tokens, width, padding, words):
    """Text-encoder-like hidden states [batch, tokens, width] with `words` real tokens first and the rest
    padding as the encoder leaves it: zeros ("zeros"), or pad-token states like any other ("tokens"/"mask")."""
    out = torch.randn(batch, tokens, width, generator=gen)
    if padding == "zeros":
        out[:, words:] = 0.0
    return out


def conditioning(model, seed: int = 1, tokens: int = 8, batch: int = 1, start=None):
    """A CONDITIONING [[context, extras]] shaped as the family's text encoder output in this host (see the
    module docstring), with `tokens` text tokens in all (for padding encoders, the first max(1, tokens // 2)
    are the prompt and the rest padding as the encoder pads). `start`: for wan21_i2v, a user-space video
    latent whose first frame becomes the start image (concat_latent_image / concat_mask as WanImageToVideo
    sets them)."""
    name = family_of(model)
    if name == "flux":
        import flux_harness
        return flux_harness.conditioning(seed=seed, tokens=tokens, batch=batch)
    if name in ("chroma", "flux2"):
        import family_reference
        return family_reference.conditioning_for(model, seed=seed, tokens=tokens, batch=batch)
    if name == "hunyuan_video":
        import hunyuan_reference
        return hunyuan_reference.conditioning_for(model, seed=seed, tokens=tokens, batch=batch)
    spec = SPECS[name]
    gen = torch.Generator().manual_seed(seed)
    words = max(1, tokens // 2) if spec.padding else tokens
    context = _text(gen, batch, tokens, spec.text, spec.padding, words)
    extras = {"pooled_output": None}
    if name == "sd3":
        clip = max(1, tokens // 2)            # [CLIP-L|CLIP-G (zero-padded in width) ; T5]
        context[:, :clip, sum(SD3_CLIP):] = 0.0
        extras["pooled_output"] = torch.randn(batch, sum(SD3_CLIP), generator=gen)
    elif name == "ltxv":
        mask = torch.zeros(batch, tokens, dtype=torch.long)
        mask[:, :words] = 1
        extras["attention_mask"] = mask
    elif name in ("lumina2", "z_image"):
        extras["attention_mask"] = torch.ones(batch, tokens, dtype=torch.long)
    elif name == "hidream":
        extras["pooled_output"] = torch.randn(batch, POOLED, generator=gen)
        extras["conditioning_llama3"] = torch.randn(batch, HIDREAM_LLAMA_LAYERS, tokens, TEXT, generator=gen)
    elif name == "wan21_i2v":
        vision = comfy.clip_vision.Output()
        vision.penultimate_hidden_states = torch.randn(batch, CLIP_VISION_TOKENS, CLIP_VISION, generator=gen)
        extras["clip_vision_output"] = vision
        if start is not None:
            extras.update(start_image(model, start))
    return [[context, extras]]


def start_image(model, source):
    """What WanImageToVideo adds for a start image, from a user-space video latent `source` [B, 16, T, H, W]:
    the VAE encoding of [start frame, grey frames...] (here: the source's first latent frame, then the
    latent of mid-grey, which is the Wan21 latent mean) and a mask that is 0 on the first latent frame."""
    image = model.model.latent_format.latents_mean.to(source).expand(source.shape[0], -1, *source.shape[2:]).clone()
    image[:, :, :1] = source[:, :, :1]
    mask = torch.ones(1, 1, *source.shape[2:])
    mask[:, :, :1] = 0.0
    return {"concat_latent_image": image, "concat_mask": mask}


def latent(model, seed: int = 2, size=(6, 10), frames=None, batch: int = 1) -> torch.Tensor:
    """An image-like source latent in USER space (what VAE Encode gives) of `size` (h, w) latent cells, the
    family's channels and dimensionality: [B, C, H, W] for images, [B, C, T, H, W] for video families (T =
    `frames`, default 3 latent frames) and [B, 16, 1, H, W] for Qwen-Image (its VAE is Wan's). Made in
    model space (smooth at a quarter of the resolution plus detail, unit scale) and mapped out through the
    family's latent format (process_latent_out), so process_latent_in gives back a unit-scale latent."""
    name = family_of(model)
    fmt = model.model.latent_format
    channels = fmt.latent_channels
    h, w = size
    if SPECS[name].video:
        frames = 3 if frames is None else frames
        shape = (batch, channels, frames, h, w)
    elif name == "qwen_image":
        if frames not in (None, 1):
            raise ValueError("Qwen-Image latents have one frame")
        shape = (batch, channels, 1, h, w)
    else:
        if frames is not None:
            raise ValueError(f"{name} is an image family: no frames")
        shape = (batch, channels, h, w)
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(shape[:2] + tuple(max(1, (s + 3) // 4) for s in shape[2:]), generator=gen)
    mode = "trilinear" if len(shape) == 5 else "bilinear"
    smooth = torch.nn.functional.interpolate(coarse, size=shape[2:], mode=mode, align_corners=False)
    z = 0.95 * smooth / smooth.std() + 0.3 * torch.randn(shape, generator=gen)
    return model.model.process_latent_out(z)
