"""Banks are sized before any model work, written once, and owned per sampling run; a batch of
prompts gives one latent per prompt. Both wings."""
import logging
import re
import time

import pytest
import torch

import flux_harness as fh
import harness
from comfyui_pnp.pnp_injection import PnPError, placement
from comfyui_pnp.pnp_injection.flow import bank as flux_banks
from comfyui_pnp.pnp_injection.flow import inversion as flux_inversion
from comfyui_pnp.pnp_injection.flow import layers as flux_layers
from comfyui_pnp.pnp_injection.flow import sampling as flux_sampling
from comfyui_pnp.pnp_injection.model_calls import RUN_KEY
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import inversion, layers, patches, sampling

STEPS = 6


@pytest.fixture(scope="module")
def sd15():
    return harness.make_model("sd15")


@pytest.fixture(scope="module")
def flux():
    """A Flux.1 with 1 double and 4 single blocks: enough for the properties here, and fast."""
    return fh.make_flux(seed=3, double=1, single=4)


SMALL_FLUX_LAYERS = "single.2-3:v"


@pytest.mark.parametrize("arch,size,rows,dtype", [("sd15", 16, 1, None), ("sd15", 13, 2, torch.float16),
                                                  ("sdxl", 11, 1, None)])
def test_unet_estimate_is_the_bank_size(arch, size, rows, dtype):
    """The estimate made before any U-Net work equals the captured bank's bytes, for odd latent
    sizes (the encoder rounds up), batches and a half-precision bank. Fails if a layer's
    resolution, width, step count or dtype is estimated wrong."""
    model = harness.make_model(arch)
    empty = harness.conditioning(arch, seed=5)
    trajectory = inversion.invert(model, harness.latent(size=size, batch=rows), empty, STEPS, STEPS)
    layer_set = layers.resolve(model)
    estimate = banks.estimate_bytes(model, layer_set, trajectory.latents.shape[1:], 4, 3, dtype)
    bank = banks.capture(model, trajectory, 4 / STEPS + 1e-6, 3 / STEPS + 1e-6, dtype=dtype)
    assert (bank.feature_step_count, bank.attention_step_count) == (4, 3)
    assert estimate == placement.nbytes(bank.tables.values()) > 0


@pytest.mark.parametrize("preset,size", [("rf-solver-edit", (16, 16)), ("stable-flow", (10, 14))])
def test_flux_estimate_is_the_bank_size(preset, size):
    """The Flux estimate equals the kept tables' bytes (image tokens of odd sizes pad; all-token
    single sites carry the text too). Fails if tokens, slots or width are counted wrong."""
    source = fh.latent(size=max(size))[..., : size[0], : size[1]]
    prompt = fh.conditioning(seed=5, tokens=9)
    flux = fh.make_flux(seed=3)  # the presets' block numbers
    bank = flux_inversion.invert(flux, source, prompt, 3, 2, preset)
    estimate = flux_banks.estimate_bytes(flux, flux_layers.PRESETS[preset], source.shape, 9, 2 * 2)
    assert estimate == placement.nbytes(bank.tables.values()) > 0


def test_a_bank_that_cannot_fit_is_refused_before_any_model_work(sd15, flux, monkeypatch):
    """With less memory free than the bank needs, capture and Flux inversion asked to keep the bank in memory
    refuse with the figures (the bank, the memory and the disk free, what recompute keeps), the other placements
    and the settings that shrink the bank, before a single model evaluation. Fails if the estimate comes after
    the model work or the message lacks the figures or the fix."""
    trajectory = inversion.invert(sd15, harness.latent(), harness.conditioning(seed=5), STEPS, STEPS)
    monkeypatch.setattr(placement, "available_bytes", lambda device: 1000)
    with harness.CountCalls(sd15) as calls, pytest.raises(PnPError) as error:
        banks.capture(sd15, trajectory, bank="memory")
    assert calls.calls == 0
    for part in ("the bank takes 0.00 GiB; 0.00 GiB of memory is free", "on the temp folder's disk",
                 "`recompute` keeps", "Choose `bank` auto, disk or recompute", "shrink the bank"):
        assert part in str(error.value), (part, str(error.value))
    with harness.CountCalls(flux) as calls, pytest.raises(PnPError, match="shrink the bank"):
        flux_inversion.invert(flux, fh.latent(), fh.conditioning(seed=5), STEPS, 3, custom_layers=SMALL_FLUX_LAYERS,
                              bank="memory")
    assert calls.calls == 0


def test_an_allocation_failure_is_a_pnp_error(monkeypatch):
    """The allocator's own out-of-memory error becomes a PnPError with the table's size."""
    def refuse(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(torch, "empty", refuse)
    with pytest.raises(PnPError, match="Out of memory for a feature-bank table of 4 MiB"):
        placement.allocate((1024, 1024), torch.float32, torch.device("cpu"))


def test_tables_keep_the_first_write_and_are_allocated_once():
    """Each table is allocated once, filled in place, and the first write to a slot stays.
    Fails if a second write overwrote the slot or a table were reallocated per slot."""
    tables = placement.Tables(lambda key: 3, device_for=lambda t: torch.device("cpu"))
    tables.put("a", 0, torch.ones(2, 2))
    table = tables.tables["a"]
    tables.put("a", 0, torch.zeros(2, 2))
    tables.put("a", 2, torch.full((2, 2), 2.0))
    tables.put("a", 1, torch.full((2, 2), 3.0))
    assert tables.tables["a"] is table
    assert tables.complete("a", 3, "a").tolist() == [[[1, 1], [1, 1]], [[3, 3], [3, 3]], [[2, 2], [2, 2]]]
    with pytest.raises(PnPError, match="did not reach layer b"):
        tables.complete("b", 3, "b")


def test_each_sampling_run_owns_its_state(sd15):
    """The patched model holds no streaming state: a run installs its own in a copy of the
    model options and drops it when it ends. Fails if the state lived on the shared injection
    object or stayed in the model's options after sampling."""
    empty, target = harness.conditioning(seed=5), harness.conditioning(seed=1)
    trajectory = inversion.invert(sd15, harness.latent(), empty, STEPS, STEPS)
    bank = banks.capture(sd15, trajectory)
    patched = patches.apply_injection(sd15, bank)
    seen = []

    def spy(executor, *args, **kwargs):
        seen.append(args[-1].get(RUN_KEY))
        return executor(*args, **kwargs)
    import comfy.patcher_extension as ext
    spied = patched.clone()
    spied.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "spy", spy)
    start = sampling.start_latent(sd15, bank)["samples"]
    first = harness_sample(spied, start, bank, target, empty)
    seen_first = list(seen)  # held, so that no later object can take a first-run state's id
    runs_first = {id(r) for r in seen_first}
    seen.clear()
    second = harness_sample(spied, start, bank, target, empty)
    assert None not in seen_first and len(runs_first) == 1
    assert {id(r) for r in seen}.isdisjoint(runs_first)  # a fresh state per run
    assert RUN_KEY not in patched.model_options.get("transformer_options", {})
    assert RUN_KEY not in spied.model_options.get("transformer_options", {})
    assert torch.equal(first, second)
    assert all(not r.feed._slices for r in seen)  # released at the end


def harness_sample(model, start, bank, positive, negative):
    import comfy.samplers

    from comfyui_pnp.pnp_injection import passes
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(7.5)
    return passes.sample(guider, start, passes.sampler("ddim"), bank.sigmas)


def test_a_batch_of_prompts_gives_one_latent_per_prompt(sd15, flux):
    """PnP Sampler and PnP Flux/Chroma/HunyuanVideo Sampler given a two-prompt conditioning return two latents, each
    the edit of its own prompt. Fails if the batch is cut to one (the first prompt's edit)."""
    empty = harness.conditioning(seed=5)
    bank = banks.capture(sd15, inversion.invert(sd15, harness.latent(), empty, STEPS, STEPS))
    one, two = harness.conditioning(seed=1), harness.conditioning(seed=2)
    both = [[torch.cat([one[0][0], two[0][0]]), one[0][1]]]
    got = sampling.pnp_sample(sd15, bank, both, empty)
    assert got.shape[0] == 2
    assert harness.rel(got[0:1], sampling.pnp_sample(sd15, bank, one, empty)) < 1e-4
    assert harness.rel(got[1:2], sampling.pnp_sample(sd15, bank, two, empty)) < 1e-4
    assert harness.rel(got[0:1], got[1:2]) > 0.01

    flux_bank = flux_inversion.invert(flux, fh.latent(), fh.conditioning(seed=5), STEPS, 4,
                                      custom_layers=SMALL_FLUX_LAYERS)
    a, b = fh.conditioning(seed=1), fh.conditioning(seed=2)
    pair = [[torch.cat([a[0][0], b[0][0]]), {"pooled_output": torch.cat([a[0][1]["pooled_output"], b[0][1]["pooled_output"]])}]]
    got = flux_sampling.pnp_sample(flux, flux_bank, pair, 5.0, 4)
    assert got.shape[0] == 2
    assert harness.rel(got[0:1], flux_sampling.pnp_sample(flux, flux_bank, a, 5.0, 4)) < 1e-4
    assert harness.rel(got[1:2], flux_sampling.pnp_sample(flux, flux_bank, b, 5.0, 4)) < 1e-4
    assert harness.rel(got[0:1], got[1:2]) > 0.01


def slowed(model_patcher, delay: float):
    """A clone whose every model call first sleeps `delay` s, and the list of its calls (to give the log's
    time figures a known floor)."""
    import comfy.patcher_extension as ext
    calls = []

    def slow(executor, *args, **kwargs):
        calls.append(1)
        time.sleep(delay)
        return executor(*args, **kwargs)
    clone = model_patcher.clone()
    clone.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_slow", slow)
    return clone, calls


TIME_SHOWN = re.compile(r"\bin (\d+(?:\.\d+)?) s$")  # "... in 0.7 s" closes each line


def test_capture_and_inversion_log_size_place_and_time(sd15, flux, caplog):
    """One info line each: the bank's size, its placement and the seconds the call took. Every model call
    here sleeps 0.05 s first, so the time shown must be at least the calls' sleep and at most the call's
    wall time (within the 0.05 s of rounding to a tenth). Fails if a line is missing, or its time is not
    the call's own (missing, a constant, a timestamp, milliseconds, a clock started before the call or
    stopped before the model work)."""
    caplog.set_level(logging.INFO)
    delay, spans = 0.05, {}

    def run(name, model, fn):
        slow, calls = slowed(model, delay)
        started = time.perf_counter()
        out = fn(slow)
        spans[name] = (len(calls) * delay, time.perf_counter() - started)
        return out
    trajectory = run("PnP DDIM Inversion", sd15,
                     lambda m: inversion.invert(m, harness.latent(), harness.conditioning(seed=5), STEPS, STEPS))
    run("PnP Capture Features", sd15, lambda m: banks.capture(m, trajectory))
    run("PnP Flux/Chroma/HunyuanVideo Inversion", flux, lambda m: flux_inversion.invert(m, fh.latent(), fh.conditioning(seed=5), STEPS, 3,
                                                                    custom_layers=SMALL_FLUX_LAYERS))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("PnP")]
    assert any(line.startswith("PnP DDIM Inversion: trajectory") and "MiB on cpu" in line for line in lines), lines
    assert any(line.startswith("PnP Capture Features: bank of") and "KiB in memory" in line for line in lines), lines
    assert any(line.startswith("PnP Flux/Chroma/HunyuanVideo Inversion: bank of") and "KiB in memory" in line for line in lines), lines
    for name, (floor, ceiling) in spans.items():
        (line,) = [line for line in lines if line.startswith(f"{name}: ")]
        shown = TIME_SHOWN.search(line)
        assert shown, f"{line!r} does not end with the time taken, 'in N.N s'"
        assert floor > 0.1 and floor - 0.05 <= float(shown[1]) <= ceiling + 0.05, (line, floor, ceiling)


def test_the_advanced_route_notes_a_first_order_sampler_and_missing_guidance(flux, caplog):
    """SamplerCustomAdvanced with euler on an RF-Solver bank, and a prompt without FluxGuidance,
    each get one log line; with the RF-Solver sampler and guidance set, neither appears."""
    import comfy.samplers
    from comfyui_pnp.pnp_injection import passes
    from comfyui_pnp.pnp_injection.flow import patches as flux_patches

    bank = flux_inversion.invert(flux, fh.latent(), fh.conditioning(seed=5), STEPS, 3, custom_layers=SMALL_FLUX_LAYERS)
    patched = flux_patches.apply_injection(flux, bank, 3)
    caplog.set_level(logging.INFO)
    fh.custom_advanced(patched, bank, fh.conditioning(seed=1))
    assert not [r for r in caplog.records if "PnP Flux:" in r.getMessage()]
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(fh.conditioning(seed=1), fh.conditioning(seed=1))
    guider.set_cfg(1.0)
    passes.sample(guider, torch.zeros_like(bank.noise), comfy.samplers.sampler_object("euler"), bank.sigmas,
                  noise=bank.noise.clone())
    notes = [r.getMessage() for r in caplog.records if "PnP Flux:" in r.getMessage()]
    assert len(notes) == 2 and "first evaluation" in notes[0] and "no Flux guidance" in notes[1], notes
