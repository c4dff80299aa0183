"""Bank memory: lossless by default, opt-in half precision, and a choice of device."""
import sys
from pathlib import Path

import comfy.model_base
import torch

import harness
from comfyui_pnp.nodes.capture import PnPCaptureFeatures
from comfyui_pnp.pnp_injection.unet import bank as banks
from comfyui_pnp.pnp_injection.unet import inversion, sampling

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # bench_pnp's full-size architectures


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


def test_a_captured_bank_is_the_engines_estimate_plus_the_source_path():
    """The engine's own estimate (`unet.bank.estimate_bytes`, which PnP Capture Features checks against the free
    memory before any U-Net work) plus the start latent and the source's path (float32) is the captured bank's
    size, on the SD 1.5 and SDXL test models at 10 steps. Fails if a layer is stored twice (queries and keys) or
    missed, or the bank keeps a tensor the estimate (and so the memory refusal) does not count."""
    from comfyui_pnp.pnp_injection import placement

    for arch in ("sd15", "sdxl"):
        model = harness.make_model(arch)
        empty = harness.conditioning(arch, seed=5)
        trajectory = inversion.invert(model, harness.latent(), empty, steps=10, evaluations=10)
        bank = banks.capture(model, trajectory)
        estimate = banks.estimate_bytes(model, bank.layers, trajectory.latents.shape[1:], bank.feature_step_count,
                                        bank.attention_step_count, None)
        assert bank.nbytes() == estimate + placement.nbytes([bank.start, bank.path]) > 0, arch


def full_size_unet(arch: str):
    """The full-size SD 1.5 or SDXL U-Net (bench_pnp's FULL architectures) built on the meta device: every module
    and shape, no weight memory, so the engine's estimate runs on the real layer shapes in no time."""
    import comfy.model_patcher
    from bench_pnp import FULL

    config_cls, model_cls, _ = harness.ARCHS[arch]
    unet = {**harness.unet_config(arch, 320), **FULL[arch], "dtype": torch.float16}
    if unet["adm_in_channels"]:
        unet["num_classes"] = "sequential"
    config = config_cls(unet)
    config.unet_config.update(FULL[arch])
    config.set_inference_dtype(torch.float16, None)
    model = model_cls(config, model_type=comfy.model_base.ModelType.EPS, device="meta")
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def test_the_paper_default_bank_fits_its_budget():
    """SD 1.5 at 512x512 and SDXL at 1024x1024 (`auto`), 50 steps, 0.8 / 0.5: the engine's estimate on the full-size
    U-Nets, with the path and start (51 + 1 float32 latents), is README's figure to the MiB (fp16 and fp32), and in
    fp16 within 381 MiB and 2 GiB. Fails if the engine would keep more than README says, or the figures drift."""
    from comfyui_pnp.pnp_injection.unet import layers as layer_sets

    for (arch, dtype), mib in harness.README_BANK_MIB.items():
        model = full_size_unet(arch)
        assert sum(p.numel() for p in model.model.diffusion_model.parameters()) > (2.5e9 if arch == "sdxl" else 8.5e8)
        latent = (512 if arch == "sd15" else 1024) // 8
        tables = banks.estimate_bytes(model, layer_sets.resolve(model), (1, 4, latent, latent), 40, 25, dtype)
        total = tables + (50 + 2) * 4 * latent * latent * 4
        assert round(total / 2**20) == mib, (arch, dtype, total / 2**20)
        if dtype == torch.float16:
            assert total <= (381 * 2**20 if arch == "sd15" else 2 * 2**30)


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


def test_step_feed_serves_each_step_and_keeps_only_the_current_one_and_the_next():
    from comfyui_pnp.pnp_injection.streaming import StepFeed

    table = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 1, 3)
    feed = StepFeed({"x": table})
    like = torch.zeros(1, 3, dtype=torch.float64)
    for step in range(4):
        got = feed.get(step, "x", like)
        assert got.dtype == torch.float64 and torch.equal(got, table[step].double())
        assert {s for s, _ in feed._slices} == {step, step + 1} & set(range(4))
    feed.release()
    assert feed._slices == {}
