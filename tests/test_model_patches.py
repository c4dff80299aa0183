"""PnP with ComfyUI's own model-patch nodes in the chain, as users build it.

Inversion and capture evaluate the network unguided: sampler-level guidance hooks (PAG, SAG,
RescaleCFG) never run there, while patches that change the network (FreeU) do. Patches that
change attention's tokens (HyperTile, ToMe) compose with injection in either order; a patch
that changes the U-Net's inner shapes at injected steps stops with a PnPError naming it.
"""
import random

import comfy.patcher_extension as ext
import pytest
import torch
from comfy_extras.nodes_freelunch import FreeU
from comfy_extras.nodes_hypertile import HyperTile
from comfy_extras.nodes_model_advanced import RescaleCFG
from comfy_extras.nodes_model_downscale import PatchModelAddDownscale
from comfy_extras.nodes_pag import PerturbedAttentionGuidance
from comfy_extras.nodes_sag import SelfAttentionGuidance
from comfy_extras.nodes_tomesd import TomePatchModel

from host import run_node
import harness
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import inversion, patches, sampling
from harness import Probe, injected_steps, plain_sample

STEPS = 8


@pytest.fixture(scope="module")
def plain():
    model = harness.make_model("sd15")
    empty = harness.conditioning(seed=5)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=STEPS, evaluations=2 * STEPS)
    return model, empty, trajectory, banks.capture(model, trajectory)


def same_bank(a, b) -> bool:
    return all(torch.equal(t, b.tables[key]) for key, t in a.tables.items()) and torch.equal(a.start, b.start)


GUIDANCE_PATCHES = {
    "PAG": lambda m: run_node(PerturbedAttentionGuidance, m, 3.0)[0],
    "SAG": lambda m: run_node(SelfAttentionGuidance, m, 0.5, 2.0)[0],
    "RescaleCFG": lambda m: run_node(RescaleCFG, m, 0.7)[0],
}


@pytest.mark.parametrize("name", sorted(GUIDANCE_PATCHES))
def test_guidance_hooks_never_run_in_inversion_or_capture(plain, name):
    """Fails if a post-CFG pass runs inside inversion (PAG moved the latent by 20%) or an extra
    pass at the same sigma overwrites the recorded step (SAG moved the bank by 87%)."""
    model, empty, trajectory, bank = plain
    guided = GUIDANCE_PATCHES[name](model)
    inverted = inversion.invert(guided, harness.latent(), empty, steps=STEPS, evaluations=2 * STEPS)
    assert torch.equal(inverted.latents, trajectory.latents)
    assert same_bank(banks.capture(guided, trajectory), bank)
    # ... while in guided sampling the hook acts as the user asked.
    start = sampling.start_latent(model, bank)["samples"]
    target = harness.conditioning(seed=1)
    assert harness.rel(plain_sample(guided, start, bank.sigmas, target, empty, 7.5),
                       plain_sample(model, start, bank.sigmas, target, empty, 7.5)) > 5e-3  # PAG 0.014, SAG 0.08, RescaleCFG 0.72


def test_network_patches_apply_in_inversion_and_capture(plain):
    """FreeU changes the network: the trajectory and the bank are FreeU's (they differ from the
    plain model's, and adding a guidance hook on top changes nothing)."""
    model, empty, trajectory, bank = plain
    freeu = run_node(FreeU, model, 1.3, 1.4, 0.9, 0.2)[0]
    with_freeu = inversion.invert(freeu, harness.latent(), empty, steps=STEPS, evaluations=2 * STEPS)
    assert harness.rel(with_freeu.latents, trajectory.latents) > 1e-3
    assert harness.rel(banks.capture(freeu, with_freeu).residual[4], banks.capture(model, with_freeu).residual[4]) > 1e-3
    guided = GUIDANCE_PATCHES["PAG"](freeu)
    again = inversion.invert(guided, harness.latent(), empty, steps=STEPS, evaluations=2 * STEPS)
    assert torch.equal(again.latents, with_freeu.latents)


def test_an_extra_evaluation_at_a_recorded_step_neither_overwrites_nor_multiplies(plain):
    """A wrapper that evaluates the network twice per call (the second time on another input)
    must leave exactly the first evaluation's one source row per step in the bank."""
    model, empty, trajectory, bank = plain

    def twice(executor, x, *args, **kwargs):
        out = executor(x, *args, **kwargs)
        executor(x * 0.5 + 1.0, *args, **kwargs)
        return out

    doubled = model.clone()
    doubled.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_twice", twice)
    got = banks.capture(doubled, trajectory)
    assert same_bank(got, bank)
    assert got.residual[4].shape[1] == 1 and got.attention[(4, 0)].shape[1] == 1


def test_inversion_and_capture_of_a_pnp_patched_model_use_the_plain_network(plain):
    model, empty, trajectory, bank = plain
    patched = patches.apply_injection(model, bank)
    assert torch.equal(inversion.invert(patched, harness.latent(), empty, steps=STEPS, evaluations=2 * STEPS).latents,
                       trajectory.latents)
    assert same_bank(banks.capture(patched, trajectory), bank)


# --- patches that change attention's tokens ---------------------------------------------------

TOKEN_PATCHES = {
    "HyperTile": lambda m: run_node(HyperTile, m, 32, 2, 0, False)[0],
    "ToMe": lambda m: run_node(TomePatchModel, m, 0.5)[0],
}


def seeded_run(model, bank, target, empty):
    random.seed(0)  # HyperTile picks its tiles with Python's random,
    torch.manual_seed(0)  # ToMe its matches with torch's
    return plain_sample(model, sampling.start_latent(model, bank)["samples"], bank.sigmas, target, empty, 7.5)


@pytest.mark.parametrize("name", sorted(TOKEN_PATCHES))
def test_token_changing_patches_compose_before_or_after_pnp(plain, name):
    """Fails with an opaque crash if PnP hands attention tensors of the untiled/unmerged shape,
    or silently if injection stops once the patch is in the chain."""
    model, empty, _, bank = plain
    target = harness.conditioning(seed=1)
    token_patch = TOKEN_PATCHES[name]
    before = seeded_run(patches.apply_injection(token_patch(model), bank), bank, target, empty)
    after = seeded_run(token_patch(patches.apply_injection(model, bank)), bank, target, empty)
    assert torch.isfinite(before).all()
    assert torch.equal(before, after)
    alone = seeded_run(token_patch(model), bank, target, empty)
    assert harness.rel(before, alone) > 0.10  # injection still acts
    assert harness.rel(before, seeded_run(patches.apply_injection(model, bank), bank, target, empty)) > 0.05  # and so does the patch (HyperTile 0.80, ToMe 0.27)

    probe = Probe(bank)
    probed = token_patch(patches.apply_injection(model, bank))
    probed.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_probe", probe)
    seeded_run(probed, bank, target, empty)
    assert injected_steps(bank, probe, 1)["res"] == set(range(int(STEPS * 0.8)))


def test_an_attention_patch_put_before_pnps_is_refused_before_any_evaluation(plain):
    model, empty, _, bank = plain

    def tiles_first(q, k, v, extra_options):
        return q, k, v

    patched = patches.apply_injection(model, bank)
    chain = patched.model_options["transformer_options"]["patches"]
    chain["attn1_patch"] = [tiles_first] + chain["attn1_patch"]
    start = sampling.start_latent(model, bank)["samples"]
    with harness.CountCalls(model) as counter, pytest.raises(PnPError, match="tiles_first.*was put before PnP's"):
        plain_sample(patched, start, bank.sigmas, empty, empty, 7.5)
    assert counter.calls == 0


def test_a_model_whose_attention_patches_were_replaced_is_refused(plain):
    """Attention injection never silently switches off."""
    model, empty, _, bank = plain
    patched = patches.apply_injection(model, bank)
    patched.model_options["transformer_options"]["patches"]["attn1_patch"] = []
    start = sampling.start_latent(model, bank)["samples"]
    with harness.CountCalls(model) as counter, pytest.raises(PnPError, match="attention patch is no longer on this model"):
        plain_sample(patched, start, bank.sigmas, empty, empty, 7.5)
    assert counter.calls == 0


def test_a_patch_that_changes_inner_shapes_gets_an_error_naming_the_layer_and_the_patch(plain):
    """Kohya Deep Shrink halves the resolution inside the U-Net at early steps: the ResBlock the
    bank feeds no longer has the bank's shape. Never an opaque crash inside torch."""
    model, empty, _, bank = plain
    shrink = run_node(PatchModelAddDownscale, model, 1, 2.0, 0.0, 0.35, True, "bicubic", "bicubic")[0]
    patched = patches.apply_injection(shrink, bank)
    start = sampling.start_latent(model, bank)["samples"]
    with pytest.raises(PnPError, match=r"PnP cannot inject the ResBlock of output block 4.*input_block_patch"):
        plain_sample(patched, start, bank.sigmas, empty, empty, 7.5)
