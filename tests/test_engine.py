"""The PnP engine on real ComfyUI models: round trip, fractions 0, injected steps and rows, isolation."""
import copy

import comfy.patcher_extension as ext
import pytest
import torch

import harness
from harness import Probe, injected_steps, plain_sample
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import inversion, patches, sampling


@pytest.fixture(scope="module")
def sd15():
    model = harness.make_model("sd15")
    empty = harness.conditioning(seed=5)
    target = harness.conditioning(seed=1)
    source = harness.latent()
    trajectory = inversion.invert(model, source, empty, steps=10, evaluations=10)
    bank = banks.capture(model, trajectory, 0.8, 0.5)
    return dict(model=model, empty=empty, target=target, source=source, trajectory=trajectory, bank=bank)


def test_round_trip_returns_the_source_and_improves_with_inversion_steps():
    """Invert, then sample back with the inversion prompt, cfg 1, no injection.
    Fails if the inversion does not walk the sampler's ODE backwards (e.g. reading the
    input at the wrong level). With 5 sampling steps the error floor is the sampler's own
    discretisation error. Exact numbers are checked against a reference in test_fidelity."""
    model = harness.make_model("sd15", output_gain=0.03)
    empty = harness.conditioning(seed=5)
    source = harness.latent()
    errors = []
    for evaluations in (5, 25, 60):  # measured: 0.048, 0.026, 0.023
        trajectory = inversion.invert(model, source, empty, steps=5, evaluations=evaluations)
        bank = banks.capture(model, trajectory, 0.0, 0.0)
        back = sampling.pnp_sample(model, bank, empty, empty, 1.0, 0.0, 0.0)
        errors.append(harness.rel(back, source))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.03, errors


def test_v_prediction_inverts_and_reconstructs():
    """v-prediction: eps comes from the denoised output. A random v-model's ODE is curved, so
    the round trip is measured on matched grids (inversion steps = sampling steps), where
    it must shrink with the step count; treating v as eps fails this by far."""
    model = harness.make_model("sd21", v_prediction=True, output_gain=0.03)
    empty = harness.conditioning(seed=5)
    source = harness.latent()
    errors = []
    for steps in (5, 20):
        trajectory = inversion.invert(model, source, empty, steps=steps, evaluations=steps)
        back = sampling.pnp_sample(model, banks.capture(model, trajectory, 0, 0), empty, empty, 1.0, 0, 0)
        errors.append(harness.rel(back, source))
    assert errors[1] < errors[0] / 4 and errors[1] < 0.02, errors


def test_fractions_zero_equal_the_plain_sampler(sd15):
    start = sampling.start_latent(sd15["model"], sd15["bank"])["samples"]
    plain = plain_sample(sd15["model"], start, sd15["bank"].sigmas, sd15["target"], sd15["empty"], 7.5)
    pnp = sampling.pnp_sample(sd15["model"], sd15["bank"], sd15["target"], sd15["empty"], 7.5, 0.0, 0.0)
    assert torch.equal(pnp, plain)


def test_injection_changes_the_output_meaningfully(sd15):
    off = sampling.pnp_sample(sd15["model"], sd15["bank"], sd15["target"], sd15["empty"], 7.5, 0.0, 0.0)
    on = sampling.pnp_sample(sd15["model"], sd15["bank"], sd15["target"], sd15["empty"], 7.5)
    assert harness.rel(on, off) > 0.10


@pytest.mark.parametrize("cfg, batch, bank_batch, entries", [
    (7.5, 1, 1, 1),   # cond + uncond chunks
    (1.0, 1, 1, 1),   # cfg 1: one chunk
    (7.5, 2, 1, 1),   # a bank of 1 broadcast to a batch of 2
    (7.5, 2, 2, 1),   # a bank of 2 row by row
    (7.5, 1, 1, 2),   # two positive conditioning entries: three chunks
])
def test_injection_happens_at_exactly_the_spec_steps_in_every_row(sd15, cfg, batch, bank_batch, entries):
    model, empty = sd15["model"], sd15["empty"]
    if bank_batch == 1:  # the module's source (harness.latent()): its bank, inverted and captured as below
        bank = sd15["bank"]
    else:
        trajectory = inversion.invert(model, harness.latent(batch=bank_batch), empty, steps=10, evaluations=10)
        bank = banks.capture(model, trajectory, 0.8, 0.5)
    patched = patches.apply_injection(model, bank, 0.6, 0.3)  # fewer than the bank holds
    probe = Probe(bank)
    patched.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_probe", probe)
    positive = harness.conditioning(seed=1)
    if entries == 2:
        positive = positive + harness.conditioning(seed=3)
    start = sampling.start_latent(model, bank)["samples"].expand(batch, -1, -1, -1).contiguous()
    plain_sample(patched, start, bank.sigmas, positive, empty, cfg)
    assert {c[1] for c in probe.calls} == {(1 if cfg == 1.0 else 1 + entries)}
    found = injected_steps(bank, probe, bank_batch)
    assert found["res"] == set(range(6))
    assert found["q"] == found["k"] == set(range(3))
    assert found["v"] == set()  # values stay the target's own


def test_base_model_is_untouched_and_clones_share_the_bank(sd15):
    model, bank = sd15["model"], sd15["bank"]
    start = sampling.start_latent(model, bank)["samples"]
    before = plain_sample(model, start, bank.sigmas, sd15["target"], sd15["empty"], 7.5)
    sampling.pnp_sample(model, bank, sd15["target"], sd15["empty"], 7.5)
    after = plain_sample(model, start, bank.sigmas, sd15["target"], sd15["empty"], 7.5)
    assert torch.equal(before, after)
    assert model.get_all_wrappers(ext.WrappersMP.DIFFUSION_MODEL) == []
    unet = model.model.diffusion_model
    assert not any(m._forward_hooks for m in unet.modules())
    assert "patches" not in model.model_options.get("transformer_options", {})  # no attn1 patch left

    patched = patches.apply_injection(model, bank)
    downstream = patched.clone()  # e.g. a LoRA loader after PnP Apply (clone deep-copies model_options)
    (injector,) = downstream.get_wrappers(ext.WrappersMP.DIFFUSION_MODEL, patches.WRAPPER_KEY)
    assert injector.__self__.bank is bank
    ptr = bank.residual[4].data_ptr()
    assert injector.__self__.bank.residual[4].data_ptr() == ptr
    assert copy.deepcopy(bank) is bank
