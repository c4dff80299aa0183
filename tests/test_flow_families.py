"""Chroma and Flux.2 (the Flux descendants, as the host defines them) on the flow wing: RF-Solver-Edit's
rule carried over by analogy (V of all tokens in the second half of the single-stream blocks, both
evaluations of each kept step), against an independent implementation on the diffusers transformer of
each family holding the same weights (tests/family_reference.py), on shrunk host models with the real
block counts (Chroma 19 double + 38 single, Flux.2 8 + 48)."""
import pytest
import torch

import family_reference as ref
import flux_harness
import harness
from comfyui_pnp.nodes.flux import PnPFluxInversion, PnPFluxSampler
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.flow import bank_file as flux_bank_file
from comfyui_pnp.pnp_injection.flow import kv_edit
from comfyui_pnp.pnp_injection.flow import layers as flux_layers

STEPS, INJECT, GUIDANCE = 4, 3, 5.0
MAKERS = {"chroma": ref.make_chroma, "flux2": ref.make_flux2}


@pytest.fixture(scope="module", params=list(MAKERS))
def family(request):
    model = MAKERS[request.param]()
    source = ref.latent_for(model)
    source_prompt, target = ref.conditioning_for(model, seed=5), ref.conditioning_for(model, seed=1)
    (bank,) = PnPFluxInversion.execute(model, {"samples": source}, source_prompt, STEPS, INJECT, 1.0,
                                       flux_layers.ANALOGY, "rf_solver", "official").result

    def edit(inject):
        (out,) = PnPFluxSampler.execute(model, bank, target, GUIDANCE, inject).result
        return out["samples"]
    return dict(name=request.param, model=model, source=source, source_prompt=source_prompt, target=target,
                bank=bank, edit=edit, out=edit(INJECT))


def test_the_rule_by_analogy_matches_an_independent_implementation(family):
    """Within 1e-3 of RF-Solver-Edit's algorithm on the diffusers transformer (same weights, the bank's
    schedule: the model's own `simple`), with the second half of the single blocks (measured: Chroma
    2.9e-6, Flux.2 3.5e-7); injection moves the result by more than 1% (Chroma 4.8%, Flux.2 6.0%), and
    the reference with the blocks moved by one (Flux.1's official count carried over) is caught. Fails
    if the blocks, the V columns (Flux.2's fused projection), the keys or the text tokens differ."""
    model, bank = family["model"], family["bank"]
    singles = len(model.model.diffusion_model.single_blocks)
    assert [s.block for s in bank.layers.sites] == list(range(singles // 2, singles))
    expected = ref.rf_solver_edit_by_analogy(model, family["source"], family["source_prompt"], family["target"],
                                             bank.sigmas.tolist(), INJECT, GUIDANCE)
    assert harness.rel(family["out"], expected) < 1e-3
    assert harness.rel(family["out"], family["edit"](0)) > 0.01
    moved = ref.rf_solver_edit_by_analogy(model, family["source"], family["source_prompt"], family["target"],
                                          bank.sigmas.tolist(), INJECT, GUIDANCE, blocks=range(singles // 2 + 1, singles))
    assert harness.rel(family["out"], moved) > 1e-3


def test_inject_0_is_plain_sampling_bit_for_bit(family):
    plain = flux_harness.plain_sample(family["model"], family["bank"], family["target"], GUIDANCE)
    assert torch.equal(family["edit"](0), plain.to(family["out"]))


def test_official_presets_name_the_rule_by_analogy_and_kv_edit_stays_on_flux1(family):
    model, source, prompt = family["model"], family["source"], family["source_prompt"]
    with pytest.raises(PnPError, match="no official code exists: choose 'rf-solver-edit \\(by analogy\\)'"):
        flux_harness.invert(model, source, prompt, steps=2, keep_steps=1)
    with pytest.raises(PnPError, match="KV-Edit is built for Flux.1"):
        kv_edit.invert(model, source, prompt, torch.ones(1, *source.shape[-2:]), 2, 0)


def test_a_saved_bank_keeps_its_family(family, tmp_path):
    """The file keeps the family in its architecture and every table; it refuses Flux.1's model."""
    bank = family["bank"]
    loaded = flux_bank_file.load(flux_bank_file.save(bank, tmp_path / "f.pnpfluxbank.safetensors"))
    assert loaded.architecture == bank.architecture and loaded.architecture.startswith(family["name"] + ":")
    assert all(torch.equal(loaded.tables[k], t) for k, t in bank.tables.items())
    with pytest.raises(PnPError, match="another architecture"):
        loaded.check_injection(flux_harness.make_flux(), 1)


def test_limits_interrupts_sizes_and_the_bank_estimate(family, monkeypatch):
    """Interrupts stop the inversion and the sampling at the next model call; a latent of another size
    and a bank that cannot fit are refused before any model work; the estimate is the bank's size
    (Flux.2's tokens are latent cells, its text 512 tokens)."""
    from comfyui_pnp.pnp_injection import disk, placement
    from comfyui_pnp.pnp_injection.flow import bank as flux_banks
    from comfyui_pnp.pnp_injection.flow import inversion as flux_inversion

    model, bank, source = family["model"], family["bank"], family["source"]
    text = bank.text_tokens
    assert flux_banks.estimate_bytes(model, bank.layers, source.shape, text, bank.slots) == placement.nbytes(
        bank.tables.values())

    def invert():
        return flux_inversion.invert(model, source, family["source_prompt"], STEPS, INJECT, flux_layers.ANALOGY)
    assert flux_harness.interrupted_after(model, 3, invert) == 3
    assert flux_harness.interrupted_after(model, 2, lambda: family["edit"](INJECT)) == 2
    smaller = source[..., : source.shape[-2] - 2, :]
    monkeypatch.setattr(placement, "available_bytes", lambda device: 1000)
    monkeypatch.setattr(disk, "free_bytes", lambda folder=None: 1000)  # no placement fits
    with harness.CountCalls(model) as calls:
        with pytest.raises(PnPError, match="feature bank was made at"):
            sampling_of(model, bank, family["target"], smaller)
        with pytest.raises(PnPError, match="fits in no placement.*shrink the bank"):
            invert()
    assert calls.calls == 0


def sampling_of(model, bank, prompt, latent_image):
    """The advanced route with a latent of the given size (SamplerCustomAdvanced)."""
    return flux_harness.custom_advanced(model, bank, prompt, latent_image=latent_image)
