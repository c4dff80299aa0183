"""Bad input gets a clear error that names the fix, before any U-Net evaluation; interrupts
stop promptly; nothing is left patched on the user's model."""
import comfy.model_management
import comfy.patcher_extension as ext
import comfy.samplers
import comfy.utils
import pytest
import torch

import harness
from comfyui_pnp.pnp_injection import PnPError
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import inversion, patches, sampling
from harness import plain_sample


@pytest.fixture(scope="module")
def sd15():
    model = harness.make_model("sd15")
    empty = harness.conditioning(seed=5)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=5, evaluations=5)
    return model, empty, trajectory, banks.capture(model, trajectory)


def assert_clean(model):
    """No PnP wrapper on the model and no hook left on any of its modules."""
    for kind in (ext.WrappersMP.OUTER_SAMPLE, ext.WrappersMP.DIFFUSION_MODEL):
        assert model.get_wrappers(kind, patches.WRAPPER_KEY) == []
    assert not any(m._forward_hooks for m in model.model.diffusion_model.modules())


def refuses(model, match, fn):
    with harness.CountCalls(model) as counter, pytest.raises(PnPError, match=match):
        fn()
    assert counter.calls == 0, "the error came after U-Net work"
    assert_clean(model)


def test_sampler_with_other_sigmas(sd15):
    model, empty, _, bank = sd15
    patched = patches.apply_injection(model, bank)
    start = sampling.start_latent(model, bank)["samples"]
    other = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 5)
    refuses(model, "Sample with the same steps and scheduler as PnP DDIM Inversion",
            lambda: plain_sample(patched, start, other, empty, empty, 7.5))
    refuses(model, "denoise 1.0", lambda: plain_sample(patched, start, bank.sigmas[2:], empty, empty, 7.5))


def test_latent_of_another_size_or_batch(sd15):
    model, empty, _, bank = sd15
    patched = patches.apply_injection(model, bank)
    refuses(model, r"feature bank was made at 128x128 px.*upscale after PnP",
            lambda: plain_sample(patched, torch.zeros(1, 4, 24, 24), bank.sigmas, empty, empty, 7.5))
    two = inversion.invert(model, harness.latent(batch=2), empty, steps=5, evaluations=5)
    bank2 = banks.capture(model, two)
    refuses(model, "holds 2 source row\\(s\\) but the latent batch is 3",
            lambda: plain_sample(patches.apply_injection(model, bank2), torch.ones(3, 4, 16, 16),
                                 bank2.sigmas, empty, empty, 7.5))


def test_bank_of_another_architecture(sd15):
    _, empty, _, bank = sd15
    other = harness.make_model("sd21")
    refuses(other, r"made on another architecture \(sd1:SD15\), not on this model \(sd2:SD20\)\. Invert and capture the source again with this model",
            lambda: patches.apply_injection(other, bank))
    wider = harness.make_model("sd15", channels=64)
    refuses(wider, "made on another architecture", lambda: sampling.pnp_sample(wider, bank, empty, empty))


@pytest.mark.parametrize("f, a", [(-0.1, 0.5), (0.8, 1.2), (float("nan"), 0.5)])
def test_fractions_outside_unit_interval(sd15, f, a):
    model, empty, _, bank = sd15
    refuses(model, r"give a value in \[0, 1\]", lambda: sampling.pnp_sample(model, bank, empty, empty, 7.5, f, a))
    refuses(model, r"give a value in \[0, 1\]", lambda: banks.capture(model, sd15[2], f, a))


def test_more_injection_than_the_bank_holds_names_the_capture_setting(sd15):
    model, empty, trajectory, _ = sd15
    small = banks.capture(model, trajectory, 0.5, 0.3)
    refuses(model, "raise `feature_steps` in PnP Capture Features to at least 0.8",
            lambda: patches.apply_injection(model, small, 0.8, 0.3))
    refuses(model, "raise `attention_steps` in PnP Capture Features to at least 0.5",
            lambda: patches.apply_injection(model, small, 0.5, 0.5))
    patches.apply_injection(model, small, 0.5, 0.3)  # within what it holds: fine, no recapture


def test_inversion_steps_below_steps(sd15):
    model, empty, _, _ = sd15
    refuses(model, "Raise `inversion_steps` to at least 10",
            lambda: inversion.invert(model, harness.latent(), empty, steps=10, evaluations=5))


def test_unknown_bank_device_before_any_evaluation(sd15):
    model, _, trajectory, _ = sd15
    refuses(model, "Unknown bank device 'gpu0'", lambda: banks.capture(model, trajectory, device="gpu0"))


def test_models_without_resblocks():
    flux = harness.make_flux()
    empty = [[torch.zeros(1, 4, 32), {}]]
    with pytest.raises(PnPError, match="no ResBlocks.*Load an SD 1.x, 2.x or SDXL checkpoint"):
        inversion.invert(flux, torch.zeros(1, 16, 8, 8), empty, steps=4, evaluations=4)


@pytest.mark.parametrize("latent, match", [
    (torch.zeros(0, 4, 16, 16), "connect VAE Encode"),
    (torch.full((1, 4, 16, 16), float("nan")), "NaN"),
])
def test_empty_or_nan_latent(sd15, latent, match):
    model, empty, _, _ = sd15
    refuses(model, match, lambda: inversion.invert(model, latent, empty, steps=5, evaluations=5))


@pytest.fixture
def interrupt_after_first_step():
    """Like the server: progress updates check for an interrupt, which arrives after step 1."""
    updates = []

    def hook(value, total, preview, node_id=None):
        updates.append((value, total))
        comfy.model_management.throw_exception_if_processing_interrupted()
        comfy.model_management.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(hook)
    yield updates
    comfy.utils.set_progress_bar_global_hook(None)
    comfy.model_management.interrupt_current_processing(False)


@pytest.mark.parametrize("stage", ["inversion", "capture", "sampling"])
def test_interrupt_stops_promptly_and_leaves_no_patch(sd15, stage, interrupt_after_first_step):
    model, empty, trajectory, bank = sd15
    run = {
        "inversion": lambda: inversion.invert(model, harness.latent(), empty, steps=5, evaluations=30),
        "capture": lambda: banks.capture(model, trajectory, 1.0, 1.0),
        "sampling": lambda: sampling.pnp_sample(model, bank, empty, empty),
    }[stage]
    with harness.CountCalls(model) as counter, pytest.raises(comfy.model_management.InterruptProcessingException):
        run()
    assert counter.calls <= 4, counter.calls  # stopped within a step, not at the end
    assert_clean(model)


def test_progress_bars_count_the_work(sd15):
    model, empty, trajectory, _ = sd15
    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        inversion.invert(model, harness.latent(), empty, steps=5, evaluations=30)
        assert seen[-1] == (30, 30) and len(seen) == 30
        seen.clear()
        banks.capture(model, trajectory, 0.5, 0.5)
        assert seen[-1] == (2, 2)  # int(5 * 0.5) source passes
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
