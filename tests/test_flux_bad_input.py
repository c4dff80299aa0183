"""Flux path guard rails: bad input gets a PnPError naming the fix before any model
evaluation; interrupts stop each phase promptly and leave nothing patched; progress bars
count the steps; Flux bank files round-trip."""
import comfy.model_patcher
import comfy.supported_models as sm
import comfy.utils
import pytest
import torch

from host import run_node
import flux_harness as fh
import harness
from comfyui_pnp.nodes.bank_files import PnPSaveFeatureBank
from comfyui_pnp.nodes.flux import PnPFluxApplyInjection, PnPFluxLoadBank, PnPFluxSaveBank
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.flow import layers as flux_layers
from comfyui_pnp.pnp_injection.unet import bank as unet_banks
from comfyui_pnp.pnp_injection.unet import inversion as unet_inversion
from flux_harness import INJECT, STEPS, assert_clean, custom_advanced, invert, pnp


@pytest.fixture(scope="module")
def flux():
    model = fh.make_flux(seed=3)
    return model, invert(model), fh.conditioning(seed=1)


def refuses(model, match, fn):
    with harness.CountCalls(model) as counter, pytest.raises(PnPError, match=match):
        fn()
    assert counter.calls == 0, "the error came after model work"
    assert_clean(model)


def other_families():
    """A transformer family the flow wing does not support yet: HunyuanVideo 1.5 (the HunyuanVideo
    network under another model class and config), shrunk, built by the host's own classes."""
    import comfy.model_base
    import hunyuan_reference

    config = sm.HunyuanVideo15(hunyuan_reference.hunyuan_video_config(double=1, single=1))
    config.set_inference_dtype(torch.float32, None)
    yield comfy.model_patcher.ModelPatcher(comfy.model_base.HunyuanVideo15(config, device="cpu"),
                                           load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def test_wrong_family():
    """U-Nets and other transformer families get an error naming what is supported and the nodes that
    take the model: PnP DDIM Inversion for a U-Net, the velocity edits for another rectified-flow model
    (HunyuanVideo 1.5 is one: "not yet HunyuanVideo 1.5" was wrong once the velocity edits ran on it)."""
    sd15 = harness.make_model("sd15")
    refuses(sd15, r"run on Flux.1 dev/schnell/Kontext, Chroma, Flux.2 and HunyuanVideo; this model is SD15, a U-Net\. "
                  r"Load a Flux.1, Chroma, Flux.2 or HunyuanVideo checkpoint for these nodes, or use PnP DDIM Inversion",
            lambda: invert(sd15, fh.latent(), harness.conditioning()))
    for other in other_families():
        refuses(other, "this model is HunyuanVideo15, another rectified-flow model. Load a Flux.1, Chroma, Flux.2 or "
                       "HunyuanVideo checkpoint for these nodes, or edit this one with PnP FlowEdit, PnP UniEdit-Flow "
                       "or PnP RF-Inversion",
                lambda: invert(other))
    # and the U-Net nodes keep refusing Flux
    flux = fh.make_flux(double=1, single=1)
    with pytest.raises(PnPError, match="no ResBlocks"):
        unet_inversion.invert(flux, fh.latent(), fh.conditioning(), steps=2, evaluations=2)


def test_bad_source_latents(flux):
    model, _, _ = flux
    nan = fh.latent()
    nan[0, 0, 0, 0] = float("nan")
    refuses(model, "NaN or infinite values: re-encode", lambda: invert(model, nan))
    refuses(model, "has 4 channels but this Flux model's latents have 16: encode the source with the Flux VAE",
            lambda: invert(model, harness.latent()))


def test_bad_inject_and_layers(flux):
    model, bank, target = flux
    refuses(model, "give 0 to 6", lambda: invert(model, keep_steps=7))
    refuses(model, "give 0 to 6", lambda: pnp(model, bank, target, inject=9))
    short = invert(model, keep_steps=2)
    refuses(model, "holds 2: raise `keep_steps` in PnP Flux/Chroma/HunyuanVideo Inversion to at least 4", lambda: pnp(model, short, target, 4))
    refuses(model, "single blocks 0..37; single block 38 does not exist", lambda: invert(model, custom="single.38:v"))
    for text in ("single.20-37", "single.20:x", "double.0:k@all", "triple.1:v", "single.1:v,v"):
        refuses(model, "Cannot read the Flux layer set", lambda: invert(model, custom=text))
    refuses(model, "Unknown Flux layer preset", lambda: invert(model, layers="paper"))


def test_bank_of_another_architecture(flux):
    _, bank, target = flux
    narrower = fh.make_flux(hidden=32, heads=2, axes=[4, 6, 6])
    refuses(narrower, "made on another architecture.*Invert the source again with this model",
            lambda: pnp(narrower, bank, target))


def test_prompt_of_another_text_length(flux):
    """rf-solver-edit replaces the text tokens' values too: a target prompt of another length
    is refused before sampling, in the node and in SamplerCustomAdvanced."""
    model, bank, _ = flux
    longer = fh.conditioning(seed=1, tokens=12)
    refuses(model, "encodes to 12 text tokens but the source prompt to 8.*under 256 T5 tokens",
            lambda: pnp(model, bank, longer))
    (patched,) = PnPFluxApplyInjection.execute(model, bank, INJECT).result
    refuses(model, "encodes to 12 text tokens", lambda: custom_advanced(patched, bank, longer))


def test_reference_latents_on_one_prompt_only(flux):
    """Reference latents (Flux Kontext) add image tokens to every model call. On the target's
    prompt only, or on the inversion's only, PnP stops with a PnPError naming the site and the
    fix, in the first model call, leaving nothing patched (before: a RuntimeError from torch)."""
    model, bank, target = flux
    reference_bank = invert(model, prompt=fh.with_reference(fh.conditioning(seed=5)))
    for run in (lambda: pnp(model, bank, fh.with_reference(target)), lambda: pnp(model, reference_bank, target)):
        with harness.CountCalls(model) as counter, pytest.raises(
                PnPError, match=r"cannot inject single\.20\.v: the bank holds \d+ tokens there but this model call "
                                r"has \d+\..*same reference latents"):
            run()
        assert counter.calls == 1, "the error came after the first model call"
        assert_clean(model)


def test_latent_of_another_size_or_batch(flux):
    model, bank, target = flux
    (patched,) = PnPFluxApplyInjection.execute(model, bank, INJECT).result
    refuses(model, r"latent is 192x192 px but the feature bank was made at 128x128 px",
            lambda: custom_advanced(patched, bank, target, latent_image=fh.latent(size=24)))
    two = invert(model, torch.cat([fh.latent(), fh.latent(seed=4)]))
    (patched2,) = PnPFluxApplyInjection.execute(model, two, INJECT).result
    refuses(model, r"holds 2 source row\(s\) but the latent batch is 3",
            lambda: custom_advanced(patched2, two, target, latent_image=torch.cat([fh.latent()] * 3)))


def test_sampler_on_another_schedule(flux):
    """Other steps or denoise below 1 (a schedule not starting at the bank's sigma 1)."""
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import BasicGuider, SamplerCustomAdvanced

    from comfyui_pnp.nodes.flux import PnPFluxNoise, PnPRFSolverSampler

    model, bank, target = flux
    (patched,) = PnPFluxApplyInjection.execute(model, bank, INJECT).result
    noise, sigmas = PnPFluxNoise.execute(bank).result
    (guider,) = run_node(BasicGuider, patched, target)
    (sampler,) = PnPRFSolverSampler.execute().result
    other = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 10)
    for wrong in (other, sigmas[1:]):
        refuses(model, "same model \\(and ModelSamplingFlux\\), steps and scheduler.*the Flux feature bank's",
                lambda: run_node(SamplerCustomAdvanced, noise, guider, sampler, wrong, {"samples": fh.latent()}))


@pytest.mark.parametrize("phase", ["inversion", "sampler", "custom-advanced"])
def test_interrupt_in_each_phase(flux, phase):
    model, bank, target = flux
    (patched,) = PnPFluxApplyInjection.execute(model, bank, INJECT).result
    run = {"inversion": lambda: invert(model), "sampler": lambda: pnp(model, bank, target),
           "custom-advanced": lambda: custom_advanced(patched, bank, target)}[phase]
    calls = fh.interrupted_after(model, 3, run)
    assert calls <= 4, f"{calls} model calls after an interrupt at call 3"
    assert_clean(model)
    assert not any(m._forward_hooks for m in patched.model.diffusion_model.modules())


def test_progress_bars_count_the_steps(flux):
    model, bank, target = flux
    updates = []
    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        invert(model)
        assert updates[-1] == (STEPS, STEPS) and len(updates) == STEPS
        updates.clear()
        pnp(model, bank, target)
        assert updates[-1] == (STEPS, STEPS)
    finally:
        comfy.utils.set_progress_bar_global_hook(old)


def test_bank_files_round_trip(flux, folders):
    """A saved and loaded Flux bank samples bit-identically; U-Net banks and damaged files
    are refused with the fix."""
    model, bank, target = flux
    output, inputs = folders
    PnPFluxSaveBank.execute(bank, "flux/bank")
    (saved,) = list((output / "flux").glob("*.safetensors"))
    (loaded,) = PnPFluxLoadBank.execute(f"flux/{saved.name} [output]").result
    assert loaded.layers == bank.layers and loaded.steps_kept == bank.steps_kept
    edited = pnp(model, loaded, target)
    assert torch.equal(edited, pnp(model, bank, target))
    assert harness.rel(edited, pnp(model, loaded, target, inject=0)) > 0.05  # the loaded features are injected

    sd15 = harness.make_model("sd15")
    trajectory = unet_inversion.invert(sd15, harness.latent(), harness.conditioning(), steps=2, evaluations=2)
    PnPSaveFeatureBank.execute(unet_banks.capture(sd15, trajectory), "unet")
    (unet_file,) = output.glob("unet*.safetensors")
    with pytest.raises(PnPError, match="is a U-Net feature bank: load it with PnP Load Feature Bank"):
        PnPFluxLoadBank.execute(f"{unet_file.name} [output]")
    damaged = inputs / "damaged.safetensors"
    damaged.write_bytes(saved.read_bytes()[:-100])
    with pytest.raises(PnPError, match="not a readable Flux feature bank.*PnP Flux/Chroma/HunyuanVideo Save Feature Bank"):
        PnPFluxLoadBank.execute("damaged.safetensors")


def test_layer_presets_cite_the_official_blocks():
    assert [s.block for s in flux_layers.PRESETS["rf-solver-edit"].sites] == list(range(20, 38))
    assert flux_layers.PRESETS["rf-solver-edit"].describe() == "; ".join(f"single.{b}:v" for b in range(20, 38))
