"""PnP overhead, bank size and cost, measured side by side in one process.

Full-size SD 1.5 and SDXL U-Net architectures with random weights (the same speed as real
weights), at a small resolution on the CPU. Prints ratios, not absolute times: both sides
of each ratio run alternately in this process, so machine load affects both alike.

    .venv/bin/python bench/bench_pnp.py                 # SD 1.5 and SDXL
    .venv/bin/python bench/bench_pnp.py --archs sd15 --size 256 --steps 6 --rounds 3
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import conftest  # noqa: E402,F401  (ComfyUI host on sys.path, CPU mode, the pack as comfyui_pnp)
import comfy.patcher_extension as ext  # noqa: E402
import torch  # noqa: E402

import harness  # noqa: E402
from comfyui_pnp.pnp_injection.unet import bank as banks  # noqa: E402
from comfyui_pnp.pnp_injection import passes, placement  # noqa: E402
from comfyui_pnp.pnp_injection.unet import inversion, patches, sampling  # noqa: E402
from harness import plain_sample  # noqa: E402

FULL = {
    "sd15": dict(model_channels=320, channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2], context_dim=768,
                 transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                 transformer_depth_middle=1, use_linear_in_transformer=False, num_heads=8, num_head_channels=-1,
                 adm_in_channels=None),
    "sdxl": dict(model_channels=320, channel_mult=[1, 2, 4], num_res_blocks=[2, 2, 2], context_dim=2048,
                 transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                 transformer_depth_middle=10, use_linear_in_transformer=True, num_heads=-1, num_head_channels=64,
                 adm_in_channels=2816),
}
CONTEXT = {"sd15": 768, "sdxl": 2048}


def full_model(arch: str, dtype: torch.dtype = torch.float32):
    config_cls, model_cls, _ = harness.ARCHS[arch]
    unet = harness.unet_config(arch, 320)
    unet.update(FULL[arch], dtype=dtype)
    unet["num_classes"] = "sequential" if unet["adm_in_channels"] else None
    if unet["num_classes"] is None:
        unet.pop("num_classes")
    config = config_cls(unet)
    config.unet_config.update(FULL[arch])
    config.set_inference_dtype(dtype, None)
    model = model_cls(config, model_type=harness.comfy.model_base.ModelType.EPS, device="cpu")
    harness.init_weights(model.diffusion_model, 0)
    return harness.comfy.model_patcher.ModelPatcher(model, load_device=harness.comfy.model_management.get_torch_device(),
                                                    offload_device=torch.device("cpu"))


def conditioning(arch: str, seed: int, size: int):
    gen = torch.Generator().manual_seed(seed)
    extras = {}
    if arch == "sdxl":
        extras = {"pooled_output": torch.randn(1, 1280, generator=gen), "width": size, "height": size}
    return [[torch.randn(1, 77, CONTEXT[arch], generator=gen), extras]]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bank_bytes(arch: str, image: int, steps: int = 50, feature=0.8, attention=0.5, element=2,
               unet: dict | None = None) -> int:
    """Exact bank size from the layer shapes: output block b of a U-Net with L levels and R
    res blocks per level sits at level L-1-b//(R+1), downsampled by 2**level. Each attention
    layer keeps one tensor (its input) per step; the source's path (float32, one latent per
    sigma) is kept for masked edits; `unet` overrides the full-size config."""
    from comfyui_pnp.pnp_injection.unet.layers import PAPER_SD, SDXL_STRUCTURE

    cfg = unet or FULL[arch]
    levels, per = len(cfg["channel_mult"]), cfg["num_res_blocks"][0] + 1
    depth_out = cfg["transformer_depth_output"][::-1]  # listed from output block N-1 down to 0
    layers = SDXL_STRUCTURE if arch == "sdxl" else PAPER_SD
    latent = image // 8

    def block(b):
        level = levels - 1 - b // per
        return cfg["model_channels"] * cfg["channel_mult"][level], (latent >> level) ** 2

    res = sum(c * hw for c, hw in (block(b) for b in layers.resblocks))
    attn = 0
    for b, i in layers.attention:
        c, hw = block(b)
        attn += c * hw * (depth_out[b] if i == -1 else 1)
    path = (steps + 1) * 4 * latent * latent * 4  # the source's path for masked edits, float32
    return (int(steps * feature) * res + int(steps * attention) * attn + 4 * latent * latent) * element + path


def built(arch: str, size: int):
    """The full-size model (its build time printed), an empty and a target prompt, and a source latent."""
    t, model = timed(lambda: full_model(arch))
    params = sum(p.numel() for p in model.model.diffusion_model.parameters())
    print(f"built {params / 1e6:.0f}M-parameter U-Net in {t:.0f} s")
    return model, conditioning(arch, 5, size), conditioning(arch, 1, size), harness.latent(size=size // 8)


def run(arch: str, size: int, steps: int, rounds: int) -> None:
    print(f"\n== {arch}: full-size U-Net, random weights, {size}x{size} px, {steps} steps, CPU "
          f"({torch.get_num_threads()} threads) ==")
    model, empty, target, source = built(arch, size)

    # Inversion evaluations against plain evaluations through the same machinery.
    evaluations = 2 * steps
    inv_times, eval_times = [], []
    for _ in range(rounds):
        t, trajectory = timed(lambda: inversion.invert(model, source, empty, steps, evaluations))
        inv_times.append(t / evaluations)

        def plain_loop(model_fn, x, sigmas):
            ones = x.new_ones(x.shape[0])
            for i in range(evaluations):
                model_fn(x, sigmas[i % (len(sigmas) - 1)] * ones)
            return x
        t, _ = timed(lambda: passes.run_loop(model, empty, source, trajectory.sigmas, plain_loop))
        eval_times.append(t / evaluations)
    bank = banks.capture(model, trajectory)

    # PnP-injected sampling against the same sampler unpatched, alternating.
    start = sampling.start_latent(model, bank)["samples"]
    pnp_times, plain_times = [], []
    for _ in range(rounds):
        t, _ = timed(lambda: plain_sample(model, start, bank.sigmas, target, empty, 7.5))
        plain_times.append(t)
        t, _ = timed(lambda: sampling.pnp_sample(model, bank, target, empty, 7.5))
        pnp_times.append(t)

    ratio = statistics.median(pnp_times) / statistics.median(plain_times)
    patched = patches.apply_injection(model, bank)
    plain_sample(patched, start, bank.sigmas, target, empty, 7.5)
    (injection,) = patched.get_wrappers(ext.WrappersMP.DIFFUSION_MODEL, patches.WRAPPER_KEY)
    moved = injection.__self__.feed.bytes_moved
    step_slice = placement.nbytes(t[0] for t in bank.tables.values())
    inv_ratio = statistics.median(inv_times) / statistics.median(eval_times)
    print(f"PnP sampling / plain sampling:                  {ratio:.3f}  (goal <= 1.05)")
    print(f"inversion step / plain evaluation:              {inv_ratio:.3f}  (goal <= 1.05)")
    print(f"bank placement (default 'offload'): {bank.residual[bank.layers.resblocks[0]].device}; one step's "
          f"slice {step_slice / 2**20:.2f} MiB is what moves to a GPU per injected step; moved in this run: "
          f"{moved} B{' (the U-Net runs in system memory too)' if moved == 0 else ''}")
    exact = bank_bytes(arch, size, steps, element=4)
    print(f"bank at this size (fp32): measured {bank.nbytes()} B, from shapes {exact} B")
    for image in ({"sd15": 512, "sdxl": 1024}[arch],):
        print(f"bank at {image}x{image}, 50 steps, 0.8/0.5: {bank_bytes(arch, image) / 2**20:.0f} MiB fp16, "
              f"{bank_bytes(arch, image, element=4) / 2**20:.0f} MiB fp32")
    print(f"peak resident memory of this process so far:    {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")


def cost_model() -> None:
    """U-Net row-evaluations for one source and K target prompts at the paper's defaults."""
    print("\n== cost: U-Net row-evaluations, one source, K prompts, 50 steps, tau 0.8/0.5 ==")
    inversion_evals, capture_passes = 981, int(50 * 0.8)  # 999 stops at sigma_0 (timestep 981)
    for k in (1, 4):
        ours = inversion_evals + capture_passes + k * 50 * 2
        official = 999 + k * 50 * 3
        fast = 50 + capture_passes + k * 50 * 2
        print(f"K={k}: ours {ours} (fast inversion {fast}), official {official}: ratio {ours / official:.3f} "
              f"(fast {fast / official:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["sd15", "sdxl"], choices=sorted(FULL))
    parser.add_argument("--size", type=int, default=256, help="image size in pixels")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cost_model()
    for arch in args.archs:
        run(arch, args.size, args.steps, args.rounds)


if __name__ == "__main__":
    main()
