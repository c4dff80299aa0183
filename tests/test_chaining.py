"""PnP chained with the rest of a graph: LoRA, ControlNet, PAG and SAG, another pack's
attention patch, a hires pass. Each must keep injection on (or refuse clearly)."""
import comfy.ldm.modules.attention as attention
import comfy.patcher_extension as ext
import pytest
import torch

from host import run_node
import harness
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection import model_calls
from comfyui_pnp.pnp_injection.unet import inversion, layers, patches, sampling
from harness import Probe, injected_steps, plain_sample


@pytest.fixture(scope="module")
def setup():
    model = harness.make_model("sd15")
    empty, target = harness.conditioning(seed=5), harness.conditioning(seed=1)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=8, evaluations=8)
    return model, empty, target, banks.capture(model, trajectory)


def run(model, bank, target, empty, cfg=7.5):
    start = sampling.start_latent(model, bank)["samples"]
    return plain_sample(model, start, bank.sigmas, target, empty, cfg)


def assert_injecting(model, bank, target, empty):
    """Sampling `model` overwrites the layers at exactly the bank's steps (seen from inside)."""
    probed = model.clone()
    probe = Probe(bank)
    probed.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_probe", probe)
    run(probed, bank, target, empty)
    found = injected_steps(bank, probe, 1)
    assert found["res"] == set(range(6)) and found["q"] == set(range(4)), found


def lora_like(model, strength=1.0):
    """A weight patch of the kind LoRA loaders add (a diff on a decoder conv)."""
    m = model.clone()
    key = "diffusion_model.output_blocks.6.0.out_layers.3.weight"
    delta = torch.randn(m.model.state_dict()[key].shape, generator=torch.Generator().manual_seed(0)) * 0.05
    m.add_patches({key: (delta,)}, strength)
    return m


def test_lora_before_or_after_pnp_apply(setup):
    model, empty, target, bank = setup
    before = patches.apply_injection(lora_like(model), bank)
    after = lora_like(patches.apply_injection(model, bank))
    a, b = run(before, bank, target, empty), run(after, bank, target, empty)
    assert torch.equal(a, b)
    assert harness.rel(a, run(patches.apply_injection(model, bank), bank, target, empty)) > 1e-3  # LoRA acts
    assert_injecting(after, bank, target, empty)
    assert harness.rel(a, run(lora_like(model), bank, target, empty)) > 0.10  # and so does PnP


def test_pag_and_sag_work_together_with_pnp(setup):
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance
    from comfy_extras.nodes_sag import SelfAttentionGuidance

    model, empty, target, bank = setup
    pnp = patches.apply_injection(model, bank)
    (pag,) = run_node(PerturbedAttentionGuidance, pnp, 3.0)
    (both,) = run_node(SelfAttentionGuidance, pag, 0.5, 2.0)
    out = run(both, bank, target, empty)
    assert torch.isfinite(out).all()
    assert harness.rel(out, run(pnp, bank, target, empty)) > 1e-3  # PAG/SAG act
    assert_injecting(both, bank, target, empty)


def test_another_packs_attn1_patch_on_our_layer_keeps_running(setup):
    model, empty, target, bank = setup
    seen = []

    def foreign(q, k, v, extra_options):
        seen.append((float(extra_options["sigmas"][0]), q.clone(), k.clone()))
        return attention.optimized_attention(q, k, v, extra_options["n_heads"])

    other = model.clone()
    other.set_model_attn1_replace(foreign, "output", 4, 0)  # registered before PnP's
    pnp = patches.apply_injection(other, bank)
    run(pnp, bank, target, empty)
    assert len(seen) == bank.steps  # it ran at every step
    step_of = {round(float(s), 5): i for i, s in enumerate(bank.sigmas[:-1])}
    attn = layers.attention_module(model.model.diffusion_model, (4, 0))

    def source_queries(step, rows):
        return attn.to_q(model_calls.rows_from_source(bank.attention[(4, 0)][step], rows, 2))

    got = {step_of[round(s, 5)] for s, q, k in seen
           if step_of[round(s, 5)] < 4 and torch.equal(q, source_queries(step_of[round(s, 5)], q.shape[0]))}
    assert got == set(range(4))  # and it received PnP's queries at the injected steps


def test_hires_pass_with_the_unpatched_model_after_pnp(setup):
    model, empty, target, bank = setup
    result = sampling.pnp_sample(model, bank, target, empty)
    upscaled = torch.nn.functional.interpolate(result, scale_factor=2, mode="nearest")
    sigmas = bank.sigmas.new_tensor([1.5, 0.8, 0.3, 0.0])
    hires = plain_sample(model, upscaled, sigmas, target, empty, 7.5)
    assert hires.shape[-1] == 32 and torch.isfinite(hires).all()


def test_controlnet_on_the_target_conditioning(comfy_models):
    """Real SD 1.5-detected checkpoint and ControlNet files; ControlNet must not switch injection off."""
    import nodes as core

    model, clip, cnet = comfy_models
    encode = core.CLIPTextEncode()
    empty = encode.encode(clip, "")[0]
    target = encode.encode(clip, "a watercolor painting")[0]
    source = harness.latent(size=8)
    trajectory = inversion.invert(model, source, empty, steps=5, evaluations=5)
    bank = banks.capture(model, trajectory)
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    controlled, controlled_neg = run_node(core.ControlNetApplyAdvanced, target, empty, cnet, hint, 1.0, 0.0, 1.0)[:2]
    with_cn = sampling.pnp_sample(model, bank, controlled, controlled_neg)
    without_cn = sampling.pnp_sample(model, bank, target, empty)
    assert harness.rel(with_cn, without_cn) > 1e-3  # the ControlNet acts
    patched = patches.apply_injection(model, bank)
    probe = Probe(bank)
    patched.add_wrapper_with_key(ext.WrappersMP.DIFFUSION_MODEL, "test_probe", probe)
    run(patched, bank, controlled, controlled_neg)
    found = injected_steps(bank, probe, 1)
    assert found["res"] == set(range(4)) and found["q"] == set(range(2)), found  # and PnP still injects


@pytest.fixture(scope="module")
def comfy_models():
    import comfy.controlnet
    import comfy.sd

    from checkpoint_factory import cached_checkpoint

    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(cached_checkpoint("sd15")), output_vae=False)
    cnet = comfy.controlnet.load_controlnet(str(cached_checkpoint("sd15-controlnet")))
    return model, clip, cnet
