"""Random-weight Wan 2.1 and SD3.5 files that ComfyUI's own loaders detect, and a shrunk host Qwen-Image, for the
tests of the velocity-edit workflows (workflows/pnp-wan-video-edit.json, pnp-sd35-edit.json, pnp-flowedit-flux.json
and pnp-qwen-image-edit.json; the Flux one runs on tests/flux_files.py's files).

=====================================================  ===============================================
what the user's graph loads                            what the tests load instead
=====================================================  ===============================================
Load Diffusion Model (UNETLoader):                     ``pnp-test-wan``: Wan 2.1 T2V's layout (the real 30
``wan2.1_t2v_1.3B_fp16.safetensors``                   blocks, 16 latent channels, 4096-wide text input)
                                                       at width 128 (1 head of 128) with a 512-wide FFN
                                                       instead of 1536 (12 heads) and 8960
Load CLIP, type ``wan``:                               Load CLIP, type ``sd3``, with tests/flux_files.py's
``umt5_xxl_fp8_e4m3fn_scaled.safetensors``             ``pnp-test-clip-l`` (CLIP-L zero-padded to 4096
                                                       channels, 77 tokens)
Load VAE: ``wan_2.1_vae.safetensors``                  tests/flux_files.py's ``pnp-test-hunyuan-tae`` (a
                                                       TAEHV: 16 channels, 8x in space, 4x in time, as the
                                                       Wan 2.1 VAE)
Load Checkpoint (CheckpointLoaderSimple):              ``pnp-test-sd35``: SD3.5 medium's layout (qk
``sd3.5_medium_incl_clips_t5xxlfp8scaled``             rms-norm, dual self-attention in the first half of
                                                       the blocks, pos_embed of 384 x 384 patches,
                                                       4096-wide context, 2048-wide pooled input) at depth 4
                                                       (4 blocks of width 256) instead of 24 (width 1536),
                                                       with the test CLIP-L as its only text encoder and the
                                                       test Flux VAE (TAEF1 format) with SD3's latent scale
Qwen-Image (UNETLoader ``qwen_image_fp8_e4m3fn``,      no file: ``qwen_image_patcher`` builds the host's
Load CLIP type ``qwen_image``, ``qwen_image_vae``)     model_base.QwenImage (the real 60 blocks) in process
                                                       at width 128 with a 768-wide text input; the test
                                                       CLIP-L (Load CLIP type ``stable_diffusion``) and
                                                       the test TAEHV stand in for the others
=====================================================  ===============================================

Why these:

- Wan 2.1: the host's detection (``model_detection.detect_unet_config``, the ``head.modulation`` branch) reads the
  width, the FFN width, the block count and the input channels from the keys and sets 1 head per 128 channels, so
  the width shrinks to 128 and the block count stays the real 30. The text input is fixed at 4096 (umT5-XXL's
  width; the host's WanModel default): Load CLIP type ``sd3`` with CLIP-L alone gives 4096-wide conditioning, as
  for the Chroma workflow (type ``wan`` would build the 5.7 B umT5-XXL). The Wan VAE (a causal 3D autoencoder of
  127 M parameters) is replaced by the HunyuanVideo test's TAEHV: the shapes are the Wan 2.1 VAE's, and the
  model's own latent format (Wan 2.1's per-channel mean and std) brings its latents to about unit spread.
- SD3.5: the host's MMDiT ties the width to the depth (64 per block, one head of 64 per block) and builds as many
  blocks as the depth, so a file the loader detects has depth x 64 channels and depth blocks: 4 of SD3.5
  medium's 24 (at its 1536 channels they are 2.5 B parameters). Checkpoints that include their text encoders
  hold CLIP-L, CLIP-G and T5-XXL under ``text_encoders.``; this one holds CLIP-L alone (the test CLIP-L's
  weights), which the host's SD3 text encoder zero-pads to 4096 channels (its pooled output to 2048: CLIP-L's and
  1280 zeros for CLIP-G), the shapes the model reads. The VAE is the test Flux VAE's weights (16 channels, as
  SD3's) with SD3's latent scale and shift (1.5305, 0.0609: what the host gives ``taesd3``).
- Qwen-Image: the host's detection reads only the input channels and the block count; the width (24 heads of
  128 = 3072) and the text input (3584, Qwen2.5-VL 7B's hidden size) are fixed. No test text encoder gives
  3584-wide conditioning (Load CLIP type ``qwen_image`` builds the fixed 7 B Qwen2.5-VL), and one block at 3072
  wide is 0.34 B parameters. So the Qwen-Image workflow runs in process (tests/graph_in_process.py) on the host's
  own QwenImage class with a shrunk config, every node of the shipped graph but the loaders as shipped.

Norm weights are 1 (``_unit_norms``: checkpoint_factory's init gives 1 only to LayerNorm/GroupNorm weights and
Flux's ``scale``; Wan's, SD3.5's and Qwen-Image's RMSNorms name theirs ``weight``), other weights about
1/sqrt(fan_in), so the text and the timestep (and SD3.5's pooled vector) each move the output (each verifier checks
it).

The files are generated under the ignored ``.cache/`` (never committed) by the set-up (tests/prepare_models.py)
or the first test that needs them: ``python tests/velocity_files.py NAME PATH`` writes and verifies one. Measured on
one CPU core: ``pnp-test-wan`` 17 MiB, written in 3 s, one evaluation of the test clip's 3 latent frames of 8x8 in
0.05 s; ``pnp-test-sd35`` 334 MiB (235 of them the CLIP-L), written in 6 s, one evaluation of an 8x8 latent in 0.02 s;
the in-process Qwen-Image (36 M parameters) about 0.2 s per evaluation of a one-frame 8x8 latent.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from checkpoint_factory import (_import_comfy, _random_weights, _save, cached_model, check_detected, gradient_image,
                                main)
from flux_files import FLUX_LATENT_CHANNELS, _relative_change, cached_flux_file, clip_frames

# Bump when the generated weights or layout change: cached files are rebuilt.
VELOCITY_FILES_VERSION = 1

# What detect_unet_config reads back from the Wan file (its Wan 2.1 branch). Wan 2.1 T2V 1.3B: dim 1536, 12 heads,
# ffn 8960, 30 blocks.
WAN_UNET_CONFIG = {
    "image_model": "wan2.1", "model_type": "t2v", "dim": 128, "num_heads": 1, "ffn_dim": 512, "num_layers": 30,
    "in_dim": 16, "out_dim": 16, "patch_size": (1, 2, 2), "freq_dim": 256, "qk_norm": True, "cross_attn_norm": True,
}
WAN_TEXT_WIDTH = 4096  # fixed by the host (WanModel's text_dim)

# What detect_unet_config reads back from the SD3.5 file's MMDiT (prefix model.diffusion_model.). SD3.5 medium:
# depth 24 (1536 wide, 24 heads of 64), x_block_self_attn_layers 0-12, qk_norm rms, pos_embed 384 x 384.
SD3_DEPTH = 4
SD3_POS_EMBED_SIDE = 384
SD3_UNET_CONFIG = {
    "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": SD3_DEPTH, "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096,
                                                                       "out_features": 64 * SD3_DEPTH}},
    "num_patches": SD3_POS_EMBED_SIDE ** 2, "pos_embed_max_size": SD3_POS_EMBED_SIDE, "qk_norm": "rms",
    "x_block_self_attn_layers": list(range(SD3_DEPTH // 2)), "pos_embed_scaling_factor": None,
}
# What the host gives taesd3 (nodes.VAELoader.load_taesd) and SD3's latent format.
SD3_VAE_SCALE, SD3_VAE_SHIFT = 1.5305, 0.0609

# The host's Qwen-Image (model_base.QwenImage) shrunk: 1 head of 128 (the rotary axes 16 + 56 + 56 need 128 per
# head) instead of 24, the text input 768 wide (the test CLIP-L through Load CLIP type stable_diffusion) instead
# of 3584; the real 60 blocks.
QWEN_UNET_CONFIG = {
    "image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": 60,
    "num_attention_heads": 1, "attention_head_dim": 128, "joint_attention_dim": 768,
}


def _unit_norms(build, sd: dict, prefix: str = "") -> dict:
    """Set the 1-D weights of every norm module (RMSNorm included) to 1, in place."""
    with torch.device("meta"):
        model = build()
    for name, module in model.named_modules():
        key = f"{prefix}{name}.weight" if name else f"{prefix}weight"
        if "Norm" in type(module).__name__ and key in sd and sd[key].ndim == 1:
            sd[key] = torch.ones_like(sd[key])
    return sd


def _wan_network(comfy):
    import comfy.ldm.wan.model
    config = {k: v for k, v in WAN_UNET_CONFIG.items() if k != "image_model"}
    return lambda: comfy.ldm.wan.model.WanModel(**config, text_dim=WAN_TEXT_WIDTH,
                                                operations=comfy.ops.disable_weight_init)


def make_wan_unet(path, seed: int = 20) -> Path:
    """A standalone Wan 2.1 T2V diffusion-model file with bare keys, as wan2.1_t2v_1.3B_fp16.safetensors."""
    comfy = _import_comfy()
    build = _wan_network(comfy)
    sd = _unit_norms(build, _random_weights(build, "", seed))
    _save(sd, path, VELOCITY_FILES_VERSION)
    return Path(path)


def _sd3_network(comfy):
    import comfy.ldm.modules.diffusionmodules.mmdit as mmdit
    config = {k: v for k, v in SD3_UNET_CONFIG.items()}
    return lambda: mmdit.MMDiT(input_size=None, **config, operations=comfy.ops.disable_weight_init)


def make_sd35_checkpoint(path, seed: int = 21) -> Path:
    """A one-file SD3.5 checkpoint (model.diffusion_model.*, text_encoders.clip_l.*, first_stage_model.*), as
    sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors is laid out, with CLIP-L as its only text encoder."""
    comfy = _import_comfy()
    import comfy.utils
    from comfy.ldm.modules.diffusionmodules.mmdit import get_2d_sincos_pos_embed
    build = _sd3_network(comfy)
    prefix = "model.diffusion_model."
    sd = _unit_norms(build, _random_weights(build, prefix, seed), prefix)
    # The real pos_embed is the fixed 2-D sin-cos table (the host crops it to the image), not a learnt one.
    table = get_2d_sincos_pos_embed(64 * SD3_DEPTH, SD3_POS_EMBED_SIDE)
    sd[prefix + "pos_embed"] = torch.from_numpy(table).to(torch.float16)[None]
    clip_l = comfy.utils.load_torch_file(str(cached_flux_file("clip-l")))
    sd.update({f"text_encoders.clip_l.transformer.{k}": v for k, v in clip_l.items()})
    vae = comfy.utils.load_torch_file(str(cached_flux_file("flux-ae")))
    sd.update({f"first_stage_model.{k}": v for k, v in vae.items() if k not in ("vae_scale", "vae_shift")})
    sd["first_stage_model.vae_scale"] = torch.tensor(SD3_VAE_SCALE, dtype=torch.float16)
    sd["first_stage_model.vae_shift"] = torch.tensor(SD3_VAE_SHIFT, dtype=torch.float16)
    _save(sd, path, VELOCITY_FILES_VERSION)
    return Path(path)


def qwen_image_patcher(seed: int = 22):
    """The host's Qwen-Image (supported_models.QwenImage -> model_base.QwenImage) with QWEN_UNET_CONFIG and random
    weights, as a ModelPatcher in fp32 on the CPU: what Load Diffusion Model would give for a Qwen-Image file of
    this config, if the host read these widths from a file."""
    comfy = _import_comfy()
    import comfy.model_patcher
    import comfy.ldm.qwen_image.model
    config = comfy.supported_models.QwenImage(dict(QWEN_UNET_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    model = config.get_model({})
    unet = {k: v for k, v in QWEN_UNET_CONFIG.items() if k != "image_model"}
    build = lambda: comfy.ldm.qwen_image.model.QwenImageTransformer2DModel(  # noqa: E731
        **unet, operations=comfy.ops.disable_weight_init)
    sd = _unit_norms(build, _random_weights(build, "", seed))
    model.diffusion_model.load_state_dict({k: v.float() for k, v in sd.items()})
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def _timed(fn, repeats: int = 3):
    """fn's output and the median of `repeats` timings, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, sorted(times)[len(times) // 2]


def _check_velocity(apply, x, context, extra=None, timestep=0.8, other_timestep=0.3):
    """The model runs on a text encoder's shapes; the text and the timestep each move its output; one evaluation's
    time in seconds."""
    extra = extra or {}

    def velocity(context=context, t=timestep):
        with torch.no_grad():
            return apply(x, torch.tensor([t]), c_crossattn=context, **extra)
    velocity()  # the first call pays one-time costs
    out, seconds = _timed(velocity)
    assert out.shape == x.shape and out.isfinite().all(), out.shape
    assert _relative_change(velocity(context=torch.roll(context, 1, dims=1) * 0.5), out) > 0.01, "text has no effect"
    assert _relative_change(velocity(t=other_timestep), out) > 0.01, "the timestep has no effect"
    return seconds


def verify_wan_unet(path) -> None:
    """UNETLoader's loader detects Wan 2.1 T2V with this config; it runs on 3 latent frames and Load CLIP type sd3's
    conditioning (77 tokens of 4096), and the text and the timestep move it."""
    comfy = _import_comfy()
    patcher = comfy.sd.load_diffusion_model(str(path))
    model = patcher.model
    check_detected(model, "WAN21_T2V", "WAN21", WAN_UNET_CONFIG)
    # The test TAEHV (the Wan VAE's stand-in) gives the test clip about unit spread in Wan 2.1's latent space.
    import comfy.utils
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(cached_flux_file("hunyuan-tae"))))
    x = model.process_latent_in(vae.encode(clip_frames()))
    assert x.shape == (1, FLUX_LATENT_CHANNELS, 3, 8, 8) and 0.5 < x.std() < 2.0, (x.shape, x.std())
    context = torch.randn((1, 77, WAN_TEXT_WIDTH), generator=torch.Generator().manual_seed(0))
    print(f"wan: one evaluation of 3 latent frames of 8x8 in {_check_velocity(model.apply_model, x, context):.3f} s")


def verify_sd35_checkpoint(path) -> None:
    """Load Checkpoint's loader detects SD3 (SD3.5 medium's layout) with this config; its text encoder is the SD3
    one with CLIP-L alone (77 x 4096 context, 2048 pooled) and follows the prompt; its VAE is a 16-channel TAESD
    with SD3's scale (the test image has about unit spread in the model's space); the model runs on them and the
    text, the pooled vector and the timestep move it."""
    comfy = _import_comfy()
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path))
    base = model.model
    check_detected(base, "SD3", "SD3", SD3_UNET_CONFIG)
    assert len(base.diffusion_model.joint_blocks) == SD3_DEPTH

    def encode(text):
        return clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    cond, pooled = encode("a photo of a cat")
    assert cond.shape == (1, 77, 4096) and pooled.shape == (1, 2048), (cond.shape, pooled.shape)
    other, _ = encode("a watercolor of a dog")
    assert not torch.allclose(cond, other), "prompt does not reach the conditioning"

    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD) and vae.latent_channels == FLUX_LATENT_CHANNELS
    latent = vae.encode(gradient_image())
    assert latent.shape == (1, FLUX_LATENT_CHANNELS, 8, 8) and latent.isfinite().all(), latent.shape
    model_space = base.process_latent_in(latent)
    assert 0.5 < model_space.std() < 2.0, model_space.std()
    decoded = vae.decode(latent)
    assert decoded.shape[-3:] == (64, 64, 3) and 0.2 < decoded.mean() < 0.8 and decoded.std() > 0.05

    seconds = _check_velocity(base.apply_model, model_space, cond, {"y": pooled})
    with torch.no_grad():
        out = base.apply_model(model_space, torch.tensor([0.8]), c_crossattn=cond, y=pooled)
        flipped = base.apply_model(model_space, torch.tensor([0.8]), c_crossattn=cond, y=pooled.flip(1))
    assert _relative_change(flipped, out) > 0.01, "the pooled vector has no effect"
    print(f"sd35: one evaluation of an 8x8 latent in {seconds:.3f} s")


def verify_qwen_image(seed: int = 22) -> float:
    """The shrunk host Qwen-Image runs on a one-frame latent of the test TAEHV's shape ([1, 16, 1, 8, 8]) and the
    test CLIP-L's conditioning (77 x 768), and the text and the timestep move it; returns one evaluation's seconds."""
    patcher = qwen_image_patcher(seed)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((1, FLUX_LATENT_CHANNELS, 1, 8, 8), generator=gen)
    context = torch.randn((1, 77, QWEN_UNET_CONFIG["joint_attention_dim"]), generator=gen)
    return _check_velocity(patcher.model.apply_model, x, context)


VELOCITY_FILES = {
    "wan": (make_wan_unet, verify_wan_unet),
    "sd35": (make_sd35_checkpoint, verify_sd35_checkpoint),
}


def cached_velocity_file(name: str) -> Path:
    """Path of the cached test file NAME (see VELOCITY_FILES), generated and verified on first use."""
    return cached_model(name, VELOCITY_FILES, __file__, VELOCITY_FILES_VERSION)


if __name__ == "__main__":
    main(sys.argv[1:], VELOCITY_FILES, "tests/velocity_files.py")
