"""Random-weight checkpoints that ComfyUI detects as Stable Diffusion 1.5.

The U-Net keeps SD1.5's block layout (4 levels, 2 res blocks per level, one
cross-attention transformer at levels 0-2, none at level 3) and the two
widths detection keys on (model_channels 320, context_dim 768), but every
level stays at 320 channels.  The text encoder is a full-size CLIP-L (the
SD1.5 model config fixes its shape) and the VAE is a TAESD, so the file is
about 0.5 GB of fp16 instead of 2 GB.

Run as ``python tests/checkpoint_factory.py NAME PATH`` to write and verify
one model; tests use ``cached_checkpoint(NAME)``.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import torch

from host import comfy_path

# Bump when the generated weights or layout change: cached files are rebuilt.
FACTORY_VERSION = 1

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / ".cache" / "test-models"

# What comfy.model_detection.detect_unet_config reads back from the keys,
# plus SD15.unet_extra_config (8 heads).
SD15_UNET_CONFIG = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 1, 1, 1],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_middle": 1,
    # Consumed with pop(): the last entry is output block 0.
    "transformer_depth_output": [1] * 9 + [0] * 3,
    "context_dim": 768,
    "use_linear_in_transformer": False,
    "use_spatial_transformer": True,
    "legacy": False,
    "adm_in_channels": None,
    "use_temporal_resblock": False,
    "use_temporal_attention": False,
    "use_checkpoint": False,
    "num_heads": 8,
    "num_head_channels": -1,
}

# TAESD latents are SD latents times the SD1 scale factor (as VAELoader sets for taesd).
TAESD_SD1_SCALE = 0.18215


def _import_comfy():
    host = str(comfy_path())
    if host not in sys.path:
        sys.path.insert(0, host)
    if "comfy.model_management" not in sys.modules and not torch.cuda.is_available():
        # model_management probes CUDA at import time unless told to use the CPU.
        from comfy.cli_args import args
        args.cpu = True
    import comfy.sd
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd
    import comfy.cldm.cldm
    import comfy.controlnet
    import comfy.supported_models
    import comfy.ldm.modules.diffusionmodules.openaimodel
    return comfy


def _init_tensor(key: str, module: torch.nn.Module, shape: torch.Size, seed: int) -> torch.Tensor:
    """Scaled like a fresh init: norms 1/0, biases 0, weights N(0, 1/fan_in), embeddings N(0, 1)."""
    name = key.rsplit(".", 1)[-1]
    if len(shape) == 1 or name == "bias":
        # "scale": the RMSNorm gain of transformer families (Flux's query/key norms).
        norm_gain = name == "scale" or (name == "weight" and isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)))
        return torch.full(shape, 1.0 if norm_gain else 0.0, dtype=torch.float16)
    # One generator per key: deterministic, and independent of the other keys.
    gen = torch.Generator().manual_seed(seed ^ zlib.crc32(key.encode()))
    std = 1.0 if isinstance(module, torch.nn.Embedding) else shape[1:].numel() ** -0.5
    return (torch.randn(shape, generator=gen) * std).to(torch.float16)


def _random_weights(build, prefix: str, seed: int, skip=()) -> dict[str, torch.Tensor]:
    """Build a ComfyUI module on the meta device and return random weights for its keys."""
    with torch.device("meta"):
        model = build()
    modules = dict(model.named_modules())
    out = {}
    for key, tensor in model.state_dict().items():
        if any(s in key for s in skip):
            continue
        owner = modules[key.rsplit(".", 1)[0]] if "." in key else model
        out[prefix + key] = _init_tensor(prefix + key, owner, tensor.shape, seed)
    return out


def gradient_image(size: int = 64) -> torch.Tensor:
    """A deterministic RGB test image in ComfyUI's IMAGE layout [1, H, W, 3], values in [0, 1]."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([xs, ys, (xs + ys) / 2], dim=-1)[None]


def _calibrate_taesd(comfy, weights: dict[str, torch.Tensor], seed: int, latent_channels: int = 4) -> None:
    """Rescale the last encoder and decoder convs in place.

    Through ~30 random ReLU convs the output scale drifts by an order of
    magnitude from seed to seed, and near-zero decoder output would clamp
    every image to black.  After this, encoding the test image gives latents
    of std 1 (TAESD space, like scaled SD latents) and decoding N(0, 1)
    latents gives pixels of mean 0.5 and std 0.25 per channel.
    """
    taesd = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    taesd.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
    enc_last = f"taesd_encoder.{len(taesd.taesd_encoder) - 1}"
    dec_last = f"taesd_decoder.{len(taesd.taesd_decoder) - 1}"
    with torch.no_grad():
        z = taesd.taesd_encoder(gradient_image().movedim(-1, 1))
        weights[enc_last + ".weight"] = (weights[enc_last + ".weight"].float() / z.std()).half()
        latent = torch.randn((4, latent_channels, 8, 8), generator=torch.Generator().manual_seed(seed))
        out = taesd.taesd_decoder(latent)
        gain = 0.25 / out.std(dim=(0, 2, 3))
        weights[dec_last + ".weight"] = (weights[dec_last + ".weight"].float() * gain[:, None, None, None]).half()
        weights[dec_last + ".bias"] = (0.5 - out.mean(dim=(0, 2, 3)) * gain).half()


def _save(weights: dict[str, torch.Tensor], path, version: int = FACTORY_VERSION) -> None:
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path), metadata={"pnp_test_factory_version": str(version)})


def make_sd15_checkpoint(path, seed: int = 0) -> Path:
    comfy = _import_comfy()
    ops = comfy.ops.disable_weight_init
    unet_module = comfy.ldm.modules.diffusionmodules.openaimodel
    sd = _random_weights(lambda: unet_module.UNetModel(**SD15_UNET_CONFIG, operations=ops),
                         "model.diffusion_model.", seed)
    # SD1.5 checkpoints carry neither the CLIP projection nor logit_scale.
    sd.update(_random_weights(lambda: comfy.sd1_clip.SDClipModel(dtype=torch.float16),
                              "cond_stage_model.", seed, skip=("text_projection", "logit_scale")))
    taesd = _random_weights(lambda: comfy.taesd.taesd.TAESD(), "", seed, skip=("vae_scale", "vae_shift"))
    _calibrate_taesd(comfy, taesd, seed)
    sd.update({"first_stage_model." + k: v for k, v in taesd.items()})
    sd["first_stage_model.vae_scale"] = torch.tensor(TAESD_SD1_SCALE, dtype=torch.float16)
    sd["first_stage_model.vae_shift"] = torch.tensor(0.0, dtype=torch.float16)
    _save(sd, path)
    return Path(path)


def make_sd15_controlnet(path, seed: int = 1) -> Path:
    """A ControlNet (original .pth layout, control_model. prefix) matching the SD1.5 U-Net above."""
    comfy = _import_comfy()
    config = {k: v for k, v in SD15_UNET_CONFIG.items() if k != "out_channels"}
    sd = _random_weights(lambda: comfy.cldm.cldm.ControlNet(**config, hint_channels=3,
                                                             operations=comfy.ops.disable_weight_init),
                         "control_model.", seed)
    _save(sd, path)
    return Path(path)


def verify_sd15_checkpoint(path) -> None:
    """Load through ComfyUI's own loader and run each part once: raises if anything is off."""
    comfy = _import_comfy()
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(path))
    config = model.model.model_config
    assert type(config) is comfy.supported_models.SD15, f"detected as {type(config).__name__}"
    for k in ("num_res_blocks", "channel_mult", "transformer_depth", "transformer_depth_output",
              "transformer_depth_middle", "context_dim", "model_channels"):
        assert config.unet_config[k] == SD15_UNET_CONFIG[k], (k, config.unet_config[k])
    unet = model.model.diffusion_model
    assert len(unet.input_blocks) == 12 and len(unet.output_blocks) == 12
    assert type(unet.output_blocks[4][0]).__name__ == "ResBlock"
    for i in range(3, 12):
        assert hasattr(unet.output_blocks[i][1].transformer_blocks[0], "attn1"), i

    assert isinstance(vae.first_stage_model, comfy.taesd.taesd.TAESD)
    latent = vae.encode(gradient_image())
    assert latent.shape == (1, 4, 8, 8) and latent.isfinite().all(), latent.shape
    decoded = vae.decode(latent)
    assert decoded.shape[-3:] == (64, 64, 3) and decoded.isfinite().all(), decoded.shape
    assert 0.2 < decoded.mean() < 0.8 and decoded.std() > 0.05, "decoded images are flat"

    def encode(text):
        return clip.encode_from_tokens(clip.tokenize(text))
    cond = encode("a photo of a cat")
    assert cond.shape == (1, 77, 768) and cond.isfinite().all(), cond.shape
    assert not torch.allclose(cond, encode("a watercolor of a dog")), "prompt does not reach the conditioning"

    eps = model.model.apply_model(latent, torch.tensor([1.0]), c_crossattn=cond)
    assert eps.shape == latent.shape and eps.isfinite().all()


def verify_sd15_controlnet(path) -> None:
    comfy = _import_comfy()
    control = comfy.controlnet.load_controlnet(str(path))
    assert control is not None, "not detected as a ControlNet"
    loaded = set(control.control_model.state_dict())
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        stored = {k.removeprefix("control_model.") for k in f.keys()}
    assert loaded == stored, sorted(loaded ^ stored)[:10]


MODELS = {
    "sd15": (make_sd15_checkpoint, verify_sd15_checkpoint),
    "sd15-controlnet": (make_sd15_controlnet, verify_sd15_controlnet),
}


def cached_checkpoint(name: str = "sd15") -> Path:
    """Path of the cached model NAME (see MODELS), generated and verified on first use."""
    return cached_model(name, MODELS, __file__, FACTORY_VERSION)


def check_detected(model, config_class: str, model_class: str | None, expected: dict) -> None:
    """The host's loader detected `model` (a comfy.model_base model) as the config class `config_class` (and the
    model class `model_class`, if given), with every entry of `expected` in the detected unet_config."""
    import comfy.model_base
    import comfy.supported_models
    config = model.model_config
    assert type(config) is getattr(comfy.supported_models, config_class), f"detected as {type(config).__name__}"
    if model_class is not None:
        assert type(model) is getattr(comfy.model_base, model_class), type(model).__name__
    detected = config.unet_config
    for key, value in expected.items():
        assert detected[key] == value, (key, detected[key], value)


def cached_model(name: str, models: dict, script, version: int) -> Path:
    """Path of the cached file NAME of `models`, made and verified on first use by ``python SCRIPT NAME PATH``."""
    if name not in models:
        raise KeyError(f"unknown test model {name!r}; known: {sorted(models)}")
    path = CACHE_DIR / f"pnp-test-{name}.v{version}.safetensors"
    if path.is_file():
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    # One maker per file: another process (a test worker, the set-up) waits for it instead of making it again.
    with open(CACHE_DIR / f".pnp-test-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            _make(name, path, script)
    return path


def _make(name: str, path: Path, script) -> None:
    for stale in CACHE_DIR.glob(f"pnp-test-{name}.v*.safetensors"):
        if ".tmp-" not in stale.name:
            stale.unlink()
    # The loader picks the format from the extension, so the temporary keeps it.
    tmp = path.with_name(f"{path.name.removesuffix('.safetensors')}.tmp-{os.getpid()}.safetensors")
    # A child process keeps ComfyUI's global state (device, loaded models) out of the caller.
    # Single-threaded: as fast when idle, and several times faster when other test runs share the cores.
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    proc = subprocess.run([sys.executable, str(script), name, str(tmp)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"generating test model {name!r} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    os.replace(tmp, path)  # atomic: concurrent runs never see a partial file


def main(argv: list[str], models: dict = MODELS, script: str = "tests/checkpoint_factory.py") -> None:
    if len(argv) != 2 or argv[0] not in models:
        sys.exit(f"usage: python {script} {{{','.join(models)}}} PATH")
    make, verify = models[argv[0]]
    start = time.perf_counter()
    make(argv[1])
    made = time.perf_counter()
    verify(argv[1])
    print(f"{argv[0]}: generated in {made - start:.1f} s, verified in {time.perf_counter() - made:.1f} s, "
          f"{os.path.getsize(argv[1]) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main(sys.argv[1:])
