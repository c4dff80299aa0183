"""The fault catalogue: the exact text a user sees for each misuse (other tests check that
each comes before any U-Net work and leaves nothing patched)."""
import pytest
import torch

import harness
from comfyui_pnp.nodes.bank_files import PnPLoadFeatureBank
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import inversion, patches, sampling
from harness import plain_sample, rewrite, save_and_stage


@pytest.fixture(scope="module")
def setup():
    model = harness.make_model("sd15")
    empty = harness.conditioning(seed=5)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=5, evaluations=5)
    return model, empty, trajectory, banks.capture(model, trajectory, 0.5, 0.5)


def message(fn) -> str:
    with pytest.raises(PnPError) as err:
        fn()
    return str(err.value)


def test_catalogue(setup, folders):
    model, empty, trajectory, bank = setup
    patched = patches.apply_injection(model, bank, 0.4, 0.4)
    start = sampling.start_latent(model, bank)["samples"]
    ms = model.get_model_object("model_sampling")
    import comfy.samplers
    karras = comfy.samplers.calculate_sigmas(ms, "karras", 5)
    flux = harness.make_flux()
    _, staged = save_and_stage(bank, folders)
    rewrite(staged, edit_meta=lambda m: m.update(version="7"))

    catalogue = {
        "inversion steps": (
            lambda: inversion.invert(model, harness.latent(), empty, steps=10, evaluations=5),
            "`inversion_steps` (5) is below `steps` (10): the inversion must visit every sampling step. "
            "Raise `inversion_steps` to at least 10."),
        "fraction": (
            lambda: sampling.pnp_sample(model, bank, empty, empty, 7.5, 1.5),
            "`feature_injection` is 1.5; it is a fraction of the steps: give a value in [0, 1]."),
        "more than the bank holds": (
            lambda: patches.apply_injection(model, bank, 0.8, 0.4),
            "`feature_injection` 0.8 needs 4 steps of ResBlock features but the bank holds 2: raise "
            "`feature_steps` in PnP Capture Features to at least 0.8."),
        "other sigmas": (
            lambda: plain_sample(patched, start, karras, empty, empty, 7.5),
            f"The sampler runs the bank's {len(karras) - 1} steps on another schedule: set the `scheduler` (and the "
            f"model's ModelSampling shift) that the inversion used. Sample with the same steps and scheduler as PnP "
            f"DDIM Inversion, denoise 1.0 (or feed PnP Sigmas to SamplerCustomAdvanced). (The sampler's sigmas: "
            f"{', '.join(f'{float(s):.4f}' for s in karras[:3])}, ...; the feature bank's: "
            f"{', '.join(f'{float(s):.4f}' for s in bank.sigmas[:3])}, ...)"),
        "latent size": (
            lambda: plain_sample(patched, torch.zeros(1, 4, 24, 24), bank.sigmas, empty, empty, 7.5),
            "The latent is 192x192 px but the feature bank was made at 128x128 px: PnP injects into a "
            "latent of the source's size. Sample at the source's size (upscale after PnP, with the unpatched model)."),
        "architecture": (
            lambda: patches.apply_injection(harness.make_model("sd21"), bank),
            "This feature bank was made on another architecture (sd1:SD15), not on this model (sd2:SD20). "
            "Invert and capture the source again with this model."),
        "no resblocks": (
            lambda: inversion.invert(flux, torch.zeros(1, 16, 8, 8), empty, 4, 4),
            "PnP needs a U-Net with decoder ResBlocks (SD 1.x, SD 2.x, SDXL); this model is Flux, a transformer "
            "(DiT/flow) model with no ResBlocks. Load an SD 1.x, 2.x or SDXL checkpoint, or edit this model with "
            "PnP Flux/Chroma/HunyuanVideo Inversion and PnP Flux/Chroma/HunyuanVideo Sampler, or with PnP FlowEdit, "
            "PnP UniEdit-Flow or PnP RF-Inversion."),
        "nan latent": (
            lambda: inversion.invert(model, torch.full((1, 4, 16, 16), float("nan")), empty, 5, 5),
            "The source latent contains NaN or infinite values: re-encode the source image."),
        "bank name": (
            lambda: PnPLoadFeatureBank.execute("../secret.safetensors"),
            "Bank file '../secret.safetensors' is outside ComfyUI's input folder: give a name inside it, "
            "without '..' or an absolute path."),
        "bank version": (
            lambda: PnPLoadFeatureBank.execute(staged.name),
            f"{staged.name} is a U-Net feature bank of version '7'; this pack reads version 2: capture the source "
            f"again and save the bank with PnP Save Feature Bank."),
    }
    for case, (fn, expected) in catalogue.items():
        assert message(fn) == expected, case
