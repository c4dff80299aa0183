"""In-process ComfyUI models for tests: real model classes, shrunk, with random weights.

The block structure of each architecture is kept (so the paper's layer numbers exist);
channels, context width and transformer depth shrink. Weights are scaled like a real init
(unit norms, fan-in scaled convs and linears, no zero-initialised output convs) so that the
internal features PnP injects change the output.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch._dynamo
from safetensors import safe_open
from safetensors.torch import save_file

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.samplers
import comfy.supported_models as sm
from comfyui_pnp.nodes.bank_files import PnPSaveFeatureBank
from comfyui_pnp.pnp_injection import bank_integrity, model_calls
from comfyui_pnp.pnp_injection.unet import layers as unet_layers

CONTEXT = 64

ARCHS = {
    # family: (config class, model class, unet overrides)
    "sd15": (sm.SD15, comfy.model_base.BaseModel, dict(
        num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
        transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
        use_linear_in_transformer=False, num_heads=4, num_head_channels=-1)),
    "sd21": (sm.SD20, comfy.model_base.BaseModel, dict(
        num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
        transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1,
        use_linear_in_transformer=True, num_heads=-1, num_head_channels=16)),
    "sdxl": (sm.SDXL, comfy.model_base.SDXL, dict(
        num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 2], transformer_depth=[0, 0, 1, 1, 2, 2],
        transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2], transformer_depth_middle=1,
        use_linear_in_transformer=True, num_heads=-1, num_head_channels=16, adm_in_channels=CONTEXT + 1536)),
}


def unet_config(arch: str, channels: int = 32) -> dict:
    base = dict(use_checkpoint=False, image_size=32, out_channels=4, in_channels=4, use_spatial_transformer=True,
                legacy=False, adm_in_channels=None, model_channels=channels, context_dim=CONTEXT,
                use_temporal_attention=False, use_temporal_resblock=False, dtype=torch.float32)
    base.update(ARCHS[arch][2])
    if base["adm_in_channels"]:
        base["num_classes"] = "sequential"
    return base


def init_weights(module: torch.nn.Module, seed: int) -> None:
    """Real-init-like random weights: norms 1/0, fan-in scaled weights, small biases."""
    gen = torch.Generator().manual_seed(seed)
    norms = {id(p) for m in module.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))
             for p in m.parameters(recurse=False)}
    with torch.no_grad():
        for name, p in module.named_parameters():
            if id(p) in norms:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))


# The U-Net's transformers that PnP never reads or overwrites: those of the encoder (input blocks) and of the
# middle block (-1: none there). Without them (``make_model(..., **DECODER_ATTENTION_ONLY)``) a U-Net keeps
# every block and every layer PnP uses, at a fraction of the modules: for tests whose cost grows with the
# module count (torch.compile traces every module) and whose property does not depend on the encoder.
DECODER_ATTENTION_ONLY = dict(transformer_depth=[0] * 8, transformer_depth_middle=-1)


def make_model(arch: str = "sd15", v_prediction: bool = False, seed: int = 0, channels: int = 32,
               output_gain: float = 1.0, dtype: torch.dtype = torch.float32, **unet_overrides):
    """A ModelPatcher around a real comfy.model_base model of `arch` with random weights.

    `output_gain` scales the final conv: below 1 the noise prediction varies slowly along the
    ODE path, as a trained denoiser's does, so that inversion round trips are well posed.
    `dtype` is the dtype the U-Net stores its weights in and computes in. `unet_overrides`
    replace entries of the architecture's U-Net config (e.g. ``DECODER_ATTENTION_ONLY``).
    """
    config_cls, model_cls, _ = ARCHS[arch]
    config = config_cls({**unet_config(arch, channels), "dtype": dtype, **unet_overrides})
    config.unet_config.update({**ARCHS[arch][2], **unet_overrides})  # undo the class's own extra config (heads)
    config.set_inference_dtype(dtype, None)
    model_type = comfy.model_base.ModelType.V_PREDICTION if v_prediction else comfy.model_base.ModelType.EPS
    model = model_cls(config, model_type=model_type, device="cpu")
    init_weights(model.diffusion_model, seed)
    with torch.no_grad():
        for p in model.diffusion_model.out[-1].parameters():
            p.mul_(output_gain)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


def conditioning(arch: str = "sd15", seed: int = 1, tokens: int = 8, batch: int = 1):
    """ComfyUI CONDITIONING: [[cross-attention context, {extras}]]."""
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, tokens, CONTEXT, generator=gen)
    extras = {}
    if arch == "sdxl":
        extras = {"pooled_output": torch.randn(batch, CONTEXT, generator=gen), "width": 128, "height": 128}
    return [[context, extras]]


def latent(seed: int = 2, size: int = 16, batch: int = 1) -> torch.Tensor:
    """A source latent in user space (what VAE Encode gives), image-like in scale."""
    gen = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.randn(batch, 4, size // 4, size // 4, generator=gen),
                                             size=(size, size), mode="bilinear", align_corners=False)
    return 4.0 * smooth + 0.5 * torch.randn(batch, 4, size, size, generator=gen)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative difference ||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm())


def make_flux():
    """A tiny real Flux model: a transformer with no ResBlocks, which PnP must refuse."""
    config = sm.Flux({"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 32,
                      "context_in_dim": 32, "hidden_size": 64, "mlp_ratio": 4.0, "num_heads": 2, "depth": 1,
                      "depth_single_blocks": 1, "axes_dim": [8, 12, 12], "theta": 10000, "qkv_bias": True,
                      "guidance_embed": False, "patch_size": 2})
    config.set_inference_dtype(torch.float32, None)
    model = comfy.model_base.Flux(config, device="cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


class CountCalls:
    """Counts U-Net evaluations (a forward pre-hook), to prove an error came before any."""

    def __init__(self, model_patcher):
        self.calls = 0
        self.handle = model_patcher.model.diffusion_model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# --- shared by the U-Net test modules (moved here from test_engine, test_bank_files, test_compile) ---

def plain_sample(model, start, sigmas, positive, negative, cfg, sampler="ddim"):
    """The same sampler without any PnP patch, from the same start latent."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider.sample(torch.zeros_like(start), start, comfy.samplers.sampler_object(sampler), sigmas,
                         disable_pbar=True, seed=0)


class Probe:
    """An inner DIFFUSION_MODEL wrapper: its hooks run after ours, so they see what the
    injected layers compute with: the ResBlock's residual output, and the inputs of attn1's
    query, key and value projections."""

    def __init__(self, bank):
        self.bank, self.calls = bank, []

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        seen = {}

        def keep(key, of_input):
            return lambda mod, args, out: seen.__setitem__(key, (args[0] if of_input else out).detach().clone())

        unet = executor.class_obj
        hooks = {unet_layers.residual_module(unet, b): keep(("res", b), False) for b in self.bank.layers.resblocks}
        for k in self.bank.layers.attention:
            attn = unet_layers.attention_module(unet, k)
            hooks.update({attn.to_q: keep(("q", k), True), attn.to_k: keep(("k", k), True),
                          attn.to_v: keep(("v", k), True)})
        with model_calls.forward_hooks(hooks):
            out = executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        sigma = float(transformer_options["sigmas"][0])
        self.calls.append((sigma, len(transformer_options["cond_or_uncond"]), seen))
        return out


def injected_steps(bank, probe, source_rows):
    """Per kind, the steps at which every row of the call held the bank's tensors: the ResBlock
    output, and the source's attention input fed to the query ("q") and key ("k") projections.
    "v" collects steps where the value projection got the source too (it never should)."""
    found = {"res": set(), "q": set(), "k": set(), "v": set()}
    step_of = {round(float(s), 5): i for i, s in enumerate(bank.sigmas[:-1])}
    for sigma, chunks, seen in probe.calls:
        step = step_of[round(sigma, 5)]
        for (kind, key), got in seen.items():
            table = bank.residual if kind == "res" else bank.attention
            if step >= table[key].shape[0]:
                continue
            expected = model_calls.rows_from_source(table[key][step].to(got), got.shape[0], chunks)
            if torch.equal(got, expected):
                found[kind].add(step)
    return found


def save_and_stage(bank, folders, prefix="pnp_bank"):
    """Save a U-Net bank with PnP Save Feature Bank into the `folders` fixture's output folder and
    copy it into its input folder; returns (saved, staged) paths."""
    out, inp = folders
    (ui,) = PnPSaveFeatureBank.execute(bank, prefix).ui["text"]
    saved = out / ui
    staged = inp / saved.name
    staged.write_bytes(saved.read_bytes())
    return saved, staged


def rewrite(path, edit_tensors=None, edit_meta=None, resign=False):
    """Rewrite a safetensors file in place, after `edit_tensors(tensors)` and `edit_meta(metadata)`.
    The checksum the pack wrote stays as it was (the edit is then named as damage), unless `resign`:
    then it is computed again, as other software or a deliberate edit would, so that the checks
    behind it are reached."""
    with safe_open(str(path), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta)
    if resign:
        meta[bank_integrity.CHECKSUM] = bank_integrity.checksum(meta, {k: t.contiguous() for k, t in tensors.items()})
    save_file(tensors, str(path), metadata=meta)


def compile_unavailable(backend: str) -> str | None:
    """Why torch.compile with `backend` cannot run here, or None."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile (dynamo) does not support this Python/platform"
    if backend == "inductor":
        try:
            from torch._inductor import cpp_builder

            cpp_builder.get_cpp_compiler()
        except Exception as e:  # noqa: BLE001 (any failure to find a compiler means: skip)
            return f"inductor needs a C++ compiler on the CPU: {e}"
    return None


def count_rows(model_patcher, fn) -> int:
    """Rows of latents the network of `model_patcher` evaluated while `fn` ran (a call on a batch of 2 counts 2)."""
    rows = []
    net = model_patcher.model.diffusion_model
    handle = net.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        fn()
    finally:
        handle.remove()
    return sum(rows)


def process_memory(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes: VmRSS (resident now), VmHWM (its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(f"no {field} in /proc/self/status")


def restart_peak_memory() -> None:
    """Restart VmHWM from the current resident size, so that a later peak is what the code since then added."""
    Path("/proc/self/clear_refs").write_text("5")


# The README's U-Net bank figures ("Which method?"): the bank at the paper's defaults (50 steps, 0.8 / 0.5, layers
# `auto`) with the source's path and start latent (float32), SD 1.5 at 512x512 and SDXL at 1024x1024, in MiB.
# test_bank_memory recomputes them from the engine's estimate; test_readme finds them on the front page.
README_BANK_MIB = {("sd15", torch.float16): 341, ("sdxl", torch.float16): 1988,
                   ("sd15", torch.float32): 678, ("sdxl", torch.float32): 3963}
