"""A shrunk real ComfyUI Flux.1 for tests: comfy.model_base.Flux with the sm.Flux config,
Flux.1's block counts (19 double, 38 single) and a hidden width of 64, random weights scaled
like a real init so that the injected features change the output.
"""
from __future__ import annotations

import math

import pytest
import torch

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension as ext
import comfy.samplers
import comfy.supported_models as sm
from comfy_extras.nodes_custom_sampler import BasicGuider, KSamplerSelect, SamplerCustomAdvanced
from comfy_extras.nodes_flux import FluxGuidance
from comfyui_pnp.nodes.flux import PnPFluxInversion, PnPFluxNoise, PnPFluxSampler, PnPRFSolverSampler
from comfyui_pnp.pnp_injection import passes
from comfyui_pnp.pnp_injection.flow import inversion as flux_inversion
from comfyui_pnp.pnp_injection.flow import patches as flux_patches
from comfyui_pnp.pnp_injection.flow import solvers
from host import run_node

HIDDEN, HEADS, AXES = 64, 2, [8, 12, 12]     # head dim 32 = sum of the rope axes
CONTEXT, POOLED = 32, 32                      # text width (T5 in Flux.1) and pooled width (CLIP-L)
DOUBLE, SINGLE = 19, 38


def flux_config(hidden: int = HIDDEN, heads: int = HEADS, axes=AXES, double: int = DOUBLE, single: int = SINGLE) -> dict:
    return {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": POOLED,
            "context_in_dim": CONTEXT, "hidden_size": hidden, "mlp_ratio": 4.0, "num_heads": heads, "depth": double,
            "depth_single_blocks": single, "axes_dim": list(axes), "theta": 10000, "qkv_bias": True,
            "guidance_embed": True, "patch_size": 2}


def init_flux_weights(net: torch.nn.Module, seed: int) -> None:
    """Real-init-like weights: RMSNorm scales 1, fan-in scaled linears, small biases."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith(".scale"):
                p.fill_(1.0)
            elif p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


def make_flux(seed: int = 0, **config):
    """A ModelPatcher around a real comfy.model_base.Flux with random weights, fp32 on the CPU."""
    return patcher_of(sm.Flux(flux_config(**config)), comfy.model_base.Flux, seed)


def patcher_of(model_config, model_class, seed: int, init=init_flux_weights):
    """A ModelPatcher around `model_class` built from `model_config` by the host, fp32 on the CPU, its
    network's weights from `init` (every flow-transformer family of the tests)."""
    model_config.set_inference_dtype(torch.float32, None)
    model = model_class(model_config, device="cpu")
    init(model.diffusion_model, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def conditioning(seed: int = 1, tokens: int = 8, batch: int = 1):
    """Flux CONDITIONING: T5-like context and a CLIP-like pooled vector."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, CONTEXT, generator=gen), {"pooled_output": torch.randn(batch, POOLED, generator=gen)}]]


def latent(seed: int = 2, size: int = 16, batch: int = 1) -> torch.Tensor:
    """A Flux source latent in user space (what VAE Encode gives), image-like (smooth plus detail)."""
    gen = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.randn(batch, 16, size // 4, size // 4, generator=gen),
                                             size=(size, size), mode="bilinear", align_corners=False)
    return 2.0 * smooth + 0.3 * torch.randn(batch, 16, size, size, generator=gen)


def with_shift(model_patcher, width: int, height: int):
    """The official schedule's shift for an image size, as ComfyUI's ModelSamplingFlux node sets it
    (linear in the token count from (256, 0.5) to (4096, 1.15))."""
    import comfy.model_sampling

    tokens = width * height / (8 * 8 * 2 * 2)
    mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (tokens - 256)

    class Sampling(comfy.model_sampling.ModelSamplingFlux, comfy.model_sampling.CONST):
        pass
    sampling = Sampling(model_patcher.model.model_config)
    sampling.set_parameters(shift=mu)
    patched = model_patcher.clone()
    patched.add_object_patch("model_sampling", sampling)
    return patched


def with_reference(conditioning, seed: int = 7, size: int = 16):
    """The prompt as Flux Kontext's ReferenceLatent node leaves it: a reference latent appended,
    which adds its image tokens to every model call."""
    import node_helpers

    return node_helpers.conditioning_set_values(conditioning, {"reference_latents": [latent(seed=seed, size=size)]},
                                                append=True)


def custom_advanced(model, bank, prompt, sampler_name=None, latent_image=None, guidance=5.0):
    """The advanced route: SamplerCustomAdvanced with FluxGuidance, BasicGuider, PnP Flux/Chroma/HunyuanVideo Noise's
    NOISE and SIGMAS, and the RF-Solver SAMPLER (or a ComfyUI sampler by name)."""
    noise, sigmas = PnPFluxNoise.execute(bank).result
    (conditioning,) = run_node(FluxGuidance, prompt, guidance)
    (guider,) = run_node(BasicGuider, model, conditioning)
    if sampler_name is None:
        (sampler,) = PnPRFSolverSampler.execute().result
    else:
        (sampler,) = run_node(KSamplerSelect, sampler_name)
    if latent_image is None:  # any latent of the source's size: it is multiplied by 0
        h, w = bank.noise.shape[-2:]
        latent_image = latent(seed=9, size=max(h, w))[..., :h, :w]
    out, _ = run_node(SamplerCustomAdvanced, noise, guider, sampler, sigmas, {"samples": latent_image})
    return out["samples"]


# --- shared by the Flux test modules (moved here from test_flux_engine) ---

STEPS, INJECT = 6, 5  # the Flux tests' default steps and injected (kept) steps


def invert(model, source=None, prompt=None, solver="rf_solver", layers="rf-solver-edit", steps=STEPS, keep_steps=INJECT,
           custom=""):
    """PnP Flux/Chroma/HunyuanVideo Inversion of `source` (default: `latent()`) with `prompt` (default: `conditioning(seed=5)`)."""
    source = latent() if source is None else source
    prompt = prompt or conditioning(seed=5)
    (bank,) = PnPFluxInversion.execute(model, {"samples": source}, prompt, steps, keep_steps, 1.0, layers, solver,
                                       "simple", custom).result
    return bank


def pnp(model, bank, prompt, inject=INJECT, guidance=5.0):
    """PnP Flux/Chroma/HunyuanVideo Sampler's latent."""
    (out,) = PnPFluxSampler.execute(model, bank, prompt, guidance, inject).result
    return out["samples"]


def plain_sample(model, bank, prompt, guidance):
    """Sampling of the bank's inverted latent with the bank's solver on the unpatched model, at Flux
    guidance `guidance` (no classifier-free guidance): what PnP sampling at inject 0 must equal."""
    conditioning = flux_inversion.guided(model, prompt, guidance)
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)
    return passes.sample(guider, torch.zeros_like(bank.noise), solvers.sampler_for(bank.solver), bank.sigmas,
                         noise=bank.noise, bar=False)


def assert_clean(model):
    """No PnP wrapper on the model and no hook left on any of its modules."""
    for kind in (ext.WrappersMP.OUTER_SAMPLE, ext.WrappersMP.DIFFUSION_MODEL):
        assert model.get_wrappers(kind, flux_patches.WRAPPER_KEY) == []
    assert not any(m._forward_hooks for m in model.model.diffusion_model.modules())


def interrupted_after(model, calls, fn):
    """Run `fn`, asking ComfyUI to interrupt at model call `calls`; returns the calls made."""
    seen = {"calls": 0}

    def pre(module, args):
        seen["calls"] += 1
        if seen["calls"] == calls:
            comfy.model_management.interrupt_current_processing(True)
    handle = model.model.diffusion_model.register_forward_pre_hook(pre)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            fn()
    finally:
        handle.remove()
        comfy.model_management.interrupt_current_processing(False)
    return seen["calls"]
