"""The cost of a mask: PnP Sampler with a mask (half the image) against without, side by side in one process.

Full-size SD 1.5 U-Net architecture with random weights (the same speed as real weights), at a small
resolution on the CPU. One source is inverted and captured once; both sides sample the same bank with the
same prompt and steps, alternating in each round (the order swaps every round), so machine load affects
both alike. A masked run adds the regional wrappers (pnp_injection/region.py): the mask's check and
resize and the final blend with the source once per run; per model call a blend with the source's path
and the step that keeps the latent on it outside the mask (injection acts as without a mask). Prints
the ratio of the fastest of each side and the median of the per-round ratios (goal: at most 1.05), and
checks that the mask took effect (the latent outside it is the source's).

One thread by default, as the tests' server runs: on cores that other processes share, OpenMP threads
contend and single rounds scatter more (``--threads`` changes it).

    .venv/bin/python bench/bench_masks.py                       # 128x128 px, 3 steps, 7 rounds: a few minutes
    .venv/bin/python bench/bench_masks.py --size 256 --steps 6 --rounds 5 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1] / "tests"))
sys.path.insert(0, str(HERE.parent))
import conftest  # noqa: E402,F401  (ComfyUI host on sys.path, CPU mode, the pack as comfyui_pnp)
import comfy.utils  # noqa: E402
import torch  # noqa: E402

import harness  # noqa: E402
from bench_pnp import built, timed  # noqa: E402
from comfyui_pnp.pnp_injection.unet import bank as banks  # noqa: E402
from comfyui_pnp.pnp_injection.unet import inversion, sampling  # noqa: E402


def half_mask(size: int) -> torch.Tensor:
    """A MASK at the source image's pixel size (as Load Image's mask editor gives it): the right half is edited."""
    mask = torch.zeros(1, size, size)
    mask[..., size // 2:] = 1
    return mask


def run(size: int, steps: int, rounds: int) -> None:
    arch = "sd15"
    print(f"== {arch}: full-size U-Net, random weights, {size}x{size} px, {steps} steps, CPU "
          f"({torch.get_num_threads()} threads), {rounds} rounds ==")
    model, empty, target, source = built(arch, size)
    t, trajectory = timed(lambda: inversion.invert(model, source, empty, steps, steps))  # the fast inversion
    t2, bank = timed(lambda: banks.capture(model, trajectory))
    print(f"inversion {t:.1f} s, capture {t2:.1f} s (once; both sides sample this bank)")
    mask = half_mask(size)

    def unmasked():
        return sampling.pnp_sample(model, bank, target, empty, 7.5)

    def masked():
        return sampling.pnp_sample(model, bank, target, empty, 7.5, mask=mask)

    sides = {"unmasked": unmasked, "masked": masked}
    outputs = {name: fn() for name, fn in sides.items()}  # warm-up, untimed
    times = {name: [] for name in sides}
    for r in range(rounds):
        for name in (sides if r % 2 == 0 else reversed(list(sides))):
            t, _ = timed(sides[name])
            times[name].append(t)
        print(f"round {r + 1}: unmasked {times['unmasked'][-1]:.2f} s, masked {times['masked'][-1]:.2f} s, "
              f"ratio {times['masked'][-1] / times['unmasked'][-1]:.3f}")

    left, right = slice(None, size // 16), slice(size // 16, None)
    out, plain = outputs["masked"], outputs["unmasked"]
    outside = float((out[..., left] - source[..., left]).abs().max())
    inside = harness.rel(out[..., right], source[..., right])
    print(f"mask took effect: outside it, max |masked - source| = {outside:.1e} (the latent scale's float "
          f"rounding); inside, change from the source {inside:.2f} relative (unmasked edit: "
          f"{harness.rel(plain[..., right], source[..., right]):.2f})")
    fastest = min(times["masked"]) / min(times["unmasked"])
    median = statistics.median(m / u for m, u in zip(times["masked"], times["unmasked"]))
    print(f"masked / unmasked PnP sampling: {fastest:.3f} fastest of each, {median:.3f} median of the rounds "
          f"(goal <= 1.05)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="image size in pixels")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    comfy.utils.PROGRESS_BAR_ENABLED = False  # the sampler's progress bars, between the printed lines
    run(args.size, args.steps, args.rounds)


if __name__ == "__main__":
    main()
