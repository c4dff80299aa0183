"""Test fixtures for HunyuanVideo (1.0, the cfg-distilled T2V model RF-Solver-Edit edits videos with) as
the ComfyUI host (0.3.75) defines it, with an independent reference of RF-Solver-Edit's official
video edit on its diffusers twin.

- The model: comfy.model_base.HunyuanVideo (comfy/ldm/hunyuan_video/model.py) with the
  supported_models.HunyuanVideo config, built by the host's own classes at the REAL block counts
  (20 double, 40 single; 2 token-refiner blocks, fixed by the host) and a small width (hidden 64,
  2 heads of 32, rope axes [t, h, w] = [8, 12, 12]), random weights initialised like
  flux_harness.init_flux_weights. Sampling: ModelSamplingDiscreteFlow at shift 7 (t = sigma * 1000).
- The twin: diffusers' HunyuanVideoTransformer3DModel, loaded through ComfyUI's own Tencent -> Comfy
  key mapping (supported_models.HunyuanVideo.process_unet_state_dict) inverted, then diffusers' own
  single-file converter convert_hunyuan_video_transformer_to_diffusers (see diffusers_twin for the one
  place it had to be helped).
- The reference edit (rf_solver_edit_video) is wangjiangshan0725/RF-Solver-Edit's
  Hunyuanvideo_Video_Edit (hyvideo/modules/models.py, diffusion/pipelines/pipeline_hunyuan_video.py,
  diffusion/schedulers/scheduling_flow_match_discrete.py) run on the twin with a given sigma schedule:
  flux_reference.RFSolverEdit's loop (the same algorithm as the official video pipeline: the midpoint
  rule, keys (end level when inverting / start level when sampling, second_order)), hooked on the
  single blocks 21..39 (`block_id > 20`), with both prompts padded to 256 tokens and masked as the
  official code (official_text, VarlenAttention; see "Text" below). It does not use this pack's engine.

What the model sees, in this host (facts an engine needs):
- Latent: user space [B, 16, T, H, W] (EmptyHunyuanLatentVideo: T = (frames - 1) // 4 + 1, H/8, W/8);
  latent_formats.HunyuanVideo scales by 0.476986 (no shift) into model space. Patches 1x2x2 (Conv3d),
  token order (t, h, w) with t outermost; rope ids (t, h, w) for video tokens, 0 for text tokens.
- Single blocks: torch.cat((img, txt), 1): VIDEO tokens FIRST, text last (as the official code and
  diffusers); the output keeps img[:, :img_len]. Double blocks: flipped_img_txt=True (video first too).
- Text: the host's llama tokenizer does not pad (min_length=1) and the mask is dropped when all ones,
  so a CONDITIONING's text length is the prompt's token count. The official code pads every prompt on the
  right to 256 tokens with a mask (hyvideo/config.py line 101; text_encoder/__init__.py lines 246-259) and
  masks the padding three ways: the token refiner pools the masked mean (token_refiner.py lines 222-228) and
  lets a padding token attend to the first token only (lines 143-157), both of which diffusers' twin does
  alike (its context_embedder and token_refiner); the double and single blocks attend through
  flash_attn_varlen_func over cu_seqlens (attenion.py lines 30-53, 103-116; models.py lines 627-631): the
  video and prompt tokens one sequence, the padding another. diffusers' blocks instead mask the padding's
  keys for every query (a padding token attends to the prompt), as does the host given an attention_mask:
  VarlenAttention gives the twin's blocks the official segments. The padding's values: the official code's
  hold the text encoder's output at its pad tokens, which no CONDITIONING carries; the reference pads with
  zeros (official_text), the values the pack pads with, so the two are compared on the same text.
  Without injection the padding changes nothing (the video and prompt tokens never see it); with V of
  all tokens injected, a target prompt longer than the source's takes the source padding's V.
- Guidance: embedded (distilled) guidance only, conds key `guidance` (model_base default 6.0), the model
  embeds guidance * 1000 (timestep_embedding's default time_factor); diffusers' twin takes guidance
  already multiplied by 1000 and t = sigma * 1000 (the official convention), unlike its Flux twin.
- Pooled vector: `pooled_output` -> y -> vector_in(y[:, :vec_in_dim]) (CLIP-L, 768 in the real model).
"""
from __future__ import annotations

import torch

import comfy.model_base
import comfy.supported_models as sm
from flux_harness import init_flux_weights, patcher_of
from flux_files import comfy_to_tencent
from flux_reference import RFSolverEdit

HIDDEN, HEADS, AXES = 64, 2, [8, 12, 12]   # head dim 32 = 8 + 12 + 12 (real: 3072, 24, [16, 56, 56])
CONTEXT, POOLED = 32, 32                   # llava-llama-3 width (real 4096), CLIP-L pooled (real 768)
DOUBLE, SINGLE = 20, 40                    # HYVideo-T/2-cfgdistill: mm_double_blocks_depth, mm_single_blocks_depth
OFFICIAL_BLOCKS = range(21, 40)            # models.py: `info['block_id'] > 20` over the 40 single blocks
GUIDANCE = 6.0                             # model_base.HunyuanVideo.extra_conds default; official --embedded-cfg-scale
OFFICIAL_TEXT = 256                        # hyvideo/config.py line 101: --text-len 256, every prompt padded to it


# --- the model --------------------------------------------------------------------------------

def hunyuan_video_config(hidden: int = HIDDEN, heads: int = HEADS, axes=AXES, double: int = DOUBLE,
                         single: int = SINGLE, context: int = CONTEXT, pooled: int = POOLED) -> dict:
    """The unet_config model_detection gives a HunyuanVideo 1.0 checkpoint (the `hunyuan_video` branch:
    theta 256, mlp 4, qkv_bias, patch [1, 2, 2], guidance_embed from `guidance_in.*`), shrunk in width."""
    return {"image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16, "vec_in_dim": pooled,
            "context_in_dim": context, "hidden_size": hidden, "mlp_ratio": 4.0, "num_heads": heads,
            "depth": double, "depth_single_blocks": single, "axes_dim": list(axes), "theta": 256,
            "patch_size": [1, 2, 2], "qkv_bias": True, "guidance_embed": True, "byt5": False, "meanflow": False,
            "use_cond_type_embedding": False, "vision_in_dim": None}


def init_hunyuan_weights(net: torch.nn.Module, seed: int) -> None:
    """flux_harness.init_flux_weights (RMSNorm scales 1, fan-in scaled linears, small biases), then the
    one kind of module it does not know: the token refiner's affine LayerNorms (norm1/norm2 `.weight`,
    which it would treat as biases, ~0.02, silencing the refiner's attention and MLP) get weight 1.
    (img_in's Conv3d kernel [h, 16, 1, 2, 2] is scaled by 1/sqrt(16) instead of 1/sqrt(64): harmless.)"""
    init_flux_weights(net, seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.LayerNorm) and module.weight is not None:
                module.weight.fill_(1.0)


def make_hunyuan_video(seed: int = 0, **config):
    """A ModelPatcher around a real comfy.model_base.HunyuanVideo (sm.HunyuanVideo config), fp32 on the CPU."""
    return patcher_of(sm.HunyuanVideo(hunyuan_video_config(**config)), comfy.model_base.HunyuanVideo, seed,
                      init_hunyuan_weights)


def conditioning_for(model, seed: int = 1, tokens: int = 8, batch: int = 1):
    """A CONDITIONING shaped like the host's HunyuanVideo text encoder output: the llama hidden states
    [batch, tokens, context_in_dim] (not padded; no `attention_mask`, which the host drops when all
    ones) and the CLIP-L `pooled_output` [batch, vec_in_dim]."""
    config = model.model.model_config.unet_config
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, config["context_in_dim"], generator=gen),
             {"pooled_output": torch.randn(batch, config["vec_in_dim"], generator=gen)}]]


def video_latent(seed: int = 2, frames: int = 3, size: int = 8, batch: int = 1) -> torch.Tensor:
    """A video-like source latent in user space [batch, 16, frames, size, size] (what VAE Encode gives
    for 4 * frames - 3 frames of 8 * size pixels square): smooth in space and time plus detail, raw
    std about 2 (model space about 1 after the 0.476986 scale)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 16, max(frames // 2, 1), max(size // 4, 1), max(size // 4, 1), generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(frames, size, size), mode="trilinear", align_corners=False)
    return 2.0 * smooth + 0.3 * torch.randn(batch, 16, frames, size, size, generator=gen)


# --- the diffusers twin -----------------------------------------------------------------------

def diffusers_twin(model):
    """A diffusers HunyuanVideoTransformer3DModel holding `model`'s weights (fp32, eval)."""
    import diffusers
    from diffusers.loaders import single_file_utils as sfu

    config = model.model.model_config.unet_config
    hidden, heads = config["hidden_size"], config["num_heads"]
    assert list(config["patch_size"]) == [1, 2, 2]
    net = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=config["in_channels"], out_channels=config["out_channels"], num_attention_heads=heads,
        attention_head_dim=hidden // heads, num_layers=config["depth"], num_single_layers=config["depth_single_blocks"],
        num_refiner_layers=2, mlp_ratio=config["mlp_ratio"], patch_size=2, patch_size_t=1, qk_norm="rms_norm",
        guidance_embeds=config["guidance_embed"], text_embed_dim=config["context_in_dim"],
        pooled_projection_dim=config["vec_in_dim"], rope_theta=float(config["theta"]),
        rope_axes_dim=tuple(config["axes_dim"]))
    comfy_sd = {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}
    tencent = comfy_to_tencent(comfy_sd)
    # convert_hunyuan_video_transformer_to_diffusers splits each single block's fused linear1 with a
    # hard-coded hidden_size = 3072 (split sizes (3072, 3072, 3072, rest)), which is wrong (it fails) at
    # any other width. Everything else it converts size-agnostically (renames, chunk(3) of the qkv's, the
    # final layer's shift/scale swap). So take linear1 out before calling it, and split it here the same
    # way at the real width: [q | k | v | mlp] = [h | h | h | mlp_ratio * h], the layout of the host's
    # SingleStreamBlock (torch.split(linear1(x), [3 * hidden, mlp_hidden]), then qkv.view(B, L, 3, H, D)).
    fused = {k: tencent.pop(k) for k in [k for k in tencent if ".linear1." in k]}
    state = sfu.convert_hunyuan_video_transformer_to_diffusers(tencent)
    mlp = int(hidden * config["mlp_ratio"])
    for key, tensor in fused.items():
        block, kind = key.split(".linear1.")                  # "single_blocks.N", "weight" / "bias"
        prefix = block.replace("single_blocks", "single_transformer_blocks")
        q, k, v, m = torch.split(tensor, (hidden, hidden, hidden, mlp))
        for name, part in (("attn.to_q", q), ("attn.to_k", k), ("attn.to_v", v), ("proj_mlp", m)):
            state[f"{prefix}.{name}.{kind}"] = part.clone()
    net.load_state_dict(state, strict=True)
    return net.eval()  # built in fp32 already


# --- velocities -------------------------------------------------------------------------------

def text_of(prompt):
    """The prompt's context and pooled vector as the model sees them. The host does not pad; a
    conditioning that carries a padding mask (zeros) is refused: host and twin pool/mask it differently."""
    extra = prompt[0][1]
    mask = extra.get("attention_mask")
    if mask is not None and not bool((mask != 0).all()):
        raise ValueError("padded text (an attention_mask with zeros) is not supported by this reference")
    return prompt[0][0].float(), extra["pooled_output"].float()


def twin_velocity(net, x, sigma, prompt, guidance=GUIDANCE):
    """The twin's velocity at a model-space latent x [B, 16, T, H, W] and level sigma: t = sigma * 1000 and
    the embedded guidance * 1000 (the official pipeline's scale), an all-ones text mask."""
    txt, vec = text_of(prompt)
    ones = torch.ones(x.shape[0])
    with torch.no_grad():
        return net(hidden_states=x, timestep=float(sigma) * 1000 * ones, encoder_hidden_states=txt,
                   encoder_attention_mask=torch.ones(txt.shape[:2], dtype=torch.long), pooled_projections=vec,
                   guidance=float(guidance) * 1000 * ones).sample


def comfy_velocity(model, x, sigma, prompt, guidance=GUIDANCE):
    """The host's velocity at a model-space latent x: the conds built by model_base.HunyuanVideo's own
    extra_conds (pooled_output -> y, guidance, no mask), then BaseModel.apply_model
    (ModelSamplingDiscreteFlow: t = sigma * 1000; CONST: denoised = x - sigma v), turned back into v."""
    base = model.model
    conds = base.extra_conds(cross_attn=prompt[0][0], noise=x, device=x.device,
                             **{**prompt[0][1], "guidance": guidance})
    kwargs = {k: c.cond for k, c in conds.items()}
    s = torch.full((x.shape[0],), float(sigma))
    with torch.no_grad():
        denoised = base.apply_model(x, s, transformer_options={}, **kwargs)
    return (x - denoised) / s.view(-1, *([1] * (x.ndim - 1)))


def assert_twin_agrees(model, seed: int = 3, sigma: float = 0.6, tokens: int = 7, frames: int = 3, size: int = 8,
                       guidance: float = GUIDANCE, rtol: float = 1e-5, net=None):
    """The ComfyUI model and its diffusers twin give the same velocity on a random video latent
    (3 latent frames by default) at embedded guidance 6 (relative L2 error under rtol). Returns the error."""
    net = diffusers_twin(model) if net is None else net
    gen = torch.Generator().manual_seed(seed)
    z = model.model.process_latent_in(video_latent(seed=seed, frames=frames, size=size))
    x = (1 - sigma) * z + sigma * torch.randn(z.shape, generator=gen)
    prompt = conditioning_for(model, seed=seed + 1, tokens=tokens)
    ours = comfy_velocity(model, x, sigma, prompt, guidance)
    theirs = twin_velocity(net, x, sigma, prompt, guidance)
    err = ((ours - theirs).norm() / ours.norm()).item()
    assert torch.isfinite(ours).all() and err < rtol, f"HunyuanVideo twin disagrees: relative error {err:.3g}"
    return err


# --- the official video edit ------------------------------------------------------------------

def official_text(prompt, length: int = OFFICIAL_TEXT):
    """The prompt as the official pipeline gives it to the model: the context padded on the right to `length`
    tokens (zeros: see "Text" in the module's docstring), the attention mask (1 for the prompt's tokens, 0 for
    the padding) and the pooled vector. A longer prompt is refused (the official tokenizer would cut it)."""
    txt, vec = text_of(prompt)
    batch, tokens, width = txt.shape
    if tokens > length:
        raise ValueError(f"the prompt has {tokens} text tokens; the official code cuts prompts at {length}")
    padded = torch.cat([txt, torch.zeros(batch, length - tokens, width)], 1)
    mask = (torch.arange(length) < tokens).long().expand(batch, length)
    return padded, mask, vec


class VarlenAttention:
    """The official blocks' attention (flash_attn_varlen_func over cu_seqlens, attenion.py lines 30-53, 103-116)
    as a processor of the twin's double and single blocks: diffusers hands them its key mask [B, 1, 1, N] (True on
    the video and prompt tokens), and each token attends to the tokens on its side of it: the video and prompt
    tokens to each other, the padding to the padding. `keys_only` keeps diffusers' own key mask (the padding
    attends to the video and prompt tokens): a mutation."""

    def __init__(self, keys_only: bool = False):
        from diffusers.models.transformers.transformer_hunyuan_video import HunyuanVideoAttnProcessor2_0
        self.inner, self.keys_only = HunyuanVideoAttnProcessor2_0(), keys_only

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None and not self.keys_only:
            kept = attention_mask.reshape(attention_mask.shape[0], -1)               # [B, N]
            attention_mask = kept[:, None, :, None] == kept[:, None, None, :]        # [B, 1, N, N]
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)


class HunyuanRFSolverEdit(RFSolverEdit):
    """RFSolverEdit (flux_reference) on diffusers' HunyuanVideo: its single blocks have a separate
    attn.to_v applied to cat([video, text]) (video first), so the hook keeps / replaces V of all
    tokens (the padding included), before the attention, as the official models.py:347-354 does with the v of
    linear1. Only the call differs: t and the embedded guidance are passed times 1000, with the text's mask
    (given to `denoise` in place of Flux's ids)."""

    def velocity(self, img, t, txt, vec, guidance, mask):
        ones = torch.ones(img.shape[0])
        return self.net(hidden_states=img, timestep=t * 1000 * ones, encoder_hidden_states=txt,
                        encoder_attention_mask=mask, pooled_projections=vec, guidance=guidance * 1000 * ones).sample


def official_sigmas(steps: int = 25, shift: float = 7.0) -> list:
    """The official schedule: linspace(1, 0, steps + 1) through sd3_time_shift (= the host's `simple`
    scheduler for ModelSamplingDiscreteFlow at shift 7)."""
    return [shift * s / (1 + (shift - 1) * s) for s in torch.linspace(1, 0, steps + 1).tolist()]


MASKINGS = ("official", "keys only", "none")


def rf_solver_edit_video(model, source, source_prompt, target_prompt, sigmas, inject, guidance,
                         blocks=OFFICIAL_BLOCKS, net=None, text: int = OFFICIAL_TEXT, masking: str = "official"):
    """RF-Solver-Edit's official video edit on the diffusers twin (fresh unless `net` is given):
    invert `source` (user space [B, 16, T, H, W]) up `sigmas` (descending from 1 to 0) with RF-Solver
    (the midpoint rule, 2 evaluations per step) under the source prompt at embedded guidance 1, keeping
    V of all tokens in the single blocks `blocks` at both evaluations of the last `inject` inversion
    steps (keyed by the step's end level, second_order False / True), then sample the target prompt down
    the same sigmas at embedded guidance `guidance` (no real CFG), putting those V back at both
    evaluations of the first `inject` steps (keyed by the step's start level). Both prompts are padded to
    `text` tokens (official_text) and masked as the official code; `masking` "keys only" (the padding attends
    to the prompt in the blocks, as diffusers and the host mask it) and "none" (the padding left unmasked) are
    mutations. Returns the edited latent in user space."""
    sigmas = [float(s) for s in sigmas]  # the dict keys are these floats, shared by both passes
    if not (abs(sigmas[0] - 1.0) < 1e-6 and sigmas[-1] == 0.0 and all(a > b for a, b in zip(sigmas, sigmas[1:]))):
        raise ValueError(f"sigmas must descend from 1 to 0, got {sigmas}")
    if not 0 <= inject <= len(sigmas) - 1:
        raise ValueError(f"inject must be in [0, {len(sigmas) - 1}], got {inject}")
    if masking not in MASKINGS:
        raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")
    src_txt, src_mask, src_vec = official_text(source_prompt, text)
    tgt_txt, tgt_mask, tgt_vec = official_text(target_prompt, text)
    if masking == "none":
        src_mask, tgt_mask = torch.ones_like(src_mask), torch.ones_like(tgt_mask)
    net = diffusers_twin(model) if net is None else net
    processors = net.attn_processors
    for block in [*net.transformer_blocks, *net.single_transformer_blocks]:
        block.attn.set_processor(VarlenAttention(keys_only=masking == "keys only"))
    try:
        reference = HunyuanRFSolverEdit(net, blocks)
        z = model.model.process_latent_in(source.float())
        noise = reference.denoise(z, sigmas, True, inject, 1.0, src_txt, src_vec, src_mask)
        out = reference.denoise(noise, sigmas, False, inject, float(guidance), tgt_txt, tgt_vec, tgt_mask)
        reference.features.clear()  # its hooks stay on a given `net` but are inert (mode None) from here on
    finally:
        net.set_attn_processor(processors)
    return model.model.process_latent_out(out)
