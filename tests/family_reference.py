"""Test fixtures for two Flux descendants as the ComfyUI host (0.3.75) defines them, with an
independent reference of RF-Solver-Edit on their diffusers twins:

- Chroma: comfy.model_base.Chroma (comfy/ldm/chroma/model.py) with supported_models.Chroma;
  19 double and 38 single blocks, no per-block modulation (a shared "distilled guidance" approximator
  makes the whole modulation table), no pooled vector, no guidance embedding in the official model.
- Flux.2: comfy.model_base.Flux2 (comfy/ldm/flux/model.py with global_modulation) with
  supported_models.Flux2; 8 double and 48 single blocks (Flux.2 [dev]), 4 rope axes, SwiGLU MLPs,
  no biases, 128-channel latents at 1/16 of the image size and patch size 1.

Both are built by the host's own classes at the REAL block counts and a small width (hidden 64,
2 heads of 32) with random weights initialised like flux_harness.init_flux_weights.

The twins are diffusers' ChromaTransformer2DModel / Flux2Transformer2DModel loaded through
diffusers' own single-file key converters (see diffusers_twin for the one place Chroma's had to be
helped). The reference edit (rf_solver_edit_by_analogy) is RF-Solver-Edit's official algorithm
(flux_reference.RFSolverEdit, written from wangjiangshan0725/RF-Solver-Edit) run on the twin with
a given sigma schedule; it does not use this pack's engine.

Text length (what the model sees), per family:
- Chroma: the host's T5 tokenizer (comfy/text_encoders/pixart_t5.py: min_length=1,
  pad_to_max_length=False) does not pad, and model_base.Chroma/Flux.extra_conds pass the context
  through unchanged, so the text length is the prompt's token count (source and target prompts of
  different lengths can NOT have V of all tokens swapped; the reference refuses them).
- Flux.2: model_base.Flux2.extra_conds LEFT-pads the context with zeros to 512 tokens (unmasked:
  Flux.extra_conds drops a text attention_mask unless attention_mask_img_shape is given), and the
  text rope ids are (0, 0, 0, l) for l = 0..511, so every prompt under 512 tokens is 512 tokens.
"""
from __future__ import annotations

import torch
from einops import rearrange

import comfy.model_base
import comfy.supported_models as sm
from flux_harness import patcher_of
from flux_reference import RFSolverEdit

HIDDEN, HEADS = 64, 2                       # head dim 32

# Chroma (real: hidden 3072, 24 heads, axes [16, 56, 56], T5-XXL context 4096, approximator 5120 wide)
CHROMA_AXES = [8, 12, 12]
CHROMA_CONTEXT = 32
CHROMA_DOUBLE, CHROMA_SINGLE = 19, 38
CHROMA_APPROX_HIDDEN = 32                   # the approximator's width (real 5120); free in both codes
CHROMA_MOD_INDEX = 344                      # comfy/ldm/chroma/model.py forward_orig: mod_index_length = 344

# Flux.2 [dev] (real: hidden 6144, 48 heads, axes [32]*4, Mistral context 3 x 5120 = 15360)
FLUX2_AXES = [8, 8, 8, 8]
FLUX2_CONTEXT = 32
FLUX2_DOUBLE, FLUX2_SINGLE = 8, 48
FLUX2_TEXT_LEN = 512                        # model_base.Flux2.extra_conds: target_text_len = 512


# --- the models -------------------------------------------------------------------------------

def chroma_config(hidden: int = HIDDEN, heads: int = HEADS, axes=CHROMA_AXES, double: int = CHROMA_DOUBLE,
                  single: int = CHROMA_SINGLE) -> dict:
    """The unet_config model_detection gives a Chroma checkpoint (model_detection.py, the Flux branch
    then the `distilled_guidance_layer` override), shrunk in width only."""
    # The host hard-codes a modulation table of 344 rows (3 per single block, 12 per double block, 2 for
    # the final layer) whatever the block counts; diffusers sizes it 3*S + 12*D + 2 and reads the final
    # layer's shift/scale from ITS last two rows. The two agree only at the real counts (3*38 + 12*19 + 2).
    assert 3 * single + 12 * double + 2 == CHROMA_MOD_INDEX, "Chroma's block counts must fill its 344-row table"
    return {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "context_in_dim": CHROMA_CONTEXT,
            "hidden_size": hidden, "mlp_ratio": 4.0, "num_heads": heads, "depth": double,
            "depth_single_blocks": single, "axes_dim": list(axes), "theta": 10000, "patch_size": 2,
            "qkv_bias": True,
            # the approximator: in_dim is fixed at 64 by forward_orig (16 timestep + 16 guidance + 32
            # index channels), out_dim must be the hidden width (its rows ARE the shift/scale/gate
            # vectors), hidden_dim and n_layers are free (real 5120 and 5).
            "in_dim": 64, "out_dim": hidden, "hidden_dim": CHROMA_APPROX_HIDDEN, "n_layers": 5}


def flux2_config(hidden: int = HIDDEN, heads: int = HEADS, axes=FLUX2_AXES, double: int = FLUX2_DOUBLE,
                 single: int = FLUX2_SINGLE) -> dict:
    """The unet_config model_detection gives a Flux.2 [dev] checkpoint, shrunk in width only."""
    return {"image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
            "context_in_dim": FLUX2_CONTEXT, "hidden_size": hidden, "mlp_ratio": 3.0, "num_heads": heads,
            "depth": double, "depth_single_blocks": single, "axes_dim": list(axes), "theta": 2000,
            "patch_size": 1, "qkv_bias": False, "guidance_embed": True, "global_modulation": True,
            "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0}


def make_chroma(seed: int = 0, **config):
    """A ModelPatcher around a real comfy.model_base.Chroma (sm.Chroma config), fp32 on the CPU.
    Sampling: ModelSamplingFlux at its default shift 1.15 (sm.Chroma sets only a multiplier)."""
    return patcher_of(sm.Chroma(chroma_config(**config)), comfy.model_base.Chroma, seed)


def make_flux2(seed: int = 0, **config):
    """A ModelPatcher around a real comfy.model_base.Flux2 (sm.Flux2 config), fp32 on the CPU.
    Sampling: ModelSamplingFlux at shift 2.02 (sm.Flux2.sampling_settings)."""
    return patcher_of(sm.Flux2(flux2_config(**config)), comfy.model_base.Flux2, seed)


def family(model) -> str:
    """'chroma' or 'flux2' (Chroma subclasses Flux in model_base; Flux2 too)."""
    base = model.model
    if isinstance(base, comfy.model_base.Chroma):
        return "chroma"
    if isinstance(base, comfy.model_base.Flux2):
        return "flux2"
    raise TypeError(f"not a Chroma or Flux.2 model: {type(base).__name__}")


def conditioning_for(model, seed: int = 1, tokens: int = 8, batch: int = 1):
    """A CONDITIONING shaped like the family's text encoder output in this host: the context
    [batch, tokens, context_in_dim], `pooled_output` None (neither family has a pooled vector, but
    Flux.encode_adm reads the key), and for Flux.2 the all-ones `attention_mask` its Mistral encoder
    returns (the host drops it: see the module docstring). Not padded here: Flux.2's padding to 512 is
    the model's (extra_conds) business."""
    width = model.model.model_config.unet_config["context_in_dim"]
    gen = torch.Generator().manual_seed(seed)
    extra = {"pooled_output": None}
    if family(model) == "flux2":
        extra["attention_mask"] = torch.ones(batch, tokens, dtype=torch.long)
    return [[torch.randn(batch, tokens, width, generator=gen), extra]]


def latent_for(model, seed: int = 2, size: int = 16, batch: int = 1) -> torch.Tensor:
    """An image-like source latent in user space for an image of 8*size pixels square: Chroma's is the
    Flux.1 latent [B, 16, size, size] (VAE /8, patchified 2x2 by the model); Flux.2's is
    [B, 128, size/2, size/2] (EmptyFlux2LatentImage: VAE /16, patch size 1). Both make (size/2)^2 tokens."""
    gen = torch.Generator().manual_seed(seed)
    channels, side = (16, size) if family(model) == "chroma" else (128, size // 2)
    smooth = torch.nn.functional.interpolate(torch.randn(batch, channels, max(side // 4, 1), max(side // 4, 1),
                                                         generator=gen),
                                             size=(side, side), mode="bilinear", align_corners=False)
    return 2.0 * smooth + 0.3 * torch.randn(batch, channels, side, side, generator=gen)


# --- the diffusers twins ----------------------------------------------------------------------

def diffusers_twin(model):
    """A diffusers ChromaTransformer2DModel / Flux2Transformer2DModel holding `model`'s weights (fp32, eval)."""
    import diffusers
    from diffusers.loaders import single_file_utils as sfu

    config = model.model.model_config.unet_config
    hidden, heads = config["hidden_size"], config["num_heads"]
    comfy_sd = {k: v.detach().clone() for k, v in model.model.diffusion_model.state_dict().items()}
    if family(model) == "chroma":
        net = diffusers.ChromaTransformer2DModel(
            patch_size=1, in_channels=config["in_channels"], num_layers=config["depth"],
            num_single_layers=config["depth_single_blocks"], attention_head_dim=hidden // heads,
            num_attention_heads=heads, joint_attention_dim=config["context_in_dim"],
            axes_dims_rope=tuple(config["axes_dim"]), approximator_num_channels=config["in_dim"],
            approximator_hidden_dim=config["hidden_dim"], approximator_layers=config["n_layers"])
        # convert_chroma_transformer_checkpoint_to_diffusers splits each single block's fused linear1
        # with hard-coded sizes (inner_dim = 3072, mlp_ratio = 4: torch.split(..., (3072, 3072, 3072,
        # 12288))), which fails at any other width. Everything else it converts size-agnostically
        # (chunk(3) of the double blocks' qkv, renames). So hand it placeholders of the size it
        # expects for those tensors (zero columns: no memory), let it convert the rest, and split the
        # real linear1 [q | k | v | mlp] = [h | h | h | 4h] here, the same layout its split assumes.
        fused = {}
        for i in range(config["depth_single_blocks"]):
            for kind in ("weight", "bias"):
                key = f"single_blocks.{i}.linear1.{kind}"
                fused[key] = comfy_sd.pop(key)
                comfy_sd[key] = torch.empty((3 * 3072 + 4 * 3072,) + ((0,) if kind == "weight" else ()))
        state = sfu.convert_chroma_transformer_checkpoint_to_diffusers(comfy_sd)
        assert not comfy_sd, f"Chroma keys the converter left: {sorted(comfy_sd)[:8]}"
        mlp = int(hidden * config["mlp_ratio"])
        for i in range(config["depth_single_blocks"]):
            for kind in ("weight", "bias"):
                q, k, v, m = torch.split(fused[f"single_blocks.{i}.linear1.{kind}"], (hidden, hidden, hidden, mlp))
                prefix = f"single_transformer_blocks.{i}."
                for name, part in (("attn.to_q", q), ("attn.to_k", k), ("attn.to_v", v), ("proj_mlp", m)):
                    state[f"{prefix}{name}.{kind}"] = part.clone()
    else:
        net = diffusers.Flux2Transformer2DModel(
            patch_size=1, in_channels=config["in_channels"] * config["patch_size"] ** 2,
            num_layers=config["depth"], num_single_layers=config["depth_single_blocks"],
            attention_head_dim=hidden // heads, num_attention_heads=heads,
            joint_attention_dim=config["context_in_dim"], timestep_guidance_channels=256,
            mlp_ratio=config["mlp_ratio"], axes_dims_rope=tuple(config["axes_dim"]), rope_theta=config["theta"],
            eps=1e-6, guidance_embeds=config["guidance_embed"])
        # convert_flux2_transformer_checkpoint_to_diffusers is size-agnostic (linear1 -> to_qkv_mlp_proj
        # whole, qkv chunk(3), final adaLN shift/scale swapped): used as is.
        state = sfu.convert_flux2_transformer_checkpoint_to_diffusers(comfy_sd)
    net.load_state_dict(state, strict=True)
    return net.eval()  # built in fp32 already


# --- inputs as each family's model sees them --------------------------------------------------

def pack(model, z):
    """A model-space latent [B, C, H, W] as the family's image tokens, with their rope ids (as the
    host's _forward / process_img make them) and what unpack needs."""
    if family(model) == "chroma":  # 2x2 patches, ids (0, h, w)
        h, w = z.shape[-2] // 2, z.shape[-1] // 2
        img = rearrange(z, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
        ids = torch.zeros(h, w, 3)
    else:                          # patch size 1, ids (0, h, w, 0)
        h, w = z.shape[-2], z.shape[-1]
        img = rearrange(z, "b c h w -> b (h w) c")
        ids = torch.zeros(h, w, 4)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None, :]
    return img, ids.reshape(-1, ids.shape[-1]), (h, w)


def unpack(model, img, hw):
    h, w = hw
    if family(model) == "chroma":
        return rearrange(img, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h, w=w, ph=2, pw=2)
    return rearrange(img, "b (h w) c -> b c h w", h=h, w=w)


def text(model, prompt):
    """The prompt's context as the model sees it, and its rope ids: Chroma as is with ids 0;
    Flux.2 left-padded with zeros to 512 tokens, ids (0, 0, 0, l)."""
    txt = prompt[0][0].float()
    if family(model) == "chroma":
        return txt, torch.zeros(txt.shape[1], 3)
    if txt.shape[1] < FLUX2_TEXT_LEN:
        txt = torch.nn.functional.pad(txt, (0, 0, FLUX2_TEXT_LEN - txt.shape[1], 0))
    ids = torch.zeros(txt.shape[1], 4)
    ids[:, 3] = torch.arange(txt.shape[1])
    return txt, ids


def twin_velocity(model, net, x, sigma, prompt, guidance=None):
    """The twin's velocity at a model-space latent x and level sigma (both families take t = sigma,
    times 1000 inside). Chroma's twin has no guidance input (its guidance channel is always 0)."""
    img, img_ids, hw = pack(model, x)
    txt, txt_ids = text(model, prompt)
    t = torch.full((x.shape[0],), float(sigma))
    kwargs = {}
    if family(model) == "flux2":
        kwargs["guidance"] = torch.full((x.shape[0],), 3.5 if guidance is None else float(guidance))
    with torch.no_grad():
        out = net(hidden_states=img, encoder_hidden_states=txt, timestep=t, img_ids=img_ids, txt_ids=txt_ids,
                  **kwargs).sample
    return unpack(model, out, hw)


def comfy_velocity(model, x, sigma, prompt, guidance=None):
    """The host's velocity at a model-space latent x: the conds built by model_base's own extra_conds
    (Flux.2's padding to 512, the guidance defaults: Chroma 0, Flux 3.5), then BaseModel.apply_model
    (ModelSamplingFlux: t = sigma; CONST: denoised = x - sigma v), turned back into v."""
    base = model.model
    extra = {"guidance": guidance} if guidance is not None else {}
    conds = base.extra_conds(cross_attn=prompt[0][0], noise=x, device=x.device, **{**prompt[0][1], **extra})
    kwargs = {k: c.cond for k, c in conds.items()}
    s = torch.full((x.shape[0],), float(sigma))
    with torch.no_grad():
        denoised = base.apply_model(x, s, transformer_options={}, **kwargs)
    return (x - denoised) / s.view(-1, 1, 1, 1)


def assert_twin_agrees(model, seed: int = 3, sigma: float = 0.6, tokens: int = 7, rtol: float = 1e-5, net=None):
    """The ComfyUI model and its diffusers twin give the same velocity on a random input (relative
    L2 error under rtol). Flux.2 at guidance 3.5 (its host default), Chroma at guidance 0 (its host
    default and the only value diffusers' Chroma knows). Returns the relative error."""
    net = diffusers_twin(model) if net is None else net
    gen = torch.Generator().manual_seed(seed)
    z = model.model.process_latent_in(latent_for(model, seed=seed))
    x = (1 - sigma) * z + sigma * torch.randn(z.shape, generator=gen)
    prompt = conditioning_for(model, seed=seed + 1, tokens=tokens)
    guidance = 0.0 if family(model) == "chroma" else 3.5
    ours = comfy_velocity(model, x, sigma, prompt, guidance)
    theirs = twin_velocity(model, net, x, sigma, prompt, guidance)
    err = ((ours - theirs).norm() / ours.norm()).item()
    assert torch.isfinite(ours).all() and err < rtol, f"{family(model)} twin disagrees: relative error {err:.3g}"
    return err


# --- RF-Solver-Edit by analogy ----------------------------------------------------------------

class ChromaRFSolverEdit(RFSolverEdit):
    """RFSolverEdit on diffusers' Chroma: its single blocks have separate attn.to_v (as Flux.1's in
    diffusers), so the official V hook is reused unchanged; only the call differs (no pooled vector,
    no guidance)."""

    def velocity(self, img, t, txt, vec, guidance, ids):
        ones = torch.ones(img.shape[0])
        return self.net(hidden_states=img, encoder_hidden_states=txt, timestep=t * ones,
                        img_ids=ids[0], txt_ids=ids[1]).sample


class Flux2RFSolverEdit(RFSolverEdit):
    """RFSolverEdit on diffusers' Flux.2: single blocks fuse q, k, v and the MLP input in one
    attn.to_qkv_mlp_proj ([q | k | v | gate | up]); V is its columns [2*inner, 3*inner), before the
    QK-norm and rope as in the official code. The hook keeps / replaces just those columns."""

    def __init__(self, net, blocks):
        self.net, self.features, self.mode, self.key = net, {}, None, None
        self.inner = net.config.num_attention_heads * net.config.attention_head_dim
        for b in blocks:
            net.single_transformer_blocks[b].attn.to_qkv_mlp_proj.register_forward_hook(self._hook(b))

    def _hook(self, block):
        lo, hi = 2 * self.inner, 3 * self.inner

        def hook(module, args, out):
            if self.mode is None:
                return None
            name = (self.key, block)
            if self.mode == "store":
                self.features[name] = out[..., lo:hi].clone()
                return None
            out = out.clone()
            out[..., lo:hi] = self.features[name]
            return out
        return hook

    def velocity(self, img, t, txt, vec, guidance, ids):
        ones = torch.ones(img.shape[0])
        return self.net(hidden_states=img, encoder_hidden_states=txt, timestep=t * ones,
                        img_ids=ids[0], txt_ids=ids[1], guidance=guidance * ones).sample


def default_blocks(model):
    """The rule by analogy: the second half of the single blocks, range(S // 2, S) (Chroma 19-37,
    Flux.2 24-47). (Flux.1's official choice is 20-37, `id > 19`, one block fewer than this rule.)"""
    single = model.model.model_config.unet_config["depth_single_blocks"]
    return range(single // 2, single)


def reference_for(model, blocks=None, net=None):
    """The family's RFSolverEdit on a (fresh by default) diffusers twin, hooked at `blocks`."""
    net = diffusers_twin(model) if net is None else net
    blocks = default_blocks(model) if blocks is None else blocks
    cls = ChromaRFSolverEdit if family(model) == "chroma" else Flux2RFSolverEdit
    return cls(net, blocks)


def run_edit(model, reference, source, source_prompt, target_prompt, sigmas, inject, guidance):
    """The official driver with a given schedule, on a prepared reference: invert `source` (user
    space) up `sigmas` with the source prompt at guidance 1, then sample the target prompt down them
    at `guidance`; the edited latent in user space."""
    sigmas = [float(s) for s in sigmas]  # the dict keys are these floats, shared by both passes
    if not (abs(sigmas[0] - 1.0) < 1e-6 and sigmas[-1] == 0.0 and all(a > b for a, b in zip(sigmas, sigmas[1:]))):
        raise ValueError(f"sigmas must descend from 1 to 0, got {sigmas}")
    if not 0 <= inject <= len(sigmas) - 1:
        raise ValueError(f"inject must be in [0, {len(sigmas) - 1}], got {inject}")
    img, img_ids, hw = pack(model, model.model.process_latent_in(source.float()))
    src_txt, src_ids = text(model, source_prompt)
    tgt_txt, tgt_ids = text(model, target_prompt)
    if inject > 0 and src_txt.shape[1] != tgt_txt.shape[1]:
        # V of ALL tokens (text included) is swapped, as in the official code, whose T5 text is always
        # 512 tokens; in this host Chroma's text is not padded, so the prompts must match in length.
        raise ValueError(f"source prompt has {src_txt.shape[1]} text tokens, target {tgt_txt.shape[1]}: "
                         "V of all tokens cannot be swapped")
    reference.features.clear()
    noise = reference.denoise(img, sigmas, True, inject, 1.0, src_txt, None, (img_ids, src_ids))
    out = reference.denoise(noise, sigmas, False, inject, float(guidance), tgt_txt, None, (img_ids, tgt_ids))
    return model.model.process_latent_out(unpack(model, out, hw))


def rf_solver_edit_by_analogy(model, source, source_prompt, target_prompt, sigmas, inject, guidance, blocks=None):
    """RF-Solver-Edit's official algorithm carried over to Chroma / Flux.2, on the diffusers twin:
    RF-Solver (second-order) steps over `sigmas` (descending from 1 to 0), V of all tokens in the
    single blocks `blocks` (default: the second half) kept at both evaluations of the last `inject`
    inversion steps, keyed (sigma, second_order) and block like the official code, and put back in
    the first `inject` sampling steps. `guidance` is the embedded guidance of the sampling pass
    (inversion at 1); Chroma has no guidance embedding and ignores it. Returns the edited latent in
    user space."""
    return run_edit(model, reference_for(model, blocks), source, source_prompt, target_prompt, sigmas, inject,
                    guidance)
