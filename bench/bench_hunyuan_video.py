"""HunyuanVideo PnP overhead, measured side by side in one process: injected sampling (PnP Flux/Chroma/HunyuanVideo
Sampler, RF-Solver-Edit's video layers) against plain RF-Solver sampling of the same shrunk
HunyuanVideo (the real 20 double and 40 single blocks, a reduced width), clip, prompt and steps,
alternating rounds on the CPU. Prints the ratio (goal: at most 1.05) and the bank of the official
example at full size.

    .venv/bin/python bench/bench_hunyuan_video.py
    .venv/bin/python bench/bench_hunyuan_video.py --hidden 128 --frames 5 --size 16 --rounds 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import conftest  # noqa: E402,F401  (ComfyUI host on sys.path, CPU mode, the pack as comfyui_pnp)
import torch  # noqa: E402

import flux_harness as fh  # noqa: E402
import hunyuan_reference as ref  # noqa: E402
from comfyui_pnp.pnp_injection.flow import inversion as flux_inversion  # noqa: E402
from comfyui_pnp.pnp_injection.flow import sampling as flux_sampling  # noqa: E402

# The official example (Hunyuanvideo_Video_Edit/scripts/run_jeep.sh, the README's first edit): 480x480, 77
# frames -> a [1, 16, 20, 60, 60] latent, 18000 video tokens; 256 padded text tokens there; full HunyuanVideo
# hidden 3072; V of 19 single blocks at 2 evaluations of --inject_step 2 steps.
EXAMPLE = dict(video_tokens=20 * 30 * 30, text_tokens=256, hidden=3072, blocks=19, evaluations=2, inject=2)


def example_bank_bytes(inject: int = EXAMPLE["inject"], element: int = 2) -> int:
    e = EXAMPLE
    return e["blocks"] * e["evaluations"] * inject * (e["video_tokens"] + e["text_tokens"]) * e["hidden"] * element


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--frames", type=int, default=5, help="latent frames")
    parser.add_argument("--size", type=int, default=16, help="latent height and width")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = ref.make_hunyuan_video(hidden=args.hidden, heads=args.hidden // 32)
    source = ref.video_latent(frames=args.frames, size=args.size)
    source_prompt, target = ref.conditioning_for(model, seed=5), ref.conditioning_for(model, seed=1)
    bank = flux_inversion.invert(model, source, source_prompt, args.steps, args.steps, "rf-solver-edit")
    sides = {"injected": lambda: flux_sampling.pnp_sample(model, bank, target, 6.0, args.steps),
             "plain": lambda: fh.plain_sample(model, bank, target, 6.0)}
    for fn in sides.values():
        fn()  # warm-up
    times = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in (sides if r % 2 == 0 else reversed(list(sides))):
            start = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - start)
    ratios = [i / p for i, p in zip(times["injected"], times["plain"])]
    print(f"HunyuanVideo shrunk to hidden {args.hidden} (20 double + 40 single blocks), {args.frames} latent frames of "
          f"{args.size}x{args.size}, {args.steps} steps all injected, {args.rounds} rounds, 1 thread")
    print(f"injected / plain sampling: {min(times['injected']) / min(times['plain']):.3f} fastest of each, "
          f"{statistics.median(ratios):.3f} median of the rounds (goal <= 1.05)")
    print(f"bank of the official example at full size (bf16): {example_bank_bytes() / 2**30:.2f} GiB "
          f"(inject_step 2); {example_bank_bytes(5) / 2**30:.2f} GiB at inject_step 5")


if __name__ == "__main__":
    main()
