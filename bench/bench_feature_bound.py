"""The largest value a feature bank holds, against the bound a loaded bank file must stay within
(pnp_injection/bank_integrity.py VALUE_BOUND, float16's largest finite value, 65504).

Full-size architectures with random weights at a real initialisation's scale (tests/harness.py
init_weights, flux_harness.init_flux_weights: unit norms, fan-in scaled linears and convs):

- SD 1.5: the full U-Net (320 channels, [1, 2, 4, 4]), the fast inversion and a capture keeping every
  decoder ResBlock and self-attention input at every step (custom layers).
- Flux.1 and HunyuanVideo at their real width (hidden 3072, 24 heads, T5/llama context 4096, pooled
  768), with a few blocks (the full block stacks do not fit this machine in float32), inverted with
  RF-Solver keeping q, k and v of every block at every step.

Prints, per model, the largest |value| of the feature tables and of the latents (inverted noise, the
source's path) and the margin to the bound. Random weights lack the outlier channels trained models
grow, so the margin is the check's slack, not a proof; the float16 argument (README, Guard rails) is.

    .venv/bin/python bench/bench_feature_bound.py                  # all three, 256x256 px, 4 steps
    .venv/bin/python bench/bench_feature_bound.py --models sd15 --size 512
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "tests"))
sys.path.insert(0, str(HERE.parent))
import conftest  # noqa: E402,F401  (ComfyUI host on sys.path, CPU mode, the pack as comfyui_pnp)
import comfy.model_base  # noqa: E402
import comfy.supported_models as sm  # noqa: E402
import torch  # noqa: E402

import flux_harness as fh  # noqa: E402
import harness  # noqa: E402
import hunyuan_reference  # noqa: E402
from bench_pnp import conditioning, full_model  # noqa: E402
from comfyui_pnp.pnp_injection.bank_integrity import VALUE_BOUND  # noqa: E402
from comfyui_pnp.pnp_injection.flow import inversion as flow_inversion  # noqa: E402
from comfyui_pnp.pnp_injection.unet import bank as unet_banks  # noqa: E402
from comfyui_pnp.pnp_injection.unet import inversion as unet_inversion  # noqa: E402

WIDTH = dict(hidden=3072, heads=24, axes=[16, 56, 56])  # Flux.1's and HunyuanVideo's
TEXT, POOLED, TEXT_TOKENS = 4096, 768, 256               # T5-XXL / llava-llama-3 width, CLIP-L pooled, T5 padding


def largest(tensors) -> float:
    return max(float(t.abs().max()) for t in tensors if t.numel())


def report(name: str, tables, latents, seconds: float) -> None:
    top = largest(tables)
    print(f"{name}: largest |feature| {top:.1f}, largest |latent| {largest(latents):.1f}; bound {VALUE_BOUND:.0f} is "
          f"{VALUE_BOUND / top:,.0f}x the largest feature ({seconds:.0f} s)")


def sd15(size: int, steps: int) -> None:
    started = time.perf_counter()
    model = full_model("sd15")
    empty = conditioning("sd15", 5, size)
    source = harness.latent(size=size // 8)
    trajectory = unet_inversion.invert(model, source, empty, steps, steps)
    every = "res:output.0-11; attn:output.3-11@*"  # every decoder ResBlock and self-attention of SD 1.5
    bank = unet_banks.capture(model, trajectory, 1.0, 1.0, custom_layers=every)
    report(f"SD 1.5 full U-Net, {size}x{size} px, {steps} steps, every decoder layer", bank.tables.values(),
           [bank.start, bank.path], time.perf_counter() - started)


def flow(family: str, size: int, steps: int, double: int, single: int) -> None:
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(5)
    prompt = [[torch.randn(1, TEXT_TOKENS, TEXT, generator=gen), {"pooled_output": torch.randn(1, POOLED, generator=gen)}]]
    if family == "flux1":
        config = {**fh.flux_config(double=double, single=single, **WIDTH), "context_in_dim": TEXT, "vec_in_dim": POOLED}
        model = fh.patcher_of(sm.Flux(config), comfy.model_base.Flux, 0)
        source, label = fh.latent(size=size // 8), "Flux.1"
    else:
        model = hunyuan_reference.make_hunyuan_video(double=double, single=single, context=TEXT, pooled=POOLED, **WIDTH)
        source, label = hunyuan_reference.video_latent(frames=3, size=size // 8), "HunyuanVideo"
    layers = f"double.0-{double - 1}:q,k,v; single.0-{single - 1}:q,k,v"
    bank = flow_inversion.invert(model, source, prompt, steps, steps, custom_layers=layers, scheduler="simple")
    report(f"{label} at full width, {double} double + {single} single blocks, {size}x{size} px, {steps} steps, "
           f"q, k, v of every block", bank.tables.values(), [bank.noise, bank.path], time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sd15", "flux1", "hunyuan_video"],
                        choices=["sd15", "flux1", "hunyuan_video"])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--double", type=int, default=2, help="double blocks of the full-width flow models")
    parser.add_argument("--single", type=int, default=2, help="single blocks of the full-width flow models")
    args = parser.parse_args()
    torch.manual_seed(0)
    for name in args.models:
        if name == "sd15":
            sd15(args.size, args.steps)
        else:
            flow(name, args.size, args.steps, args.double, args.single)


if __name__ == "__main__":
    main()
