"""Flux path properties on the shrunk real ComfyUI Flux: injection off is plain sampling,
the SamplerCustomAdvanced route (NOISE, SIGMAS, SAMPLER, patched MODEL) is the one-node
route, Euler matches ComfyUI's euler, batches map row to row, keys follow the official rule,
and the base model is left as it was."""
import copy

import comfy.patcher_extension as ext
import pytest
import torch

import flux_harness as fh
from flux_harness import INJECT, STEPS, assert_clean, custom_advanced, invert, pnp
import harness
from comfyui_pnp.nodes.flux import PnPFluxApplyInjection
from comfyui_pnp.pnp_injection.flow import layers as flux_layers
from comfyui_pnp.pnp_injection.flow import patches as flux_patches


@pytest.fixture(scope="module")
def flux():
    model = fh.with_shift(fh.make_flux(seed=3), 128, 128)
    return model, invert(model), fh.conditioning(seed=1)


@pytest.fixture(scope="module")
def pnp_edit(flux):
    """PnP Flux/Chroma/HunyuanVideo Sampler's latent for the module's model, bank and target (computed once: the tests
    below compare other routes against it)."""
    model, bank, target = flux
    return pnp(model, bank, target)


def test_inject_zero_is_plain_rf_solver_sampling_of_the_inverted_latent(flux, pnp_edit):
    """PnP Flux/Chroma/HunyuanVideo Sampler with inject 0 == SamplerCustomAdvanced with the RF-Solver sampler on
    the unpatched model from the inverted latent as NOISE, bit for bit. Fails if the inverted
    latent entered as the latent (scaled by 0) or anything stays patched."""
    model, bank, target = flux
    plain = custom_advanced(model, bank, target)
    assert torch.equal(pnp(model, bank, target, inject=0), plain)
    assert harness.rel(pnp_edit, plain) > 0.05  # and injection changes it


def test_custom_advanced_route_equals_the_sampler_node(flux, pnp_edit):
    """PnP Flux/Chroma/HunyuanVideo Apply Feature Injection + PnP Flux/Chroma/HunyuanVideo Noise + RF-Solver Sampler in SamplerCustomAdvanced
    is PnP Flux/Chroma/HunyuanVideo Sampler, bit for bit."""
    model, bank, target = flux
    (patched,) = PnPFluxApplyInjection.execute(model, bank, INJECT).result
    assert torch.equal(custom_advanced(patched, bank, target), pnp_edit)


def test_euler_path_matches_comfyui_euler(flux):
    """An Euler bank: PnP Flux/Chroma/HunyuanVideo Sampler at inject 0 is ComfyUI's own euler from the inverted
    latent, bit for bit; with injection, the SamplerCustomAdvanced route (ComfyUI's euler on
    the patched model) is the sampler node."""
    model, _, target = flux
    bank = invert(model, solver="euler")
    assert all(t.shape[0] == INJECT for t in bank.tables.values())  # one evaluation per step
    assert torch.equal(pnp(model, bank, target, inject=0), custom_advanced(model, bank, target, "euler"))
    (patched,) = PnPFluxApplyInjection.execute(model, bank, INJECT).result
    injected = pnp(model, bank, target)
    assert torch.equal(custom_advanced(patched, bank, target, "euler"), injected)
    assert harness.rel(injected, pnp(model, bank, target, inject=0)) > 0.05


def test_slots_follow_the_official_keys(flux):
    """Sampling step i reads slot 2i at sigma_i and 2i+1 at its midpoint; steps at or past
    `inject` read nothing."""
    _, bank, _ = flux
    s = [float(x) for x in bank.sigmas]
    assert [bank.slot_at(s[i], INJECT) for i in range(STEPS)] == [0, 2, 4, 6, 8, None]
    assert [bank.slot_at((s[i] + s[i + 1]) / 2, INJECT) for i in range(STEPS)] == [1, 3, 5, 7, 9, None]
    assert bank.slot_at(s[2], 2) is None


def test_batches_map_row_to_row_and_a_single_source_broadcasts(flux, pnp_edit):
    """Two sources invert to a two-row bank and sample as two independent edits; a one-row
    bank serves every row of a larger latent batch."""
    model, bank, target = flux
    sources = torch.cat([fh.latent(seed=2), fh.latent(seed=7)])
    assert torch.equal(sources[0:1], fh.latent())  # row 0 is the module's source: its single edit is pnp_edit
    batch_bank = invert(model, sources)
    both = pnp(model, batch_bank, target)
    singles = [pnp_edit, pnp(model, invert(model, sources[1:2]), target)]
    for row in range(2):
        assert harness.rel(both[row:row + 1], singles[row]) < 1e-5
    (patched,) = PnPFluxApplyInjection.execute(model, bank, INJECT).result
    broadcast = custom_advanced(patched, bank, target, latent_image=torch.cat([fh.latent(seed=9)] * 2))
    one = pnp_edit
    assert harness.rel(broadcast[0:1], one) < 1e-5 and harness.rel(broadcast[1:2], one) < 1e-5


def test_base_model_untouched_and_bank_shared_by_clones(flux):
    """A plain run before and after PnP gives the same latent; no wrapper or hook stays on the
    model; a patched model's clones share the bank instead of copying it."""
    model, bank, target = flux
    before = custom_advanced(model, bank, target)
    pnp(model, bank, target)
    (patched,) = PnPFluxApplyInjection.execute(model, bank, INJECT).result
    custom_advanced(patched, bank, target)
    assert torch.equal(custom_advanced(model, bank, target), before)
    assert_clean(model)
    assert copy.deepcopy(bank) is bank
    clone = patched.clone()
    wrapper = clone.get_wrappers(ext.WrappersMP.DIFFUSION_MODEL, flux_patches.WRAPPER_KEY)[0]
    assert wrapper.__self__.bank is bank


def lora_like(model):
    """A weight patch of the kind LoRA loaders add, on a kept site: single block 20's linear1,
    whose V columns the default layers keep."""
    m = model.clone()
    key = "diffusion_model.single_blocks.20.linear1.weight"
    delta = torch.randn(m.model.state_dict()[key].shape, generator=torch.Generator().manual_seed(0)) * 0.05
    m.add_patches({key: (delta,)}, 1.0)
    return m


def test_lora_applies_to_inversion_and_sampling_in_either_order(flux, pnp_edit):
    """A LoRA changes the kept features and the result; applied before or after PnP Flux/Chroma/HunyuanVideo
    Apply Feature Injection it gives the same latent, and the one-node sampler gives it too."""
    model, bank, target = flux
    lora = lora_like(model)
    lora_bank = invert(lora)
    assert harness.rel(lora_bank.tables["single.20.v"], bank.tables["single.20.v"]) > 0.05  # the LoRA acts in the inversion
    (before,) = PnPFluxApplyInjection.execute(lora, lora_bank, INJECT).result
    (patched,) = PnPFluxApplyInjection.execute(model, lora_bank, INJECT).result
    edited = custom_advanced(before, lora_bank, target)
    assert torch.equal(custom_advanced(lora_like(patched), lora_bank, target), edited)
    assert torch.equal(pnp(lora, lora_bank, target), edited)
    assert harness.rel(edited, custom_advanced(lora, lora_bank, target)) > 0.05  # injection acts on the LoRA model
    assert harness.rel(edited, pnp_edit) > 0.02  # and the LoRA, in the whole edit (measured 0.044)
    assert_clean(model)


def test_reference_latents_on_both_prompts_inject(flux):
    """Flux Kontext's reference latents on the inversion's and the target's prompt: the bank
    holds their tokens too, and injection acts."""
    model, bank, target = flux
    reference_bank = invert(model, prompt=fh.with_reference(fh.conditioning(seed=5)))
    tokens = {key: (table.shape[2], reference_bank.tables[key].shape[2]) for key, table in bank.tables.items()}
    assert all(with_ref == plain + 64 for plain, with_ref in tokens.values()), tokens  # 16x16 reference: 64 tokens
    prompt = fh.with_reference(target)
    assert harness.rel(pnp(model, reference_bank, prompt), pnp(model, reference_bank, prompt, inject=0)) > 0.05


def test_stable_flow_preset_injects_image_tokens_of_double_and_single_blocks(flux):
    """stable-flow keeps k and v of image tokens only (64 of 72 tokens here), so a target
    prompt of another length works with it; rf-solver-edit (all tokens) refuses that."""
    model, _, _ = flux
    bank = invert(model, layers="stable-flow")
    assert sorted(bank.tables) == sorted(f"{s}.{b}.{t}" for s, blocks in (("double", (0, 1, 17, 18)),
                                                                         ("single", (6, 9, 34, 35, 37)))
                                         for b in blocks for t in "kv")
    assert all(t.shape[2] == 64 for t in bank.tables.values())
    longer = fh.conditioning(seed=1, tokens=12)
    injected = pnp(model, bank, longer)
    assert harness.rel(injected, pnp(model, bank, longer, inject=0)) > 0.05


def test_custom_layers_equal_to_a_preset_give_the_preset(flux, pnp_edit):
    model, _, target = flux
    custom = invert(model, custom="single.20-37:v")
    assert custom.layers == flux_layers.PRESETS["rf-solver-edit"]
    edited = pnp(model, custom, target)
    assert torch.equal(edited, pnp_edit)
    assert harness.rel(edited, pnp(model, custom, target, inject=0)) > 0.05  # and they are injected
    assert flux_layers.parse_custom("double.0,1,17,18:v,k; single.6,9,34,35,37:k,v@image") == \
        flux_layers.PRESETS["stable-flow"]


def test_another_packs_block_replace_patch_still_runs(flux, pnp_edit):
    """Another pack's ("single_block", 25) replace patch on an injected block runs, and our
    injection still happens inside it: with a pass-through patch the result is PnP's own, bit
    for bit (it would differ if the patch bypassed our hooks on block 25)."""
    model, bank, target = flux
    calls = []

    def passthrough(args, extra):
        calls.append(1)
        return extra["original_block"](args)
    other = model.clone()
    other.set_model_patch_replace(passthrough, "dit", "single_block", 25)
    edited = pnp(other, bank, target)
    assert torch.equal(edited, pnp_edit)
    assert len(calls) == 2 * STEPS
    assert harness.rel(edited, pnp(other, bank, target, inject=0)) > 0.05  # injection acts with the patch on
