"""Random-weight Flux.1, Chroma and HunyuanVideo files that ComfyUI's own loaders detect, for graph-level tests.

A Flux.1 [dev] graph loads three things, a Chroma graph a diffusion model, T5-XXL and Flux.1's VAE, a HunyuanVideo
graph a diffusion model, CLIP-L + llava-llama-3 and HunyuanVideo's VAE; the tests load these in their place
(``cached_flux_file``):

=====================================================  ===============================================
what the user's graph loads                            what the test server holds
=====================================================  ===============================================
Load Diffusion Model (UNETLoader):                     ``pnp-test-flux``: Flux.1 [dev]'s layout and
``flux1-dev.safetensors``                              widths (3072 wide, 24 heads, guidance
                                                       embedding, 4096-wide text input, 768-wide pooled
                                                       input) with 1 double-stream and 2 single-stream
                                                       blocks instead of 19 and 38
DualCLIPLoader, type ``flux``:                         DualCLIPLoader, type ``sd3``, with
``clip_l.safetensors`` + ``t5xxl_fp16.safetensors``    ``pnp-test-clip-l`` (a full-size CLIP-L) in
                                                       both slots
Load VAE: ``ae.safetensors``                           ``pnp-test-flux-ae``: a TAEF1-format VAE (the
                                                       16-channel tiny autoencoder ComfyUI also loads
                                                       as ``taef1``), calibrated like the SD1.5 TAESD
Load Diffusion Model (UNETLoader):                     ``pnp-test-chroma``: Chroma's layout and widths
``Chroma1-HD.safetensors``                             (3072 wide, 24 heads, the 5-layer 5120-wide
                                                       approximator, 4096-wide text input) with 1
                                                       double-stream and 2 single-stream blocks
                                                       instead of 19 and 38
Load CLIP (CLIPLoader), type ``chroma``:               Load CLIP, type ``sd3``, with ``pnp-test-clip-l``
``t5xxl_fp16.safetensors``                             (CLIP-L alone, zero-padded to 4096 channels)
=====================================================  ===============================================

Why these and not smaller or closer ones:

- Diffusion model: ComfyUI (0.3.75) detects Flux from its keys and reads the width from ``img_in`` and
  ``txt_in`` and the block counts from the block keys, but fixes 24 heads and rotary axes of 16+56+56
  = 128 channels a head. A Flux that the loader accepts is therefore 3072 wide, like Flux.1, and only
  the depth can shrink: one double-stream block (340 M parameters) and two single-stream blocks (142 M
  each) make 0.69 B parameters (1.3 GiB in fp16, 2.6 GiB as the fp32 model ComfyUI builds on a CPU),
  where Flux.1's 19 + 38 blocks make 11.9 B. In-process tests that need Flux.1's block counts build a
  narrow Flux directly from a config instead (no loader involved).
- Chroma: the same holds (detection fixes 24 heads of 128 rope channels, so 3072 wide), and it also fixes the
  approximator that makes Chroma's modulation table (5 layers of 5120, 0.28 B parameters): with 1 + 2 blocks
  the file has 0.74 B parameters (1.4 GiB in fp16; Chroma1's 19 + 38 make 8.9 B). Each evaluation runs the
  approximator over the table's 344 rows whatever the image (about 2.5 s of 3.6 s on one CPU core).
  Chroma reads no pooled vector and has no distilled guidance; the host's table of 344 rows is read at offsets
  from the block counts, so fewer blocks leave rows unread. Load CLIP type ``chroma`` builds T5-XXL from its
  fixed config for a T5 file and gives CLIP-L's 768-wide conditioning for a CLIP-L file; Load CLIP type
  ``sd3`` with CLIP-L alone gives the 4096-wide conditioning below, so the test keeps the user's Load CLIP
  node and changes its widgets (file name and type), as for DualCLIPLoader.
- HunyuanVideo: the host's detection reads the width from ``img_in`` and sets 1 head per 128 channels with
  rotary axes 16+56+56, so unlike Flux the width can shrink to 128 (one head) and the file keeps the real
  block counts: the official video edit's layers (single blocks 21-39 of 40) run as shipped. 26 M parameters
  (50 MiB in fp16); the keys are the original release's names (``img_attn_qkv``, ``img_mod.linear``...), which
  the host maps to its own (``supported_models.HunyuanVideo.process_unet_state_dict``). Its text input is
  llava-llama-3's hidden states (4096 wide, as T5-XXL's) and its pooled input CLIP-L's (768): DualCLIPLoader
  ``sd3`` with CLIP-L alone gives both shapes, as for Flux (DualCLIPLoader ``hunyuan_video`` would build an
  8 B llama).
- HunyuanVideo's VAE: the full one (a causal 3D autoencoder) is replaced by the TAEHV format (the host's
  ``comfy/taesd/taehv.py``, detected by its ``decoder.22.bias`` key; fp16 weights mean HunyuanVideo's latent
  format): 16 latent channels, 8x in space and 4x in time, so 4k + 1 frames give k + 1 latent frames as the
  full VAE does.
- Text encoders: ComfyUI builds T5-XXL from a fixed config (24 layers, 4096 wide, 4.7 B parameters,
  about 2.4 TFLOP per 256-token prompt), whatever the file holds, and DualCLIPLoader ``flux`` always
  builds it: no T5-XXL runs on a 2-core test machine or in CI. DualCLIPLoader ``sd3`` with CLIP-L
  alone is ComfyUI's SD3 text encoder without T5 and CLIP-G: its conditioning is CLIP-L's penultimate
  hidden states zero-padded to 4096 channels (T5-XXL's width, so ``txt_in`` keeps Flux.1's shape) and
  its pooled output starts with CLIP-L's unprojected pooled output, which is what Flux reads (the model
  takes the first ``vec_in_dim`` = 768 channels; Flux.1's own CLIP-L gives the same unprojected pooled
  output). So the test keeps the user's DualCLIPLoader node and changes only its widgets (file names
  and type), as it changes the checkpoint's file name for SD1.5; the prompt reaches the model through
  77 CLIP-L tokens instead of at least 256 T5 tokens.
- VAE: the full Flux autoencoder has 84 M parameters and runs its decoder at full resolution; the
  TAEF1 format has the same 16 latent channels and 8x downscale, and ComfyUI scales its latents
  with Flux's factors (0.3611, shift 0.1159) as for ``taef1``.

Everything is generated under the ignored ``.cache/`` (never committed), once, by the set-up
(``scripts/setup.sh --test`` runs tests/prepare_models.py) or else by the first test that needs it, then
cached: about 25 s to write the three Flux files (1.3 GiB, 236 MiB, 5 MiB) and 12 s to load and check them
through ComfyUI's loaders, on one core; 15 s and 13 s for the Chroma file (1.4 GiB); a few seconds each for the
HunyuanVideo files. Run
``python tests/flux_files.py NAME PATH`` to write and verify one file.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

from checkpoint_factory import (_calibrate_taesd, _import_comfy, _random_weights, _save, cached_model, check_detected,
                                gradient_image, main)

# Bump when the generated weights or layout change: cached files are rebuilt.
FLUX_FILES_VERSION = 1

# What comfy.model_detection.detect_unet_config reads back from the diffusion model's keys.
# Flux.1 [dev] has depth 19 and depth_single_blocks 38; everything else is its own.
FLUX_UNET_CONFIG = {
    "image_model": "flux",
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 768,
    "context_in_dim": 4096,
    "hidden_size": 3072,
    "mlp_ratio": 4.0,
    "num_heads": 24,
    "depth": 1,
    "depth_single_blocks": 2,
    "axes_dim": [16, 56, 56],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
    "guidance_embed": True,
}

# The PnP Flux layers the workflow tests inject on this model: the value tensor of all tokens in the
# later half of the single-stream blocks, which is what the rf-solver-edit preset takes of Flux.1's 38
# (blocks 20-37); the preset itself names blocks this model does not have.
# FireFlow's layers are all the single-stream blocks (0-37 of Flux.1): here both.
# KV-Edit's inversion has no layer input: its set is every block's K and V of the model it runs on.
# The Chroma workflow's preset, rf-solver-edit (by analogy), is the second half of the model's own single blocks
# (19-37 of Chroma's 38; here block 1 of 2): it runs as shipped (workflow_api.ANALOGY_LAYERS).
FLUX_TEST_LAYERS = {"PnPFluxInversion": "single.1:v", "PnPFluxFireFlowInversion": "single.0-1:v"}

# What detect_unet_config reads back from a Chroma diffusion model's keys (the Flux branch, then the override for the
# `distilled_guidance_layer` keys): everything but the block counts is fixed by the host or read from img_in and
# txt_in, and the fixed 24 heads of 16+56+56 rope channels make any Chroma it loads 3072 wide, with the approximator
# at 5 layers of 5120 (the host's own numbers for Chroma; only in_dim, 64, is forced by forward_orig). Chroma1 has 19
# double-stream and 38 single-stream blocks (8.9 B parameters); this file has 1 and 2, as the Flux file.
CHROMA_UNET_CONFIG = {
    **{k: v for k, v in FLUX_UNET_CONFIG.items() if k not in ("vec_in_dim", "guidance_embed")},
    "image_model": "chroma", "in_channels": 64, "out_channels": 64,
    "in_dim": 64, "out_dim": 3072, "hidden_dim": 5120, "n_layers": 5,  # the approximator
}

# What detect_unet_config reads back from a HunyuanVideo 1.0 file (its `hunyuan_video` branch): the width from img_in,
# 1 head per 128 channels, rope axes 16+56+56, the block counts from the keys; the real model is 3072 wide
# (24 heads) with the same 20 double-stream and 40 single-stream blocks.
HUNYUAN_VIDEO_UNET_CONFIG = {
    "image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
    "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 1, "depth": 20, "depth_single_blocks": 40,
    "axes_dim": [16, 56, 56], "theta": 256, "patch_size": [1, 2, 2], "qkv_bias": True, "guidance_embed": True,
    "byt5": False, "meanflow": False,
}

# ComfyUI's scale and shift for TAEF1 latents (nodes.VAELoader.load_taesd, "taef1").
TAEF1_SCALE = 0.3611
TAEF1_SHIFT = 0.1159
FLUX_LATENT_CHANNELS = 16


def make_flux_unet(path, seed: int = 10) -> Path:
    """A standalone diffusion-model file with bare keys, as flux1-dev.safetensors is laid out."""
    return _make_unet(path, seed, "comfy.ldm.flux.model", "Flux", FLUX_UNET_CONFIG)


def make_chroma_unet(path, seed: int = 13) -> Path:
    """A standalone Chroma diffusion-model file with bare keys, as Chroma1-HD.safetensors is laid out."""
    return _make_unet(path, seed, "comfy.ldm.chroma.model", "Chroma", CHROMA_UNET_CONFIG)


def _make_unet(path, seed: int, module: str, name: str, unet_config: dict) -> Path:
    comfy = _import_comfy()
    network = getattr(importlib.import_module(module), name)
    config = {k: v for k, v in unet_config.items() if k != "image_model"}
    sd = _random_weights(lambda: network(**config, operations=comfy.ops.disable_weight_init), "", seed)
    _save(sd, path, FLUX_FILES_VERSION)
    return Path(path)


def make_hunyuan_video_unet(path, seed: int = 14) -> Path:
    """A standalone HunyuanVideo diffusion-model file under the original release's key names."""
    comfy = _import_comfy()
    import comfy.ldm.hunyuan_video.model
    config = {k: v for k, v in HUNYUAN_VIDEO_UNET_CONFIG.items() if k != "image_model"}
    config.update(use_cond_type_embedding=False, vision_in_dim=None)  # HunyuanVideo 1.5's, off in 1.0
    sd = _random_weights(lambda: comfy.ldm.hunyuan_video.model.HunyuanVideo(
        **config, operations=comfy.ops.disable_weight_init), "", seed)
    _save(comfy_to_tencent(sd), path, FLUX_FILES_VERSION)
    return Path(path)


# supported_models.HunyuanVideo.process_unet_state_dict (Tencent -> Comfy), inverted: per key, the FIRST
# rule that matches applies (the specific rules come first; no key needs two). The inversion is checked
# by running the host's own mapping on the result (necessary, not sufficient: `_in.mlp.0.` and
# `mlp.fc1.` both end at `_in.in_layer.`); diffusers' strict load checks the names it expects.
_COMFY_TO_TENCENT = (
    ("txt_in.t_embedder.in_layer.", "txt_in.t_embedder.mlp.0."),
    ("txt_in.t_embedder.out_layer.", "txt_in.t_embedder.mlp.2."),
    ("txt_in.c_embedder.in_layer.", "txt_in.c_embedder.linear_1."),
    ("txt_in.c_embedder.out_layer.", "txt_in.c_embedder.linear_2."),
    # `_in.mlp.0.` -> `_in.in_layer.` is not one-to-one: the official vector_in is already named
    # in_layer/out_layer (and diffusers' converter expects that), time_in and guidance_in are mlp.0/2.
    ("time_in.in_layer.", "time_in.mlp.0."), ("time_in.out_layer.", "time_in.mlp.2."),
    ("guidance_in.in_layer.", "guidance_in.mlp.0."), ("guidance_in.out_layer.", "guidance_in.mlp.2."),
    ("_mod.lin.", "_mod.linear."),
    ("_attn.qkv.", "_attn_qkv."),
    ("mlp.0.", "mlp.fc1."), ("mlp.2.", "mlp.fc2."),
    ("_attn.norm.query_norm.scale", "_attn_q_norm.weight"), ("_attn.norm.key_norm.scale", "_attn_k_norm.weight"),
    (".norm.query_norm.scale", ".q_norm.weight"), (".norm.key_norm.scale", ".k_norm.weight"),
    ("_attn.proj.", "_attn_proj."),
    (".modulation.lin.", ".modulation.linear."),
)


def comfy_to_tencent(comfy_sd: dict) -> dict:
    """A host HunyuanVideo state dict under the original (Tencent) names, checked against the host's
    own Tencent -> Comfy mapping (supported_models.HunyuanVideo.process_unet_state_dict) round trip."""
    comfy = _import_comfy()
    out = {}
    for key, value in comfy_sd.items():
        name = next((key.replace(old, new) for old, new in _COMFY_TO_TENCENT if old in key), key)
        out[name] = value
    back = comfy.supported_models.HunyuanVideo({"image_model": "hunyuan_video"}).process_unet_state_dict(dict(out))
    assert sorted(back) == sorted(comfy_sd), "the inverted key mapping does not round-trip through the host's"
    return out


def clip_frames(frames: int = 9, size: int = 64) -> torch.Tensor:
    """A clip in ComfyUI's IMAGE layout [frames, H, W, 3]: the gradient image with a bright square moving across."""
    clip = gradient_image(size).repeat(frames, 1, 1, 1)
    side = size // 4
    for t in range(frames):
        x = round(t * (size - side) / max(frames - 1, 1))
        clip[t, size // 3:size // 3 + side, x:x + side] = torch.tensor([1.0, 0.9, 0.2])
    return clip


def make_hunyuan_tae(path, seed: int = 15) -> Path:
    """A TAEHV-format VAE in fp16 (the host then uses HunyuanVideo's latent format), calibrated: encoding the test
    clip gives model-space latents of std 1, decoding N(0, 1) latents gives frames of mean 0.5 and std 0.25."""
    comfy = _import_comfy()
    import comfy.taesd.taehv
    build = lambda: comfy.taesd.taehv.TAEHV(latent_channels=FLUX_LATENT_CHANNELS, show_progress_bar=False)  # noqa: E731
    sd = _random_weights(build, "", seed)
    tae = build()
    tae.load_state_dict({k: v.float() for k, v in sd.items()})
    enc_last, dec_last = f"encoder.{len(tae.encoder) - 1}", f"decoder.{len(tae.decoder) - 1}"
    with torch.no_grad():
        # TAEHV.encode/decode work in the latent format's user space; the model space is the network's own.
        clip = clip_frames().movedim(-1, 1)[None]  # [1, T, 3, H, W]
        z = comfy.taesd.taehv.apply_model_with_memblocks(tae.encoder, clip[:, :8], False, False)
        sd[enc_last + ".weight"] = (sd[enc_last + ".weight"].float() / z.std()).half()
        latent = torch.randn((1, 3, FLUX_LATENT_CHANNELS, 8, 8), generator=torch.Generator().manual_seed(seed))
        out = comfy.taesd.taehv.apply_model_with_memblocks(tae.decoder, latent, False, False)
        gain = 0.25 / out.std(dim=(0, 1, 3, 4))
        sd[dec_last + ".weight"] = (sd[dec_last + ".weight"].float() * gain[:, None, None, None]).half()
        sd[dec_last + ".bias"] = (0.5 - out.mean(dim=(0, 1, 3, 4)) * gain).half()
    _save(sd, path, FLUX_FILES_VERSION)
    return Path(path)


def make_clip_l(path, seed: int = 11) -> Path:
    """A standalone CLIP-L text encoder (``text_model.*`` keys and the projection), as clip_l.safetensors."""
    comfy = _import_comfy()
    sd = _random_weights(lambda: comfy.sd1_clip.SDClipModel(dtype=torch.float16), "", seed, skip=("logit_scale",))
    sd = {k.removeprefix("transformer."): v for k, v in sd.items() if k.startswith("transformer.")}
    _save(sd, path, FLUX_FILES_VERSION)
    return Path(path)


def make_flux_vae(path, seed: int = 12) -> Path:
    """A TAEF1-format VAE in one file, with the Flux latent scale and shift ComfyUI gives taef1."""
    comfy = _import_comfy()
    sd = _random_weights(lambda: comfy.taesd.taesd.TAESD(latent_channels=FLUX_LATENT_CHANNELS), "", seed,
                         skip=("vae_scale", "vae_shift"))
    _calibrate_taesd(comfy, sd, seed, latent_channels=FLUX_LATENT_CHANNELS)
    sd["vae_scale"] = torch.tensor(TAEF1_SCALE, dtype=torch.float16)
    sd["vae_shift"] = torch.tensor(TAEF1_SHIFT, dtype=torch.float16)
    _save(sd, path, FLUX_FILES_VERSION)
    return Path(path)


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def verify_flux_unet(path) -> None:
    """UNETLoader's loader detects Flux (not Schnell or another family) with this config, and it runs."""
    comfy = _import_comfy()
    patcher = comfy.sd.load_diffusion_model(str(path))
    model = patcher.model
    check_detected(model, "Flux", None, FLUX_UNET_CONFIG)
    assert model.model_type == comfy.model_base.ModelType.FLUX
    _check_guided_velocity(model, (1, FLUX_LATENT_CHANNELS, 8, 8), pooled_width=768, guidance=5.0)


def _check_guided_velocity(model, latent_shape, pooled_width: int, guidance: float) -> None:
    """A guidance-distilled model runs on a text encoder's shapes (77 tokens of 4096, a pooled vector), and its
    weights are scaled so that the text, the pooled vector and the guidance embedding each move the output."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(latent_shape, generator=gen)
    context = torch.randn((1, 77, 4096), generator=gen)
    pooled = torch.randn((1, pooled_width), generator=gen)

    def velocity(context=context, pooled=pooled, guidance=guidance):
        with torch.no_grad():
            return model.apply_model(x, torch.tensor([0.8]), c_crossattn=context, y=pooled,
                                     guidance=torch.tensor([guidance]))

    out = velocity()
    assert out.shape == x.shape and out.isfinite().all(), out.shape
    assert _relative_change(velocity(context=torch.roll(context, 1, dims=1) * 0.5), out) > 0.01, "text has no effect"
    assert _relative_change(velocity(pooled=pooled.flip(1)), out) > 0.01, "the pooled vector has no effect"
    assert _relative_change(velocity(guidance=1.0), out) > 0.01, "guidance has no effect"


def verify_chroma_unet(path) -> None:
    """UNETLoader's loader detects Chroma with this config; it runs on the conditioning of CLIPLoader type sd3 with
    the test CLIP-L (77 tokens, 4096 channels), and the text and the timestep (Chroma's only way in for it: the
    approximator's modulation table) move the output."""
    comfy = _import_comfy()
    patcher = comfy.sd.load_diffusion_model(str(path))
    model = patcher.model
    check_detected(model, "Chroma", "Chroma", CHROMA_UNET_CONFIG)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, FLUX_LATENT_CHANNELS, 8, 8), generator=gen)
    context = torch.randn((1, 77, 4096), generator=gen)

    def velocity(context=context, sigma=0.8):
        with torch.no_grad():
            return model.apply_model(x, torch.tensor([sigma]), c_crossattn=context, guidance=torch.tensor([0.0]))

    out = velocity()
    assert out.shape == x.shape and out.isfinite().all(), out.shape
    assert _relative_change(velocity(context=torch.roll(context, 1, dims=1) * 0.5), out) > 0.01, "text has no effect"
    assert _relative_change(velocity(sigma=0.3), out) > 0.01, "the timestep has no effect"


def verify_hunyuan_video_unet(path) -> None:
    """UNETLoader's loader detects HunyuanVideo 1.0 (not an I2V variant) with this config; it runs on the conditioning
    of DualCLIPLoader type sd3 with the test CLIP-L, and the text, the pooled vector and the guidance move it."""
    comfy = _import_comfy()
    patcher = comfy.sd.load_diffusion_model(str(path))
    model = patcher.model
    check_detected(model, "HunyuanVideo", "HunyuanVideo", HUNYUAN_VIDEO_UNET_CONFIG)
    # 3 latent frames; sd3's pooled output is 2048 wide, CLIP-L's 768 first (the model reads those).
    _check_guided_velocity(model, (1, FLUX_LATENT_CHANNELS, 3, 8, 8), pooled_width=2048, guidance=6.0)


def verify_hunyuan_tae(path) -> None:
    """Load VAE's loader takes it as a TAEHV with HunyuanVideo's latent format; VAE Encode of a 9-frame clip gives 3
    latent frames, VAE Decode gives 9 frames back, neither flat."""
    comfy = _import_comfy()
    import comfy.utils
    import comfy.taesd.taehv
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))
    assert isinstance(vae.first_stage_model, comfy.taesd.taehv.TAEHV)
    assert vae.latent_channels == FLUX_LATENT_CHANNELS and vae.latent_dim == 3
    assert isinstance(vae.first_stage_model.latent_format, type) and \
        vae.first_stage_model.latent_format.__name__ == "HunyuanVideo"
    latent = vae.encode(clip_frames())
    assert latent.shape == (1, FLUX_LATENT_CHANNELS, 3, 8, 8) and latent.isfinite().all(), latent.shape
    model_space = comfy.latent_formats.HunyuanVideo().process_in(latent)
    assert 0.5 < model_space.std() < 2.0, model_space.std()
    decoded = vae.decode(latent)
    assert decoded.shape[-4:] == (9, 64, 64, 3) and decoded.isfinite().all(), decoded.shape
    assert 0.2 < decoded.mean() < 0.8 and decoded.std() > 0.05, "decoded frames are flat"


def verify_clip_l(path) -> None:
    """DualCLIPLoader type sd3 with this file in both slots: Flux-shaped conditioning that follows the prompt."""
    comfy = _import_comfy()
    clip = comfy.sd.load_clip([str(path), str(path)], clip_type=comfy.sd.CLIPType.SD3)

    def encode(text):
        return clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    cond, pooled = encode("a photo of a cat")
    assert cond.shape == (1, 77, 4096) and cond.isfinite().all(), cond.shape
    assert pooled.shape[0] == 1 and pooled.shape[1] >= 768 and pooled.isfinite().all(), pooled.shape
    assert cond[..., :768].abs().mean() > 0 and pooled[:, :768].abs().mean() > 0
    other, other_pooled = encode("a watercolor of a dog")
    assert not torch.allclose(cond, other) and not torch.allclose(pooled[:, :768], other_pooled[:, :768]), \
        "prompt does not reach the conditioning"


def verify_flux_vae(path) -> None:
    """Load VAE's loader takes it as a 16-channel TAESD with Flux's scale; encode and decode behave."""
    comfy = _import_comfy()
    import comfy.utils
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))
    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD)
    assert vae.latent_channels == FLUX_LATENT_CHANNELS
    latent = vae.encode(gradient_image())
    assert latent.shape == (1, FLUX_LATENT_CHANNELS, 8, 8) and latent.isfinite().all(), latent.shape
    # In the model's space (Flux's process_in) the test image has about unit spread.
    model_space = comfy.latent_formats.Flux().process_in(latent)
    assert 0.5 < model_space.std() < 2.0, model_space.std()
    decoded = vae.decode(latent)
    assert decoded.shape[-3:] == (64, 64, 3) and decoded.isfinite().all(), decoded.shape
    assert 0.2 < decoded.mean() < 0.8 and decoded.std() > 0.05, "decoded images are flat"


FLUX_FILES = {
    "flux": (make_flux_unet, verify_flux_unet),
    "clip-l": (make_clip_l, verify_clip_l),
    "flux-ae": (make_flux_vae, verify_flux_vae),
    "chroma": (make_chroma_unet, verify_chroma_unet),
    "hunyuan-video": (make_hunyuan_video_unet, verify_hunyuan_video_unet),
    "hunyuan-tae": (make_hunyuan_tae, verify_hunyuan_tae),
}


def cached_flux_file(name: str) -> Path:
    """Path of the cached Flux test file NAME (see FLUX_FILES), generated and verified on first use."""
    return cached_model(name, FLUX_FILES, __file__, FLUX_FILES_VERSION)


if __name__ == "__main__":
    main(sys.argv[1:], FLUX_FILES, "tests/flux_files.py")
