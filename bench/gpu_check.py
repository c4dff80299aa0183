"""The GPU check: fidelity in float32 and float16, and the cost of the bank's placement.

On a CUDA machine, after `bash scripts/setup.sh --test`:

    .venv/bin/python bench/gpu_check.py                # about a minute on one modern GPU

1. Fidelity: the fast-inversion case of tests/test_fidelity.py (50 steps, SD 1.5 block
   structure, random weights) on the GPU, our nodes against the independent diffusers
   implementation, with the U-Net in float32 and in float16 (the reference in float32).
2. Placement: full-size SD 1.5 U-Net (random weights, 512x512, 50 steps, paper defaults):
   PnP-injected sampling / plain sampling, measured alternately, with the default bank
   (`offload`: system memory, streamed per step) and the GPU-resident bank (`model`), and the
   peak GPU memory of each run and of the bank held between runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch  # noqa: E402

if not torch.cuda.is_available():
    sys.exit("No CUDA device: this check runs on a GPU machine (the CPU figures come from bench/bench_pnp.py).")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import host  # noqa: E402

host.setup(cpu=False)

import harness  # noqa: E402
from comfyui_pnp.pnp_injection.unet import bank as banks  # noqa: E402
from comfyui_pnp.pnp_injection.unet import inversion, sampling  # noqa: E402


def fidelity(dtype: torch.dtype) -> tuple[float, float]:
    """(relative error against the float32 diffusers reference, injection effect)."""
    from test_fidelity import Reference, diffusers_twin, ours

    reference_model = harness.make_model("sd15", seed=3)
    reference = Reference(diffusers_twin(reference_model).cuda())
    model = harness.make_model("sd15", seed=3, dtype=dtype)
    empty, negative, target = (harness.conditioning(seed=s) for s in (5, 6, 1))
    source = harness.latent()
    timesteps = list(range(981, 0, -20))
    with torch.no_grad():
        trajectory = reference.invert(source.cuda(), empty[0][0].cuda(), sorted(timesteps))
        expected = reference.sample(trajectory, timesteps, empty[0][0].cuda(), negative[0][0].cuda(),
                                    target[0][0].cuda(), 7.5, 40, 25).cpu()
    sample = ours(model, source, empty, 50, 50)
    got = sample(target, negative)
    return harness.rel(got.float(), expected), harness.rel(got.float(), sample(target, negative, 0.0, 0.0).float())


def placement(rounds: int) -> None:
    from bench_pnp import conditioning, full_model, timed
    from harness import plain_sample

    model = full_model("sd15", torch.float16)
    empty, target = conditioning("sd15", 5, 512), conditioning("sd15", 1, 512)
    trajectory = inversion.invert(model, harness.latent(size=64), empty, 50, 50)
    for device in ("offload", "model"):
        torch.cuda.synchronize()
        bank = banks.capture(model, trajectory, device=device)
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated()
        start = sampling.start_latent(model, bank)["samples"]
        pnp, plain, peaks = [], [], []
        for _ in range(rounds):
            t, _ = timed(lambda: (plain_sample(model, start, bank.sigmas, target, empty, 7.5), torch.cuda.synchronize()))
            plain.append(t)
            torch.cuda.reset_peak_memory_stats()
            t, _ = timed(lambda: (sampling.pnp_sample(model, bank, target, empty, 7.5), torch.cuda.synchronize()))
            pnp.append(t)
            peaks.append(torch.cuda.max_memory_allocated())
        print(f"bank {device:8s} ({bank.nbytes() / 2**20:.0f} MiB, on {bank.residual[4].device}): "
              f"PnP / plain sampling {statistics.median(pnp) / statistics.median(plain):.3f}; "
              f"peak GPU memory while sampling {max(peaks) / 2**30:.2f} GiB; "
              f"GPU memory held after capture (model and bank) {held / 2**30:.2f} GiB")
        del bank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for dtype in (torch.float32, torch.float16):
        start = time.perf_counter()
        error, effect = fidelity(dtype)
        print(f"fidelity, U-Net in {str(dtype).removeprefix('torch.')}: relative error {error:.2e} "
              f"(injection effect {effect:.3f}) in {time.perf_counter() - start:.0f} s")
    placement(args.rounds)


if __name__ == "__main__":
    main()
