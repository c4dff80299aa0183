"""The host's velocity, and diffusers twins that compute it independently, for the rectified-flow families of
tests/rf_families.py.

- host_velocity / host_velocities: the velocity the HOST computes, through its own sampling machinery: a
  comfy.samplers.CFGGuider (prepare_sampling, process_conds with the model's own extra_conds, pre_run) and
  comfy.samplers.calc_cond_batch, the function every sampler's model call goes through (conds of equal
  shapes are batched into one model call, as cond and uncond are under CFG). For CONST models the host's
  denoised is x - sigma * out, where `out` is the diffusion model's raw output, so the velocity is `out`
  itself; it is read there (a model_function_wrapper returns the diffusion model's output instead of the
  denoised), which is valid at sigma 0 too, where denoised = x says nothing. On a patched model, patches and
  wrappers acting on the diffusion model's inputs or inside it apply, and a model_function_wrapper already in
  model_options still runs; what such a wrapper does to the denoised after the model is not in the velocity.
- make_twin(model): a diffusers transformer holding the host model's weights, loaded through diffusers' own
  single-file key converters from the host's state dict. The host keeps the ORIGINAL checkpoint key layout
  for SD3, AuraFlow, Wan, LTX-Video, Lumina 2 and Z-Image (their supported_models classes have no
  process_unet_state_dict: checkpoints load without renaming), so convert_sd3_transformer_checkpoint_to_-
  diffusers, convert_auraflow_..., convert_wan_transformer_to_diffusers, convert_ltx_..., convert_lumina2_...
  and convert_z_image_... take it as it is (Lumina 2's and Z-Image's needed the help make_twin describes);
  Qwen-Image and HiDream were released in diffusers' layout, which the host uses too, and diffusers'
  single-file mappings for them are the identity (used as they are). Flux.1 reuses flux_reference.diffusers_-
  twin (comfy.utils.flux_to_diffusers), Chroma and Flux.2 family_reference.diffusers_twin, HunyuanVideo
  (whose keys the host renames) hunyuan_reference.diffusers_twin.
- twin_velocity(twin, model, x, sigma, conditioning, guidance=None): the twin's velocity for a MODEL-space
  latent x (after process_latent_in) in the host's layout, at flow time sigma in [0, 1].

Conventions the twins had to follow to give the host's numbers (facts an engine needs too):
- Timestep the host hands its diffusion model (model_sampling.timestep(sigma)): sigma for Flux.1, Chroma,
  Flux.2, Qwen-Image, LTX-Video (ModelSamplingFlux) and AuraFlow, Lumina 2, Z-Image (ModelSamplingDiscreteFlow
  with multiplier 1); 1000 sigma for SD3, Wan, HunyuanVideo (1.0 and 1.5) and HiDream (multiplier 1000). The
  nets then scale by 1000 inside where their t is sigma (LTX-Video multiplies by 1000 in its forward; the twin
  takes 1000 sigma). The diffusers twins take sigma (Flux, Chroma, Flux.2, Qwen-Image, AuraFlow), 1000 sigma
  (SD3, Wan, HunyuanVideo, LTX-Video, HiDream) or 1 - sigma (Lumina 2, Z-Image).
- Guidance: embedded guidance only for Flux.1 / Flux.2 (the twin takes the value, scales by 1000 inside) and
  HunyuanVideo (the twin takes guidance * 1000). Host defaults when the conditioning has none: Flux 3.5,
  HunyuanVideo 6.0 (model_base extra_conds). Chroma's twin has no guidance input (the host's is 0).
- Packing: Flux.1 / Chroma / Qwen-Image pack 2x2 patches as (c, ph, pw) into 64-wide tokens for diffusers,
  LTX-Video flattens [B, C, T, H, W] to [B, THW, C] (patch 1; rope scaled by the VAE factors (8, 32, 32) and
  1 / frame_rate in time, frame_rate 25 by default); SD3, AuraFlow, Wan, HunyuanVideo, Lumina 2, HiDream take
  the unpacked latent, Z-Image a list of [C, 1, H, W].
- Qwen-Image's rope: the host centres image positions as arange(n) - n // 2; diffusers' QwenEmbedRope (and the
  official pipeline) as -(n - n // 2) .. n // 2 - 1. They agree on EVEN token grids only (latent H and W
  multiples of 4); on an odd grid the same weights give different velocities (measured in the tests).
- AuraFlow's learned positional table is centre-cropped as (n_max - n) // 2 by the host, as n_max // 2 - n // 2 by
  diffusers: again the same on even token grids only.
- Output sign and time direction: Lumina 2 and Z-Image run time backwards (model time 1 - sigma: t = 1 - sigma for
  Lumina 2, (1 - sigma) * 1000 for Z-Image's time_scale) and the host NEGATES their output inside the
  diffusion model (NextDiT returns -x), as it does for HiDream (-output); so the host's raw output is already
  the velocity, and the twins' outputs are negated (as diffusers' pipelines do).
- Text: every twin here sees exactly the host's context (no padding added or removed): Wan's padding is
  already zeros in the conditioning; SD3's CLIP|T5 concatenation is the conditioning itself; Qwen without a
  mask when the host drops it.
"""
from __future__ import annotations

import torch
from einops import rearrange

import comfy.samplers
import node_helpers

import rf_families

TWINS = ("flux", "chroma", "flux2", "sd3", "auraflow", "wan21_t2v", "wan22_t2v", "hunyuan_video", "ltxv", "qwen_image",
         "lumina2", "z_image", "hidream")
# Latent sizes (h, w) a twin agrees with the host on, where not every size does (see the module docstring):
# Qwen-Image and AuraFlow centre their positions differently from diffusers on odd token grids; diffusers'
# HiDream sends a non-square latent down a padded, masked path (max_seq tokens) the host does not take.
TWIN_SIZE = {"qwen_image": (8, 12), "auraflow": (8, 12), "hidream": (6, 6)}
# Relative agreement a twin reaches in fp32 (1e-5 but for Z-Image, whose 34 blocks of random weights amplify
# fp32 rounding to 0.8e-5 .. 2e-5 at any sigma, t = 0 included; a wrong convention costs 1e-2 or more:
# the sign 2.0, a rope position shifted by one 7e-2)
TOLERANCE = {"z_image": 3e-5}
GUIDANCE_DEFAULT = {"flux": 3.5, "flux2": 3.5, "hunyuan_video": 6.0}  # model_base extra_conds defaults


# --- the host ---------------------------------------------------------------------------------

def with_guidance(conditioning, guidance):
    """The conditioning with its embedded `guidance` value set (what FluxGuidance does)."""
    if guidance is None:
        return conditioning
    return node_helpers.conditioning_set_values(conditioning, {"guidance": guidance})


def _calc_cond_batch(model, x, sigma, conditionings, guidance=None, calls=None, raw=True):
    """comfy.samplers.calc_cond_batch on `conditionings` at a MODEL-space latent x, inside a CFGGuider's
    sampling (prepare_sampling, process_conds with the model's extra_conds, pre_run / cleanup), with a
    sampler that makes no step: it calls calc_cond_batch once, at `x` and `sigma`, and returns. raw=True:
    each model call returns the diffusion model's raw output (the velocity) instead of the denoised."""
    x = x.float()
    sigmas = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).expand(x.shape[0]).clone()
    keys = [f"c{i}" for i in range(len(conditionings))]
    result = {}

    def probe(model_k, noise, sigmas_, extra_args=None, callback=None, disable=None):
        guider = model_k.inner_model
        options = dict(extra_args["model_options"])
        previous = options.get("model_function_wrapper")   # a patched model's own wrapper still runs

        def wrapper(apply_model, args):
            outs = []
            handle = model.model.diffusion_model.register_forward_hook(lambda module, inputs, out: outs.append(out))
            try:
                if previous is None:
                    denoised = apply_model(args["input"], args["timestep"], **args["c"])
                else:
                    denoised = previous(apply_model, args)
            finally:
                handle.remove()
            if calls is not None:
                calls.append(args["input"].shape[0])
            # CONST: denoised = x - sigma * out, so the raw output `out` IS the velocity
            return outs[-1].float() if raw else denoised

        options["model_function_wrapper"] = wrapper
        result["out"] = comfy.samplers.calc_cond_batch(guider.inner_model, [guider.conds[k] for k in keys],
                                                       x.to(noise.device), sigmas.to(noise.device), options)
        return noise

    guider = comfy.samplers.CFGGuider(model)
    guider.inner_set_conds({k: with_guidance(c, guidance) for k, c in zip(keys, conditionings)})
    # the sampler's own start (noise_scaling of these zeros) is ignored: the probe evaluates at `x`; a single
    # sigma below 1 keeps KSAMPLER's closing inverse_noise_scaling finite
    with torch.no_grad():
        guider.sample(torch.zeros_like(x), torch.zeros_like(x), comfy.samplers.KSAMPLER(probe),
                      torch.tensor([0.5]), disable_pbar=True, seed=0)
    return [out.float().cpu() for out in result["out"]]


def host_velocities(model, x, sigma, conditionings, guidance=None, calls=None):
    """The host's velocity at a MODEL-space latent x ([B, ...], the host's layout) for each CONDITIONING in
    `conditionings`, all in ONE comfy.samplers.calc_cond_batch call as a sampler makes it for cond and uncond
    (conds of equal shapes share a model call). sigma: a float (every row) or a [B] tensor, 0 allowed.
    `guidance`: the embedded guidance value set on every conditioning (guidance-distilled families; the
    host's default otherwise). `calls`, a list, receives the batch size of each diffusion-model call."""
    return _calc_cond_batch(model, x, sigma, conditionings, guidance, calls, raw=True)


def host_velocity(model, x, sigma, conditioning, guidance=None, calls=None):
    """The host's velocity at a MODEL-space latent x under one CONDITIONING (see host_velocities)."""
    return host_velocities(model, x, sigma, [conditioning], guidance, calls)[0]


def host_denoised(model, x, sigma, conditioning, guidance=None):
    """The host's own denoised prediction through the same path (the model call's own return value): for a
    CONST model x - sigma * host_velocity."""
    return _calc_cond_batch(model, x, sigma, [conditioning], guidance, raw=False)[0]


# --- the twins --------------------------------------------------------------------------------

def _comfy_sd(model):
    return {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}


def make_twin(model):
    """A diffusers transformer holding `model`'s weights (fp32, eval), for a family in TWINS."""
    import diffusers
    from diffusers.loaders import single_file_utils as sfu
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    name = rf_families.family_of(model)
    config = model.model.model_config.unet_config
    if name == "flux":
        import flux_reference
        return flux_reference.diffusers_twin(model)
    if name in ("chroma", "flux2"):
        import family_reference
        return family_reference.diffusers_twin(model)
    if name == "hunyuan_video":
        import hunyuan_reference
        return hunyuan_reference.diffusers_twin(model)
    if name == "sd3":
        hidden = 64 * config["depth"]   # MMDiT: width = 64 x depth, head dim 64
        net = diffusers.SD3Transformer2DModel(
            sample_size=config["pos_embed_max_size"] * config["patch_size"], patch_size=config["patch_size"],
            in_channels=config["in_channels"], num_layers=config.get("num_blocks", config["depth"]),
            attention_head_dim=64, num_attention_heads=config["depth"],
            joint_attention_dim=config["context_embedder_config"]["params"]["in_features"],
            caption_projection_dim=hidden, pooled_projection_dim=config["adm_in_channels"],
            out_channels=config["out_channels"], pos_embed_max_size=config["pos_embed_max_size"],
            dual_attention_layers=tuple(config.get("x_block_self_attn_layers", ())),
            qk_norm="rms_norm" if config.get("qk_norm") == "rms" else None)
        state = sfu.convert_sd3_transformer_checkpoint_to_diffusers(_comfy_sd(model))
    elif name in ("wan21_t2v", "wan22_t2v"):
        net = diffusers.WanTransformer3DModel(
            patch_size=tuple(config["patch_size"]), num_attention_heads=config["num_heads"],
            attention_head_dim=config["dim"] // config["num_heads"], in_channels=config["in_dim"],
            out_channels=config["out_dim"], text_dim=config["text_dim"], freq_dim=config["freq_dim"],
            ffn_dim=config["ffn_dim"], num_layers=config["num_layers"], cross_attn_norm=config["cross_attn_norm"],
            qk_norm="rms_norm_across_heads", eps=config["eps"], image_dim=None)
        state = sfu.convert_wan_transformer_to_diffusers(_comfy_sd(model))
    elif name == "qwen_image":
        net = diffusers.QwenImageTransformer2DModel(
            patch_size=2, in_channels=config["in_channels"], out_channels=config["out_channels"],
            num_layers=config["num_layers"], attention_head_dim=config["attention_head_dim"],
            num_attention_heads=config["num_attention_heads"], joint_attention_dim=config["joint_attention_dim"],
            guidance_embeds=False, axes_dims_rope=tuple(config["axes_dims_rope"]))
        # diffusers' own single-file mapping for this class (the identity: the checkpoint layout is diffusers')
        convert = SINGLE_FILE_LOADABLE_CLASSES["QwenImageTransformer2DModel"]["checkpoint_mapping_fn"]
        state = convert(_comfy_sd(model))
    elif name == "auraflow":
        net = diffusers.AuraFlowTransformer2DModel(
            sample_size=32, patch_size=config["patch_size"], in_channels=config["in_channels"],
            num_mmdit_layers=config["n_double_layers"],
            num_single_dit_layers=config["n_layers"] - config["n_double_layers"],
            attention_head_dim=config["dim"] // config["n_heads"], num_attention_heads=config["n_heads"],
            joint_attention_dim=config["cond_seq_dim"], caption_projection_dim=config["dim"],
            out_channels=config["out_channels"], pos_embed_max_size=config["max_seq"])
        state = sfu.convert_auraflow_transformer_checkpoint_to_diffusers(_comfy_sd(model))
    elif name == "ltxv":
        net = diffusers.LTXVideoTransformer3DModel(
            in_channels=config["in_channels"], out_channels=config["in_channels"],
            num_attention_heads=config["num_attention_heads"], attention_head_dim=config["attention_head_dim"],
            cross_attention_dim=config["cross_attention_dim"], num_layers=config["num_layers"],
            caption_channels=config["caption_channels"])
        state = sfu.convert_ltx_transformer_checkpoint_to_diffusers(_comfy_sd(model))
    elif name == "lumina2":
        dim, heads, kv = config["dim"], config["n_heads"], config["n_kv_heads"]
        # diffusers' FFN is LuminaFeedForward(inner_dim=4 * dim, ffn_dim_multiplier): the real Lumina 2 config
        # has ffn_dim_multiplier None there (4 * dim), which is the host's ffn_dim_multiplier 4.0 x dim
        net = diffusers.Lumina2Transformer2DModel(
            sample_size=16, patch_size=config["patch_size"], in_channels=config["in_channels"], hidden_size=dim,
            num_layers=config["n_layers"], num_refiner_layers=2, num_attention_heads=heads, num_kv_heads=kv,
            multiple_of=256, ffn_dim_multiplier=None, norm_eps=1e-5, axes_dim_rope=tuple(config["axes_dims"]),
            axes_lens=tuple(config["axes_lens"]), cap_feat_dim=config["cap_feat_dim"])
        # convert_lumina2_to_diffusers splits every fused qkv with the real sizes (2304, 768, 768); hand it
        # placeholders of that size (zero columns) and split the real [q | k | v] = [dim | kv*hd | kv*hd] here
        comfy_sd, head = _comfy_sd(model), dim // heads
        fused = {k: comfy_sd.pop(k) for k in [k for k in comfy_sd if k.endswith("attention.qkv.weight")]}
        comfy_sd.update({k: torch.empty(2304 + 768 + 768, 0) for k in fused})
        state = sfu.convert_lumina2_to_diffusers(comfy_sd)
        for key, tensor in fused.items():
            q, k, v = torch.split(tensor, (dim, kv * head, kv * head))
            to_q = key.replace("attention.qkv", "attn.to_q")
            assert to_q in state, to_q
            state[to_q], state[to_q.replace("to_q", "to_k")], state[to_q.replace("to_q", "to_v")] = q, k, v
    elif name == "z_image":
        net = diffusers.ZImageTransformer2DModel(
            all_patch_size=(config["patch_size"],), all_f_patch_size=(1,), in_channels=config["in_channels"],
            dim=config["dim"], n_layers=config["n_layers"], n_refiner_layers=2, n_heads=config["n_heads"],
            n_kv_heads=config["n_kv_heads"], norm_eps=1e-5, qk_norm=True, cap_feat_dim=config["cap_feat_dim"],
            rope_theta=config["rope_theta"], t_scale=config["time_scale"], axes_dims=list(config["axes_dims"]),
            axes_lens=list(config["axes_lens"]))
        # the timestep MLP's hidden width: the host's is min(dim, 1024), diffusers' a fixed 1024 (the same at the
        # real 3840): give the twin the host's width (a free hidden size, like Chroma's approximator's)
        mid = min(config["dim"], 1024)
        net.t_embedder.mlp[0] = torch.nn.Linear(net.t_embedder.mlp[0].in_features, mid)
        net.t_embedder.mlp[2] = torch.nn.Linear(mid, net.t_embedder.mlp[2].out_features)
        state = sfu.convert_z_image_transformer_checkpoint_to_diffusers(_comfy_sd(model))
    elif name == "hidream":
        net = diffusers.HiDreamImageTransformer2DModel(
            patch_size=config["patch_size"], in_channels=config["in_channels"], out_channels=config["out_channels"],
            num_layers=config["num_layers"], num_single_layers=config["num_single_layers"],
            attention_head_dim=config["attention_head_dim"], num_attention_heads=config["num_attention_heads"],
            caption_channels=list(config["caption_channels"]), text_emb_dim=config["text_emb_dim"],
            num_routed_experts=config["num_routed_experts"], num_activated_experts=config["num_activated_experts"],
            axes_dims_rope=tuple(config["axes_dims_rope"]), max_resolution=tuple(config["max_resolution"]),
            llama_layers=list(config["llama_layers"]))
        state = sfu.convert_hidream_transformer_to_diffusers(_comfy_sd(model))
    else:
        raise ValueError(f"no diffusers twin for {name}")
    net.load_state_dict(state, strict=True)
    return net.float().eval()


def _pack(z):
    """[B, C, H, W] -> diffusers' packed 2x2 tokens [B, (H/2)(W/2), C*4] ((c, ph, pw) order)."""
    return rearrange(z, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def _unpack(tokens, h, w):
    return rearrange(tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h // 2, w=w // 2, ph=2, pw=2)


def _rows(tensor, batch):
    """A conditioning tensor with `batch` rows (the host repeats a 1-row conditioning to the batch)."""
    return tensor if tensor.shape[0] == batch else tensor.repeat(batch, *([1] * (tensor.ndim - 1)))


def twin_velocity(twin, model, x, sigma, conditioning, guidance=None):
    """The diffusers twin's velocity for a MODEL-space latent x (the host's layout: [B, C, H, W], or
    [B, C, T, H, W] for video and Qwen-Image) at flow time sigma in [0, 1] (a float or a [B] tensor), under a
    host CONDITIONING (its context, pooled output and, for guidance-distilled families, its `guidance` value
    or the host's default; `guidance` overrides both)."""
    name = rf_families.family_of(model)
    x = x.float()
    batch = x.shape[0]
    s = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).expand(batch).clone()
    context, extras = conditioning[0][0].float(), conditioning[0][1]
    context = _rows(context, batch)
    if guidance is None:
        guidance = extras.get("guidance", GUIDANCE_DEFAULT.get(name))
    with torch.no_grad():
        if name == "flux":
            import flux_reference
            img, ids, hw = flux_reference.pack(x)
            out = twin(hidden_states=img, encoder_hidden_states=context,
                       pooled_projections=_rows(extras["pooled_output"].float(), batch), timestep=s, img_ids=ids,
                       txt_ids=torch.zeros(context.shape[1], 3), guidance=torch.full((batch,), float(guidance))).sample
            return flux_reference.unpack(out, hw)
        if name in ("chroma", "flux2"):
            import family_reference   # one row at a time: its twin_velocity takes one sigma
            return torch.cat([family_reference.twin_velocity(model, twin, x[i:i + 1], float(s[i]),
                                                             [[context[i:i + 1], extras]], guidance)
                              for i in range(batch)])
        if name == "hunyuan_video":
            vec = _rows(extras["pooled_output"].float(), batch)
            return twin(hidden_states=x, timestep=s * 1000, encoder_hidden_states=context,
                        encoder_attention_mask=torch.ones(context.shape[:2], dtype=torch.long), pooled_projections=vec,
                        guidance=float(guidance) * 1000 * torch.ones(batch)).sample
        if name == "sd3":
            return twin(hidden_states=x, encoder_hidden_states=context,
                        pooled_projections=_rows(extras["pooled_output"].float(), batch), timestep=s * 1000).sample
        if name in ("wan21_t2v", "wan22_t2v"):
            return twin(hidden_states=x, timestep=s * 1000, encoder_hidden_states=context).sample
        if name == "auraflow":
            return twin(hidden_states=x, encoder_hidden_states=context, timestep=s).sample
        if name == "ltxv":
            b, c, t, h, w = x.shape
            mask = extras.get("attention_mask")
            mask = torch.ones(context.shape[:2], dtype=torch.long) if mask is None else _rows(mask, batch)
            frame_rate = extras.get("frame_rate", 25)   # model_base.LTXV's default
            scale = model.model.diffusion_model.vae_scale_factors
            out = twin(hidden_states=x.flatten(2).transpose(1, 2), encoder_hidden_states=context, timestep=s * 1000,
                       encoder_attention_mask=mask, num_frames=t, height=h, width=w,
                       rope_interpolation_scale=(scale[0] / frame_rate, scale[1], scale[2])).sample
            return out.transpose(1, 2).reshape(b, c, t, h, w)
        if name == "lumina2":
            mask = extras.get("attention_mask")
            mask = torch.ones(context.shape[:2], dtype=torch.long) if mask is None else _rows(mask, batch)
            return -twin(hidden_states=x, timestep=1 - s, encoder_hidden_states=context,
                         encoder_attention_mask=mask).sample
        if name == "z_image":
            out = twin([row.unsqueeze(1) for row in x], 1 - s, list(context)).sample
            return -torch.stack([row.squeeze(1) for row in out])
        if name == "hidream":
            llama = _rows(extras["conditioning_llama3"].float(), batch).movedim(1, 0)   # [layers, B, L, D]
            return -twin(hidden_states=x, timesteps=s * 1000, encoder_hidden_states_t5=context,
                         encoder_hidden_states_llama3=llama,
                         pooled_embeds=_rows(extras["pooled_output"].float(), batch)).sample
        if name == "qwen_image":
            z = x[:, :, 0]                                   # [B, 16, 1, H, W] -> [B, 16, H, W]
            h, w = z.shape[-2:]
            mask = extras.get("attention_mask")
            out = twin(hidden_states=_pack(z), encoder_hidden_states=context,
                       encoder_hidden_states_mask=None if mask is None else _rows(mask, batch),
                       timestep=s, img_shapes=[(1, h // 2, w // 2)] * batch).sample
            return _unpack(out, h, w).unsqueeze(2)
    raise ValueError(f"no diffusers twin for {name}")


def rel(a, b) -> float:
    """||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm())
