"""Defaults that follow the bank and the family, and runs that depart from the method said on the node.

- The flow wing's `auto` (-1): the inversion's steps and kept steps, the sampler's guidance and injected steps,
  take the official values of the bank's method on its family (pnp_injection/flow/official.py): an auto run is the
  explicit official run, bit for bit, and a FireFlow bank sampled at the defaults is FireFlow's edit (the trap of
  `inject` 20 on a one-step bank is gone).
- A warning on the node and in the log when an injected model is sampled from added noise or on a schedule that
  leaves the bank's after the injected steps; refusals of a schedule in the words of the widgets that set it.
"""
from __future__ import annotations

import logging

import comfy.samplers
import pytest
import torch

import flux_harness as fh
import harness
import hunyuan_reference as hunyuan_ref
from comfyui_pnp.nodes.flux import (PnPFluxApplyInjection, PnPFluxFireFlowInversion, PnPFluxInversion,
                                    PnPFluxSampler)
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.flow import official
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import inversion, patches, sampling

AUTO = -1


@pytest.fixture(scope="module")
def flux():
    return fh.make_flux(seed=3, double=1, single=4)


def sample(model, bank, guidance=AUTO, inject=AUTO, prompt=None):
    return PnPFluxSampler.execute(model, bank, prompt or fh.conditioning(seed=1), guidance, inject).result[0]["samples"]


def test_the_flow_nodes_default_to_auto():
    for node, inputs in ((PnPFluxInversion, ("steps", "keep_steps")), (PnPFluxFireFlowInversion, ("steps", "keep_steps")),
                         (PnPFluxSampler, ("guidance", "inject")), (PnPFluxApplyInjection, ("inject",))):
        by_id = {i.id: i for i in node.define_schema().inputs}
        for name in inputs:
            assert by_id[name].default == AUTO and by_id[name].min == AUTO, (node.__name__, name)
            assert "-1 (auto)" in by_id[name].tooltip


def test_inversion_auto_takes_the_official_counts(flux):
    """RF-Solver-Edit: 25 steps, 20 kept (edit.py lines 238-241); FireFlow: 8 steps, 1 kept (its README)."""
    (rf,) = PnPFluxInversion.execute(flux, {"samples": fh.latent()}, fh.conditioning(seed=5), AUTO, AUTO, 1.0,
                                     "rf-solver-edit", "rf_solver", "official", "single.2-3:v").result
    assert (rf.steps, rf.steps_kept) == (25, 20)
    (fire,) = PnPFluxFireFlowInversion.execute(flux, {"samples": fh.latent()}, fh.conditioning(seed=5), AUTO, AUTO,
                                               1.0, "replace_v", "official", "single.0-3:v").result
    assert (fire.steps, fire.steps_kept) == (8, 1)
    # Other step counts: auto keeps the official injected count, at most every step (7 < RF-Solver-Edit's 20).
    (short,) = PnPFluxInversion.execute(flux, {"samples": fh.latent()}, fh.conditioning(seed=5), 7, AUTO, 1.0,
                                        "rf-solver-edit", "rf_solver", "official", "single.2-3:v").result
    assert (short.steps, short.steps_kept) == (7, 7)
    (fire,) = PnPFluxFireFlowInversion.execute(flux, {"samples": fh.latent()}, fh.conditioning(seed=5), 5, AUTO,
                                               1.0, "replace_v", "official", "single.0-3:v").result
    assert (fire.steps, fire.steps_kept) == (5, 1)


def test_a_fireflow_bank_at_the_sampler_defaults_is_fireflows_edit(flux):
    """The sampler's auto guidance and inject on a FireFlow bank are FireFlow's 2 and its one kept step, bit for
    bit; guidance 5 (RF-Solver-Edit's) gives another edit, so auto is not RF-Solver-Edit's value."""
    (bank,) = PnPFluxFireFlowInversion.execute(flux, {"samples": fh.latent()}, fh.conditioning(seed=5), 4, 1, 1.0,
                                               "replace_v", "official", "single.0-3:v").result
    out = sample(flux, bank)
    assert torch.equal(out, sample(flux, bank, 2.0, 1))
    assert harness.rel(out, sample(flux, bank, 5.0, 1)) > 1e-3


def test_an_rf_solver_bank_at_the_defaults_injects_every_kept_step(flux):
    (bank,) = PnPFluxInversion.execute(flux, {"samples": fh.latent()}, fh.conditioning(seed=5), 4, 3, 1.0,
                                       "rf-solver-edit", "rf_solver", "official", "single.2-3:v").result
    out = sample(flux, bank)
    assert torch.equal(out, sample(flux, bank, 5.0, 3))
    assert harness.rel(out, sample(flux, bank, 5.0, 2)) > 1e-3


def test_hunyuan_video_auto_is_the_official_video_edit():
    """HunyuanVideo's auto guidance is the official example's 6 (run_jeep.sh line 10) and its kept steps 2 (line 9):
    an auto run equals the explicit one."""
    assert (official.settings("hunyuan_video", "rf_solver").guidance,
            official.settings("hunyuan_video", "rf_solver").inject) == (6.0, 2)
    model = hunyuan_ref.make_hunyuan_video()
    prompt, target = hunyuan_ref.conditioning_for(model, seed=5), hunyuan_ref.conditioning_for(model, seed=1)
    (bank,) = PnPFluxInversion.execute(model, {"samples": hunyuan_ref.video_latent()}, prompt, 3, AUTO, 1.0,
                                       "rf-solver-edit", "rf_solver", "official", "").result
    assert bank.steps_kept == 2
    assert torch.equal(sample(model, bank, prompt=target), sample(model, bank, 6.0, 2, prompt=target))


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "PnP" in r.getMessage()]


@pytest.fixture(scope="module")
def unet():
    model = harness.make_model("sd15")
    empty = harness.conditioning(seed=5)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=6, evaluations=6)
    bank = banks.capture(model, trajectory, 0.5, 0.5)
    return model, empty, bank, sampling.start_latent(model, bank)["samples"]


def run(model, start, sigmas, empty, noise):
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(harness.conditioning(seed=1), empty)
    guider.set_cfg(7.5)
    return guider.sample(noise, start, comfy.samplers.sampler_object("ddim"), sigmas, disable_pbar=True, seed=0)


def test_unet_added_noise_and_a_later_schedule_are_warned(unet, caplog):
    """PnP Apply Feature Injection into a sampler that adds noise, or whose schedule leaves the bank's after the
    injected steps: the run goes on, with one warning each; the bank's own run warns of nothing."""
    model, empty, bank, start = unet
    patched = patches.apply_injection(model, bank, 0.5, 0.5)
    caplog.set_level(logging.WARNING)
    run(patched, start, bank.sigmas, empty, torch.zeros_like(start))
    assert warnings(caplog) == []
    run(patched, start, bank.sigmas, empty, torch.randn_like(start))
    assert len(warnings(caplog)) == 1 and "adds noise to the start latent" in warnings(caplog)[0]
    caplog.clear()
    later = torch.cat([bank.sigmas[:4], bank.sigmas[4:-1] * 0.9, bank.sigmas[-1:]])  # injected steps 0-2 intact
    run(patched, start, later, empty, torch.zeros_like(start))
    assert len(warnings(caplog)) == 1 and "leaves the bank's schedule after the injected steps" in warnings(caplog)[0]
    caplog.clear()
    run(patched, start, bank.sigmas[:-2], empty, torch.zeros_like(start))
    steps = len(bank.sigmas) - 1
    assert f"stops after {steps - 2} of the bank's {steps} steps" in warnings(caplog)[0]


def test_flux_noise_that_is_not_the_inverted_latent_is_warned(flux, caplog):
    (bank,) = PnPFluxInversion.execute(flux, {"samples": fh.latent()}, fh.conditioning(seed=5), 4, 3, 1.0,
                                       "rf-solver-edit", "rf_solver", "official", "single.2-3:v").result
    (patched,) = PnPFluxApplyInjection.execute(flux, bank, 3).result
    caplog.set_level(logging.WARNING)
    fh.custom_advanced(patched, bank, fh.conditioning(seed=1))
    assert warnings(caplog) == []
    guider = comfy.samplers.CFGGuider(patched)
    guider.set_conds(fh.conditioning(seed=1), fh.conditioning(seed=1))
    guider.set_cfg(1.0)
    guider.sample(torch.randn_like(bank.noise), torch.zeros_like(bank.noise),
                  comfy.samplers.sampler_object("euler"), bank.sigmas, disable_pbar=True, seed=0)
    assert any("is not the bank's inverted latent" in w for w in warnings(caplog)), warnings(caplog)


def test_a_schedule_refusal_names_the_widget(unet):
    """denoise below 1 and another step count are refused in the words of the widgets that set them."""
    model, empty, bank, start = unet
    patched = patches.apply_injection(model, bank, 0.5, 0.5)
    ms = model.get_model_object("model_sampling")
    steps = len(bank.sigmas) - 1
    denoised = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 2 * steps)[-(steps + 1):]  # as KSampler's denoise
    assert len(denoised) == steps + 1
    with pytest.raises(PnPError, match="a denoise below 1.0 .* skips the steps the bank was made for"):
        run(patched, start, denoised, empty, torch.zeros_like(start))
    other = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 9)
    steps, bank_steps = len(other) - 1, len(bank.sigmas) - 1
    with pytest.raises(PnPError, match=f"runs {steps} steps but the bank was made with {bank_steps}: set `steps` to "
                                       f"{bank_steps}"):
        run(patched, start, other, empty, torch.zeros_like(start))


@pytest.mark.parametrize("node,args", [(PnPFluxInversion, ("rf-solver-edit", "rf_solver", "official", "single.2-3:v")),
                                       (PnPFluxFireFlowInversion, ("replace_v", "official", "single.0-3:v"))])
def test_the_reconstruct_check_of_the_flux_notes_gives_the_source(flux, node, args):
    """The Notes' check: the target prompt = the source prompt, inject 0, guidance 1 (the inversion's) comes back
    to the source latent, closer with more steps (this random-weight Flux curves far more than Flux.1: measured
    RF-Solver 0.21 at 8 steps, 0.041 at 25); at guidance 5 it does not (1.6)."""
    source, prompt = fh.latent(), fh.conditioning(seed=5)
    errors = {}
    for steps in (8, 25):
        (bank,) = node.execute(flux, {"samples": source}, prompt, steps, 1, 1.0, *args).result
        errors[steps] = harness.rel(sample(flux, bank, 1.0, 0, prompt=prompt), source)
    assert errors[25] < errors[8] and errors[25] < 0.1, errors
    assert harness.rel(sample(flux, bank, 5.0, 0, prompt=prompt), source) > 10 * errors[25]
