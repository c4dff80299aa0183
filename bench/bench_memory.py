"""Peak memory of inversion and capture beyond the bank they keep, for each family.

Each run is a fresh process (peak resident memory only grows): the same inversion (Flux) or
source passes of the capture (U-Net) once keeping nothing and once keeping the default layers, on a full-size
architecture with random weights on the CPU. What keeping a bank adds to the peak is divided
by the bank's bytes: 1.00 means the bank exists once and nothing else grows; the target is at
most 1.3.

    .venv/bin/python bench/bench_memory.py
    .venv/bin/python bench/bench_memory.py --family flux --size 64
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()


def child(family: str, size: int, steps: int, keep: bool) -> dict:
    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    sys.path.insert(0, str(HERE.parent))
    import conftest  # noqa: F401  (ComfyUI host on sys.path, CPU mode, the pack as comfyui_pnp)
    import torch

    from comfyui_pnp.pnp_injection import placement
    torch.set_num_threads(2)
    if family == "unet":
        import bench_pnp
        from comfyui_pnp.pnp_injection.passes import run_loop
        from comfyui_pnp.pnp_injection.unet import bank as banks
        from comfyui_pnp.pnp_injection.unet import inversion
        model = bench_pnp.full_model("sd15")
        empty = bench_pnp.conditioning("sd15", 5, size * 8)
        gen = torch.Generator().manual_seed(2)
        trajectory = inversion.invert(model, torch.randn(1, 4, size, size, generator=gen), empty, steps, steps)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if keep:
            bank = banks.capture(model, trajectory, 0.8, 0.5, device="cpu")
            kept = placement.nbytes(bank.tables.values())
        else:  # the same source passes, keeping nothing
            passes_made = int(steps * 0.8)

            def loop(model_fn, x, sigmas):
                ones = x.new_ones(x.shape[0])
                for i in range(passes_made):
                    model_fn(trajectory.latents[i].to(x), sigmas[i] * ones)
                return x
            run_loop(model, empty, torch.zeros_like(trajectory.latents[0]), trajectory.sigmas[: passes_made + 1], loop)
            kept = 0
    else:
        import flux_harness as fh
        from comfyui_pnp.pnp_injection.flow import inversion as flux_inversion
        model = fh.make_flux(seed=0, hidden=1024, heads=8, axes=[16, 56, 56])
        gen = torch.Generator().manual_seed(1)
        prompt = [[torch.randn(1, 64, fh.CONTEXT, generator=gen), {"pooled_output": torch.randn(1, fh.POOLED, generator=gen)}]]
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        bank = flux_inversion.invert(model, fh.latent(size=size), prompt, steps, steps if keep else 0)
        kept = placement.nbytes(bank.tables.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak": peak, "base": base, "bank": kept}


def measure(family: str, size: int, steps: int) -> None:
    runs = {}
    for keep in (False, True):
        out = subprocess.run([sys.executable, str(HERE), "--child", family, "--size", str(size), "--steps", str(steps)]
                             + (["--keep"] if keep else []), capture_output=True, text=True, check=True)
        runs[keep] = json.loads(out.stdout.strip().splitlines()[-1])
    added = runs[True]["peak"] - runs[False]["peak"]
    bank = runs[True]["bank"]
    print(f"{family}: bank {bank / 2**20:,.0f} MiB; peak with it {runs[True]['peak'] / 2**20:,.0f} MiB, keeping "
          f"nothing {runs[False]['peak'] / 2**20:,.0f} MiB; added peak / bank = {added / bank:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["unet", "flux", "both"], default="both")
    parser.add_argument("--size", type=int, default=0, help="latent size (default: 64 for the U-Net, 48 for Flux)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--child", choices=["unet", "flux"])
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size, args.steps, args.keep)))
        return
    for family in (["unet", "flux"] if args.family == "both" else [args.family]):
        measure(family, args.size or (64 if family == "unet" else 48), args.steps)


if __name__ == "__main__":
    main()
