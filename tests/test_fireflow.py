"""FireFlow on Flux: our nodes against an independent implementation of the official FireFlow
(tests/flux_reference.py, on a diffusers FluxTransformer2DModel with the same weights), on the
shrunk real ComfyUI Flux with Flux.1's block counts.

Each fidelity figure comes with the figure of a mutated reference (the velocity not reused, or
the editing keys shifted by one step), which the comparison must reject: the test can fail.
"""
import pytest
import torch
from comfy_extras.nodes_custom_sampler import BasicGuider, KSamplerSelect, SamplerCustomAdvanced
from comfy_extras.nodes_flux import FluxGuidance

import flux_harness as fh
import flux_reference as ref
import harness
from comfyui_pnp.nodes.flux import (PnPFireFlowSampler, PnPFluxApplyInjection, PnPFluxFireFlowInversion,
                                    PnPFluxFireFlowSampler, PnPFluxNoise, PnPFluxSampler, PnPRFSolverSampler)
from comfyui_pnp.pnp_injection.errors import PnPError
from comfyui_pnp.pnp_injection.flow import bank as flux_banks
from comfyui_pnp.pnp_injection.flow import bank_file as flux_bank_file
from comfyui_pnp.pnp_injection.flow import layers as flux_layers
from comfyui_pnp.pnp_injection.flow import solvers
from host import run_node

pytest.importorskip("diffusers")

STEPS, INJECT, GUIDANCE = 8, 1, 2.0   # FireFlow's recommended editing settings (README.md lines 168-176)


def invert(model, source, prompt, steps=STEPS, keep=INJECT, strategy="replace_v", scheduler="official", custom=""):
    (bank,) = PnPFluxFireFlowInversion.execute(model, {"samples": source}, prompt, steps, keep, 1.0, strategy,
                                               scheduler, custom).result
    return bank


def edit(model, bank, prompt, inject=INJECT, guidance=GUIDANCE):
    (out,) = PnPFluxFireFlowSampler.execute(model, bank, prompt, guidance, inject).result
    return out["samples"]


def advanced(model, bank, prompt, inject=INJECT, guidance=GUIDANCE, sampler=None):
    """SamplerCustomAdvanced with PnP Flux/Chroma/HunyuanVideo Apply Feature Injection, PnP Flux/Chroma/HunyuanVideo Noise and a SAMPLER
    (default: FireFlow Sampler (PnP Flux))."""
    (patched,) = PnPFluxApplyInjection.execute(model, bank, inject).result
    noise, sigmas = PnPFluxNoise.execute(bank).result
    (conditioning,) = run_node(FluxGuidance, prompt, guidance)
    (guider,) = run_node(BasicGuider, patched, conditioning)
    if sampler is None:
        (sampler,) = PnPFireFlowSampler.execute().result
    out, _ = run_node(SamplerCustomAdvanced, noise, guider, sampler, sigmas, {"samples": torch.zeros_like(bank.noise)})
    return out["samples"]


def by_route(route, model, bank, prompt, inject=INJECT):
    """The edit through PnP Flux/Chroma/HunyuanVideo Sampler (FireFlow) ("sampler") or SamplerCustomAdvanced ("advanced")."""
    return edit(model, bank, prompt, inject) if route == "sampler" else advanced(model, bank, prompt, inject)


@pytest.fixture(scope="module")
def model():
    return fh.make_flux(seed=3)


@pytest.fixture(scope="module")
def prompts():
    return fh.conditioning(seed=5), fh.conditioning(seed=1)  # source, target


@pytest.fixture(scope="module")
def recommended(model, prompts):
    """FireFlow at its recommended settings: the reference, its mutations, and our bank."""
    source = fh.latent()
    expected, calls = ref.fireflow_edit(model, source, *prompts)
    no_reuse, _ = ref.fireflow_edit(model, source, *prompts, reuse=False)
    shifted, _ = ref.fireflow_edit(model, source, *prompts, key_shift=1)
    bank = invert(model, source, prompts[0])
    return {"expected": expected, "calls": calls, "no_reuse": no_reuse, "shifted": shifted, "bank": bank,
            "plain": edit(model, bank, prompts[1], inject=0)}


@pytest.mark.parametrize("route", ["sampler", "advanced"])
def test_recommended_settings_match_the_official_fireflow(route, model, prompts, recommended, record_property):
    """8 steps, inject 1, guidance 2, single blocks 0-37, replace_v: both routes equal the
    official FireFlow to 1e-3 (measured 3.1e-7). The reference without velocity reuse is far off
    (measured 6.7e-2). At inject 1 a key shifted by one step finds no feature: that mutation
    equals plain FireFlow sampling, which injection moves by 4.8% on this model."""
    bank = recommended["bank"]
    got = by_route(route, model, bank, prompts[1])
    error = harness.rel(got, recommended["expected"])
    mutated = harness.rel(got, recommended["no_reuse"])
    effect = harness.rel(got, recommended["plain"])
    record_property("relative_error", error)
    print(f"\nFireFlow {STEPS} steps, inject {INJECT}, {route}: error {error:.2e}; velocity not reused "
          f"{mutated:.2e}; injection effect {effect:.3f}")
    assert error < 1e-3
    assert mutated > 1e-2
    assert harness.rel(recommended["shifted"], recommended["plain"]) < 1e-5  # the shifted key injects nothing
    assert effect > 0.02


@pytest.fixture(scope="module")
def harder(model, prompts):
    """15 steps and 4 injected steps on a 24x16 latent (a schedule ComfyUI's simple table misses)."""
    steps, inject = 15, 4
    source = fh.latent(size=24)[..., :16]
    expected, _ = ref.fireflow_edit(model, source, *prompts, steps, inject)
    shifted, _ = ref.fireflow_edit(model, source, *prompts, steps, inject, key_shift=1)
    bank = invert(model, source, prompts[0], steps, inject)
    return {"expected": expected, "shifted": shifted, "bank": bank, "inject": inject,
            "plain": edit(model, bank, prompts[1], inject=0)}


@pytest.mark.parametrize("route", ["sampler", "advanced"])
def test_more_steps_on_a_non_square_latent_match_the_official_fireflow(route, model, prompts, harder,
                                                                       record_property):
    """Both routes within 1e-3 (measured 4.1e-6); the shifted-key mutation (measured 4.5e-2; the
    unreused velocity, 3.5e-2 here, is the recommended test's mutation) is rejected; injection moves
    the result by more than 5% (8.8%)."""
    bank, inject = harder["bank"], harder["inject"]
    got = by_route(route, model, bank, prompts[1], inject)
    error, shifted = (harness.rel(got, harder[k]) for k in ("expected", "shifted"))
    effect = harness.rel(got, harder["plain"])
    record_property("relative_error", error)
    print(f"\nFireFlow 15 steps, inject {inject}, 24x16, {route}: error {error:.2e}; key shifted {shifted:.2e}; "
          f"injection effect {effect:.3f}")
    assert error < 1e-3
    assert shifted > 1e-2
    assert effect > 0.05


@pytest.mark.parametrize("strategy", ["add_q", "add_k", "add_q add_k replace_v"])
def test_strategies_match_the_official_code(strategy, model, prompts):
    """add_q and add_k add the source's normed queries or keys (the official code adds after the
    QK-norm), alone or with replace_v: equal to the reference to 1e-3, and each moves the result."""
    source, steps, inject = fh.latent(), 4, 2
    expected, _ = ref.fireflow_edit(model, source, *prompts, steps, inject, strategy=strategy)
    bank = invert(model, source, prompts[0], steps, inject, strategy)
    got = edit(model, bank, prompts[1], inject)
    assert harness.rel(got, expected) < 1e-3
    assert harness.rel(got, edit(model, bank, prompts[1], 0)) > 0.005
    kept = {key.rsplit(".", 1)[1] for key in bank.tables}
    assert kept == {t for t in "qkv" if t in strategy}  # only what the strategy reads is kept


def test_one_step_reads_the_first_evaluation_too(model, prompts):
    """With one step the inversion's first evaluation and the sampling's share a key (both at
    t = 1): the bank keeps it, as the official dict does."""
    source = fh.latent()
    expected, calls = ref.fireflow_edit(model, source, *prompts, 1, 1)
    bank = invert(model, source, prompts[0], 1, 1)
    assert bank.slots == 2 and calls == 4
    assert harness.rel(edit(model, bank, prompts[1], 1), expected) < 1e-3


def test_inject_zero_is_plain_fireflow_sampling_bit_for_bit(model, prompts, recommended):
    """PnP Flux/Chroma/HunyuanVideo Sampler (FireFlow) at inject 0 = FireFlow Sampler (PnP Flux) on the unpatched
    model from the inverted latent, through SamplerCustomAdvanced."""
    bank = recommended["bank"]
    noise, sigmas = PnPFluxNoise.execute(bank).result
    (conditioning,) = run_node(FluxGuidance, prompts[1], GUIDANCE)
    (guider,) = run_node(BasicGuider, model, conditioning)
    (sampler,) = PnPFireFlowSampler.execute().result
    plain, _ = run_node(SamplerCustomAdvanced, noise, guider, sampler, sigmas, {"samples": fh.latent()})
    assert torch.equal(recommended["plain"], plain["samples"])


def test_evaluations_per_edit_against_rf_solver_edit(model, prompts, recommended):
    """N + 1 model evaluations per pass (official: the first step evaluates twice, every other
    once): 18 per edit at 8 steps, as the reference counts; RF-Solver makes 2N per pass."""
    counter = harness.CountCalls(model)
    with counter:
        bank = invert(model, fh.latent(), prompts[0])
        inversion = counter.calls
        edit(model, bank, prompts[1])
    assert (inversion, counter.calls) == (STEPS + 1, 2 * STEPS + 2) == (STEPS + 1, recommended["calls"])
    assert solvers.evaluations("fireflow", 8) * 2 == 18 and solvers.evaluations("rf_solver", 25) * 2 == 100


def test_the_bank_keeps_what_fireflow_reads_and_nothing_more(model, prompts, recommended):
    """One slot per kept step (the midpoint), v of all tokens of single blocks 0-37; the size
    estimate made before any model work is the bank's size."""
    bank = recommended["bank"]
    assert sorted(bank.tables) == sorted(f"single.{b}.v" for b in range(38))
    tokens = fh.conditioning()[0][0].shape[1] + (16 // 2) ** 2
    assert all(t.shape == (1, 1, tokens, fh.HIDDEN) for t in bank.tables.values())
    layers = flux_layers.PRESETS["fireflow"]
    estimate = flux_banks.estimate_bytes(model, layers, bank.noise.shape, bank.text_tokens, bank.slots)
    assert estimate == sum(t.nbytes for t in bank.tables.values())
    rf = flux_banks.slot_count("rf_solver", STEPS, INJECT)
    assert (bank.slots, rf) == (1, 2)


def test_banks_refuse_the_other_solver_before_any_model_call(model, prompts, recommended):
    """A FireFlow bank holds midpoints only: RF-Solver's and euler's calls would find nothing.
    The FireFlow sampler on an RF-Solver bank is neither algorithm. Both are errors that name
    the matching sampler, before the model runs."""
    fireflow_bank = recommended["bank"]
    rf_bank = fh.invert(model, steps=3, keep_steps=2)
    (rf_sampler,) = PnPRFSolverSampler.execute().result
    (euler,) = run_node(KSamplerSelect, "euler")
    cases = [
        (fireflow_bank, rf_sampler, "kept for FireFlow.*FireFlow Sampler \\(PnP Flux\\)"),
        (fireflow_bank, euler, "kept for FireFlow.*FireFlow Sampler \\(PnP Flux\\)"),
        (rf_bank, None, "kept for RF-Solver but the sampler is FireFlow.*RF-Solver Sampler \\(PnP Flux\\)"),
    ]
    for bank, sampler, match in cases:
        with harness.CountCalls(model) as counter, pytest.raises(PnPError, match=match):
            advanced(model, bank, prompts[1], inject=1, sampler=sampler)
        assert counter.calls == 0
    with pytest.raises(PnPError, match="inverted with rf_solver, not FireFlow.*PnP Flux/Chroma/HunyuanVideo Sampler"):
        edit(model, rf_bank, prompts[1])
    # PnP Flux/Chroma/HunyuanVideo Sampler samples any bank with the bank's own solver: FireFlow's here
    (out,) = PnPFluxSampler.execute(model, fireflow_bank, prompts[1], GUIDANCE, INJECT).result
    assert torch.equal(out["samples"], edit(model, fireflow_bank, prompts[1]))


def test_a_batch_of_prompts_and_of_sources(model, prompts):
    """Two target prompts give two latents, each the single-prompt edit; a bank of two sources
    edits each row from its own source."""
    source = fh.latent()
    bank = invert(model, source, prompts[0], 4, 2)
    first, second = fh.conditioning(seed=1), fh.conditioning(seed=8)
    both = [[torch.cat([first[0][0], second[0][0]]),
             {"pooled_output": torch.cat([first[0][1]["pooled_output"], second[0][1]["pooled_output"]])}]]
    out = edit(model, bank, both, 2)
    assert out.shape[0] == 2
    for row, prompt in enumerate((first, second)):
        assert harness.rel(out[row:row + 1], edit(model, bank, prompt, 2)) < 1e-5

    sources = torch.cat([source, fh.latent(seed=4)])
    pair = invert(model, sources, prompts[0], 4, 2)
    out = edit(model, pair, prompts[1], 2)
    assert harness.rel(out[:1], edit(model, bank, prompts[1], 2)) < 1e-5
    assert harness.rel(out[1:], out[:1]) > 0.05


@pytest.mark.parametrize("phase", ["inversion", "sampler", "advanced"])
def test_an_interrupt_stops_each_phase_at_the_next_call(phase, model, prompts, recommended):
    bank = recommended["bank"]
    run = {"inversion": lambda: invert(model, fh.latent(), prompts[0]),
           "sampler": lambda: edit(model, bank, prompts[1]),
           "advanced": lambda: advanced(model, bank, prompts[1])}[phase]
    calls = fh.interrupted_after(model, 3, run)
    assert calls <= 4, f"{calls} model calls after an interrupt at call 3"
    fh.assert_clean(model)


def test_bad_inputs_get_errors_that_name_the_fix(model, prompts, recommended):
    source = fh.latent()
    with pytest.raises(PnPError, match="Unknown FireFlow strategy 'add_x'.*replace_v"):
        invert(model, source, prompts[0], strategy="add_x")
    with pytest.raises(PnPError, match="`inject` 2 needs .* bank holds 1: raise `keep_steps`"):
        edit(model, recommended["bank"], prompts[1], inject=2)
    with pytest.raises(PnPError, match="names a block's tensor twice"):
        invert(model, source, prompts[0], custom="single.0:+v; single.0:v")
    with pytest.raises(PnPError, match="Cannot read the Flux layer set.*'\\+'"):
        invert(model, source, prompts[0], custom="single.0:++v")
    with pytest.raises(PnPError, match="keep_steps"):
        invert(model, source, prompts[0], steps=2, keep=3)


def test_bank_files_keep_the_strategy(model, prompts, folders):
    """An add_q bank saved and loaded samples bit for bit as the bank in memory; its layer
    text carries the '+' of an added tensor."""
    bank = invert(model, fh.latent(), prompts[0], 4, 2, "add_q replace_v")
    path = folders[0] / "fireflow.pnpfluxbank.safetensors"
    flux_bank_file.save(bank, path)
    loaded = flux_bank_file.load(path)
    assert loaded.layers == bank.layers and loaded.solver == "fireflow" and loaded.slots == 2
    assert loaded.layers.describe().startswith("single.0:+q,v; single.1:+q,v")
    assert torch.equal(edit(model, loaded, prompts[1], 2), edit(model, bank, prompts[1], 2))


def test_custom_layers_with_an_added_tensor_equal_the_strategy_preset(model, prompts):
    custom = flux_layers.parse_custom("single.0-37:+k,v")
    assert custom == flux_layers.PRESETS[flux_layers.fireflow_preset("add_k replace_v")]
    assert [s.added for s in custom.sites] == [("k",)] * 38
