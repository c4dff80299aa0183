"""Bank memory: lossless by default, opt-in half precision, and a choice of device."""
import torch

import harness
from comfyui_pnp.nodes.capture import PnPCaptureFeatures
from comfyui_pnp.pnp_injection import bank as banks
from comfyui_pnp.pnp_injection import inversion, sampling


def test_half_precision_bank_halves_memory_and_barely_moves_the_output():
    model = harness.make_model("sd15")
    empty, target = harness.conditioning(seed=5), harness.conditioning(seed=1)
    trajectory = inversion.invert(model, harness.latent(), empty, steps=6, evaluations=6)
    (full,) = PnPCaptureFeatures.execute(model, trajectory, 0.8, 0.5, "auto").result
    (half,) = PnPCaptureFeatures.execute(model, trajectory, 0.8, 0.5, "auto", "", None, "half", "cpu").result
    assert full.residual[4].dtype == torch.float32 and half.residual[4].dtype == torch.float16
    assert half.attention[(9, 0)].device.type == "cpu"
    start_bytes = full.start.numel() * full.start.element_size()
    assert half.nbytes() - start_bytes == (full.nbytes() - start_bytes) // 2
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
