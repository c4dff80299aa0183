"""Bank memory: lossless by default, opt-in half precision, and a choice of device."""
import sys
from pathlib import Path

import torch

import harness
from comfyui_pnp.nodes.capture import PnPCaptureFeatures
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import inversion, sampling

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench_pnp's size formula


def test_half_precision_bank_halves_memory_and_barely_moves_the_output():
    model = harness.make_model("sd15")
    empty, target = harness.conditioning(seed=5), harness.conditioning(seed=1)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=6, evaluations=6)
    (full,) = PnPCaptureFeatures.execute(model, trajectory, 0.8, 0.5, "auto").result
    (half,) = PnPCaptureFeatures.execute(model, trajectory, 0.8, 0.5, "auto", "", None, "half", "cpu").result
    assert full.residual[4].dtype == torch.float32 and half.residual[4].dtype == torch.float16
    assert half.attention[(9, 0)].device.type == "cpu"
    kept_as_is = sum(t.numel() * t.element_size() for t in (full.start, full.path))  # float32 in both
    assert half.nbytes() - kept_as_is == (full.nbytes() - kept_as_is) // 2
    a = sampling.pnp_sample(model, full, target, empty)
    b = sampling.pnp_sample(model, half, target, empty)
    off = sampling.pnp_sample(model, full, target, empty, 7.5, 0.0, 0.0)
    assert harness.rel(b, a) < 0.01 * harness.rel(a, off)  # far below the injection's own effect


def test_default_bank_is_lossless():
    model = harness.make_model("sd15")
    empty = harness.conditioning(seed=5)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=6, evaluations=6)
    bank = banks.capture(model, trajectory)
    assert all(t.dtype == torch.float32 for t in bank.residual.values())


def test_bank_size_from_layer_shapes_equals_a_captured_bank():
    """The bench's size formula (used for the full-size figures below) against real banks of the
    shrunk SD 1.5 and SDXL test models: fails if a layer is stored twice (queries and keys) or missed."""
    from bench_pnp import bank_bytes

    for arch in ("sd15", "sdxl"):
        model = harness.make_model(arch)
        empty = harness.conditioning(arch, seed=5)
        trajectory = inversion.invert(model, harness.latent(), empty, steps=10, evaluations=10)
        bank = banks.capture(model, trajectory)
        assert bank.nbytes() == bank_bytes(arch, 128, 10, element=4, unet=harness.unet_config(arch)), arch


def test_the_paper_default_bank_fits_its_budget():
    """SD 1.5 at 512x512 and SDXL at 1024x1024 (`auto`), 50 steps, 0.8 / 0.5, 2 bytes a value."""
    from bench_pnp import bank_bytes

    assert bank_bytes("sd15", 512) <= 381 * 2**20
    assert bank_bytes("sdxl", 1024) <= 2 * 2**30


def test_the_bank_lives_on_the_intermediate_device_and_outputs_sit_where_core_samplers_put_theirs():
    import comfy.model_management as mm

    model = harness.make_model("sd15")
    empty, target = harness.conditioning(seed=5), harness.conditioning(seed=1)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=6, evaluations=6)
    assert trajectory.latents.device == mm.intermediate_device()
    offload = banks.capture(model, trajectory)
    assert all(t.device == mm.intermediate_device() for t in offload.tables.values())
    on_model = banks.capture(model, trajectory, device="model")
    assert all(t.device == mm.get_torch_device() for t in on_model.tables.values())
    out = sampling.pnp_sample(model, offload, target, empty)
    assert out.device == mm.intermediate_device()
    assert torch.equal(out, sampling.pnp_sample(model, on_model, target, empty))
    assert harness.rel(out, sampling.pnp_sample(model, offload, target, empty, 7.5, 0.0, 0.0)) > 0.10  # streamed and injected


def test_step_feed_serves_each_step_and_keeps_only_the_current_one():
    from comfyui_pnp.pnp_injection.placement import StepFeed

    table = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 1, 3)
    feed = StepFeed({"x": table})
    like = torch.zeros(1, 3, dtype=torch.float64)
    for step in range(4):
        got = feed.get(step, "x", like)
        assert got.dtype == torch.float64 and torch.equal(got, table[step].double())
        assert {s for s, _ in feed._ready} == {step}
    feed.release()
    assert feed._ready == {}
