"""ComfyUI's step caches (EasyCache, LazyCache: comfy_extras/nodes_easycache.py) on the model a user hands to
PnP. A cache answers some model calls from earlier ones; an inversion, a capture, an injected run and a velocity
edit need every call. So PnP switches the cache off for those runs, with a log line and a notice on the node,
and each case gives the uncached edit exactly: cache before inversion/capture and before sampling, at the cache's
default window and at its widest (0-1, the highest reuse threshold). Each case also shows the cache really skips
calls on plain sampling of the same model, so the equality is not for want of a working cache."""
from __future__ import annotations

import logging

import pytest
import torch
from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode

import flux_harness as fh
import harness
from comfyui_pnp.nodes import velocity as velocity_nodes
from comfyui_pnp.nodes.flux import PnPFluxApplyInjection
from comfyui_pnp.nodes.flux_kv_edit import PnPFluxKVEditInversion, PnPFluxKVEditSampler
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import inversion, sampling

CACHES = {"EasyCache": EasyCacheNode, "LazyCache": LazyCacheNode}
WINDOWS = {"default": (0.2, 0.15, 0.95), "widest": (3.0, 0.0, 1.0)}  # reuse_threshold, start, end
CASES = [(cache, window) for cache in CACHES for window in WINDOWS]


def cached(model, cache: str, window: str):
    threshold, start, end = WINDOWS[window]
    return CACHES[cache].execute(model, threshold, start, end, False).result[0]


def said_off(caplog, cache: str) -> bool:
    return any(f"{cache} is off" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.fixture(scope="module")
def unet():
    model = harness.make_model("sd15")
    empty, target = harness.conditioning(seed=5), harness.conditioning(seed=1)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=8, evaluations=8)
    edit = sampling.pnp_sample(model, banks.capture(model, trajectory), target, empty)
    return model, trajectory, empty, target, edit


@pytest.fixture(scope="module")
def flux():
    model = fh.with_shift(fh.make_flux(seed=3), 128, 128)
    bank, target = fh.invert(model, steps=8, keep_steps=6), fh.conditioning(seed=1)
    return model, bank, target, fh.pnp(model, bank, target, inject=6)


def test_the_widest_cache_skips_calls_on_plain_sampling(unet, flux):
    """The premise of the cases below: on these models a cache at its widest window changes plain sampling."""
    model, trajectory, empty, target, _ = unet
    for cache in CACHES:
        plain = harness.plain_sample(model, trajectory.latents[0], trajectory.sigmas, target, empty, 7.5)
        skipped = harness.plain_sample(cached(model, cache, "widest"), trajectory.latents[0], trajectory.sigmas,
                                       target, empty, 7.5)
        assert harness.rel(skipped, plain) > 1e-3, cache
    model, bank, target, _ = flux
    for cache in CACHES:
        plain = fh.plain_sample(model, bank, target, 5.0)
        assert harness.rel(fh.plain_sample(cached(model, cache, "widest"), bank, target, 5.0), plain) > 1e-3, cache


@pytest.mark.parametrize("cache,window", CASES)
def test_unet_cache_before_inversion_capture_and_sampling(unet, cache, window, caplog):
    """The cache on the model of PnP Inversion, PnP Capture Features and PnP Sampler: the uncached edit, bit for
    bit, and the log says the cache was off."""
    model, _, empty, target, edit = unet
    with_cache = cached(model, cache, window)
    with caplog.at_level(logging.WARNING):
        trajectory = inversion.invert(with_cache, harness.latent(), empty, steps=8, evaluations=8)
        out = sampling.pnp_sample(with_cache, banks.capture(with_cache, trajectory), target, empty)
    assert torch.equal(out, edit)
    assert said_off(caplog, cache)


@pytest.mark.parametrize("cache,window", CASES)
def test_flux_cache_before_inversion_and_sampling(flux, cache, window, caplog):
    """The cache on the model of PnP Flux/Chroma/HunyuanVideo Inversion (its rising sigmas once crashed the cache) and of PnP Flux/Chroma/HunyuanVideo
    Sampler, and on the patched model of the SamplerCustomAdvanced route: the uncached edit, bit for bit."""
    model, bank, target, edit = flux
    with_cache = cached(model, cache, window)
    with caplog.at_level(logging.WARNING):
        out = fh.pnp(with_cache, fh.invert(with_cache, steps=8, keep_steps=6), target, inject=6)
    assert torch.equal(out, edit)
    assert said_off(caplog, cache)
    (patched,) = PnPFluxApplyInjection.execute(model, bank, 6).result  # the cache added after the patch
    assert torch.equal(fh.custom_advanced(cached(patched, cache, window), bank, target),
                       fh.custom_advanced(patched, bank, target))


@pytest.mark.parametrize("cache", CACHES)
def test_velocity_edit_with_a_cache_is_the_uncached_edit(flux, cache, caplog):
    """FlowEdit pairs a source and a target call at each step: with a cache at its widest window on the model, the
    edit is the uncached one."""
    model, *_ = flux
    source = {"samples": fh.latent(size=16)}
    prompts = fh.conditioning(seed=1), fh.conditioning(seed=5)

    def flowedit(m):
        return velocity_nodes.PnPFlowEdit.execute(m, source, *prompts, 8, 6, 0, 1, -1, -1, 3).result[0]["samples"]
    with caplog.at_level(logging.WARNING):
        out = flowedit(cached(model, cache, "widest"))
    assert torch.equal(out, flowedit(model))
    assert said_off(caplog, cache)


@pytest.mark.parametrize("cache", CACHES)
def test_kv_edit_with_a_cache_is_the_uncached_edit(flux, cache, caplog):
    """KV-Edit keeps the source's keys and values at every step: a cache at its widest window on the model of its
    inversion and sampler gives the uncached edit."""
    model, *_ = flux
    mask = torch.zeros(1, 16, 16)
    mask[:, 3:13, 5:12] = 1

    def kv_edit(m):
        (bank,) = PnPFluxKVEditInversion.execute(m, {"samples": fh.latent()}, fh.conditioning(seed=5), 8, 2, 1.5,
                                                  "official", mask).result
        return PnPFluxKVEditSampler.execute(m, bank, fh.conditioning(seed=1), 5.5, 1.0).result[0]["samples"]
    with caplog.at_level(logging.WARNING):
        out = kv_edit(cached(model, cache, "widest"))
    assert torch.equal(out, kv_edit(model))
    assert said_off(caplog, cache)
