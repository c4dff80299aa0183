"""KV-Edit on Flux (pnp_injection/flow/kv_edit.py, the KV-Edit nodes) against an independent
implementation of the official algorithm on diffusers' FluxTransformer2DModel with the same weights
(tests/kv_edit_reference.py, which runs only the foreground tokens through the network), on a
shrunk Flux.1 with the real block counts (19 double, 38 single)."""
import comfy.samplers
import pytest
import torch

import flux_harness
import harness
from kv_edit_reference import kv_edit as reference_kv_edit
from comfyui_pnp.nodes.flux_kv_edit import PnPFluxKVEditInversion, PnPFluxKVEditSampler
from comfyui_pnp.pnp_injection import PnPError, passes
from comfyui_pnp.pnp_injection.flow import bank_file as flux_bank_file
from comfyui_pnp.pnp_injection.flow import kv_edit, sampling
from comfyui_pnp.pnp_injection.flow.inversion import with_guidance

STEPS, SKIP, SIZE = 10, 2, 16


def box_mask():
    """The region to edit: rows 3-12, columns 5-11 (not aligned to the 2x2-cell tokens)."""
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, 3:13, 5:12] = 1
    return mask


@pytest.fixture(scope="module")
def kv():
    model = flux_harness.make_flux()
    source, source_prompt, target = flux_harness.latent(), flux_harness.conditioning(seed=5), flux_harness.conditioning(seed=1)
    (bank,) = PnPFluxKVEditInversion.execute(model, {"samples": source}, source_prompt, STEPS, SKIP, 1.5, "official",
                                              box_mask()).result
    (out,) = PnPFluxKVEditSampler.execute(model, bank, target, 5.5, 1.0).result
    return dict(model=model, source=source, source_prompt=source_prompt, target=target, bank=bank, out=out["samples"])


def reference(kv, **options):
    return reference_kv_edit(kv["model"], kv["source"], box_mask()[:, None], kv["source_prompt"], kv["target"],
                             steps=STEPS, skip=SKIP, inversion_guidance=1.5, guidance=5.5, attn_scale=1.0, **options)


def without_injection(kv):
    """The same editing loop (start, per-step background blend, final blend) on the unpatched model:
    no background keys and values from the bank, no attention scale."""
    conditioning = with_guidance(kv["target"], 5.5)
    guider = comfy.samplers.CFGGuider(kv["model"])
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)
    bank = kv["bank"]
    return passes.sample(guider, torch.zeros_like(kv["source"]), kv_edit.kv_sampler(bank),
                         bank.sigmas[bank.first_step:], bar=False)


def test_kv_edit_matches_the_official_algorithm(kv):
    """Within 1e-3 of the reference (measured 7.5e-7 over 10 steps, skip 2). The injection (background
    keys and values, attention scale) moves the edit by more than 5% (measured 45%), and two
    mutations of the reference are caught: the start before the authors' last fix (the inversion's
    top latent; measured 5.1e-2 away) and the keys read one step off (0.10 away)."""
    out = kv["out"]
    assert harness.rel(out, reference(kv)) < 1e-3
    plain = without_injection(kv)
    assert harness.rel(out, plain) > 0.05
    assert harness.rel(out, reference(kv, start="top")) > 1e-2
    assert harness.rel(out, reference(kv, key_shift=1)) > 1e-2


def test_outside_the_mask_is_the_source_and_inside_is_edited(kv):
    """The background is the source latent (to 1e-5: only the model-space round trip); inside the
    box the edit differs by more than 10%."""
    out, source = kv["out"], kv["source"]
    inside = box_mask()[0].bool()
    assert harness.rel(out[..., ~inside], source[..., ~inside]) < 1e-5
    assert harness.rel(out[..., inside], source[..., inside]) > 0.1


def test_the_bank_keeps_only_the_backgrounds_keys_and_values_from_the_skipped_step(kv):
    """Tables of [steps - skip, rows, background tokens, hidden] for K and V of all 19 + 38 blocks; a
    token is foreground when any of its cells is in the mask."""
    bank = kv["bank"]
    background = (torch.nn.functional.max_pool2d(box_mask()[None], 2).flatten() == 0).sum()
    assert len(bank.tables) == 2 * (19 + 38)
    assert all(t.shape[:3] == (STEPS - SKIP, 1, background) for t in bank.tables.values())
    assert bank.first_step == SKIP and int(background) == len(bank.tokens) == 64 - 24


def test_a_saved_kv_bank_edits_the_same(kv, tmp_path):
    path = flux_bank_file.save(kv["bank"], tmp_path / "kv.pnpfluxbank.safetensors")
    loaded = flux_bank_file.load(path)
    assert loaded.is_kv_edit and loaded.first_step == SKIP
    assert torch.equal(kv_edit.sample(kv["model"], loaded, kv["target"]), kv["out"])


def test_bad_input_names_the_fix(kv):
    model, source, prompt = kv["model"], kv["source"], kv["source_prompt"]
    with pytest.raises(PnPError, match="connect a mask"):
        kv_edit.invert(model, source, prompt, None, STEPS, SKIP)
    with pytest.raises(PnPError, match="multiples of 16 px"):
        kv_edit.invert(model, source[..., :15], prompt, torch.ones(1, SIZE, 15), STEPS, SKIP)
    with pytest.raises(PnPError, match="black everywhere"):
        kv_edit.invert(model, source, prompt, torch.zeros(1, SIZE, SIZE), STEPS, SKIP)
    with pytest.raises(PnPError, match="give one mask"):
        kv_edit.invert(model, source, prompt, torch.ones(2, SIZE, SIZE), STEPS, SKIP)
    with pytest.raises(PnPError, match="skip_steps"):
        kv_edit.invert(model, source, prompt, box_mask(), STEPS, STEPS)
    with pytest.raises(PnPError, match="Sample it with PnP Flux Sampler \\(KV-Edit\\)"):
        sampling.pnp_sample(model, kv["bank"], kv["target"], 5.0, 1)
    rf_bank = flux_harness.invert(model, source, steps=2, keep_steps=1)
    with pytest.raises(PnPError, match="invert the source with PnP Flux Inversion \\(KV-Edit\\)"):
        kv_edit.sample(model, rf_bank, kv["target"])


@pytest.mark.slow
def test_kv_edit_at_the_demos_defaults_matches_the_official_algorithm(kv):
    """28 steps, 4 skipped, guidance 1.5 and 5.5, attn_scale 1 (gradio_kv_edit.py lines 298, 314-317):
    measured 1.1e-6."""
    (bank,) = PnPFluxKVEditInversion.execute(kv["model"], {"samples": kv["source"]}, kv["source_prompt"], 28, 4, 1.5,
                                              "official", box_mask()).result
    (out,) = PnPFluxKVEditSampler.execute(kv["model"], bank, kv["target"], 5.5, 1.0).result
    expected = reference_kv_edit(kv["model"], kv["source"], box_mask()[:, None], kv["source_prompt"], kv["target"])
    assert harness.rel(out["samples"], expected) < 1e-3
