"""Flux PnP overhead, bank size and cost, measured side by side in one process.

A Flux.1 with the real block counts (19 double, 38 single) and a reduced hidden width
(full Flux.1 does not fit this machine), random weights, on the CPU. Injected sampling
(PnP Flux/Chroma/HunyuanVideo Sampler) and plain RF-Solver sampling of the same model, prompt, inverted latent
and steps run alternately; the ratio of their times is printed, not absolute times. The bank
size of full Flux.1 at 1024x1024 is computed from the shapes and checked against the bytes
of the bank measured here.

    .venv/bin/python bench/bench_flux.py
    .venv/bin/python bench/bench_flux.py --hidden 384 --size 32 --steps 4 --rounds 5
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
import torch  # noqa: E402

import flux_harness as fh  # noqa: E402
from comfyui_pnp.pnp_injection import placement  # noqa: E402
from comfyui_pnp.pnp_injection.flow import inversion as flux_inversion  # noqa: E402
from comfyui_pnp.pnp_injection.flow import sampling as flux_sampling  # noqa: E402

FULL = dict(hidden=3072, single_v_blocks=18, evaluations=2, steps=25, inject=20)


def bank_bytes(image: int, text_tokens: int, element: int = 2, hidden: int = FULL["hidden"],
               blocks: int = FULL["single_v_blocks"], steps: int = FULL["inject"], evaluations: int = FULL["evaluations"],
               batch: int = 1) -> int:
    """rf-solver-edit's bank: V (all tokens) of 18 single blocks at 2 evaluations of 20 steps."""
    tokens = (image // 16) ** 2 + text_tokens  # 8x VAE, 2x2 patches
    return blocks * evaluations * steps * batch * tokens * hidden * element


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256, help="hidden width (heads of 128, as Flux.1)")
    parser.add_argument("--size", type=int, default=16, help="latent size (image = 8x)")
    parser.add_argument("--text", type=int, default=32, help="text tokens")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    heads = args.hidden // 128
    model = fh.with_shift(fh.make_flux(seed=0, hidden=args.hidden, heads=heads, axes=[16, 56, 56]),
                          args.size * 8, args.size * 8)
    gen = torch.Generator().manual_seed(1)
    source_prompt, target_prompt = ([[torch.randn(1, args.text, fh.CONTEXT, generator=gen),
                                      {"pooled_output": torch.randn(1, fh.POOLED, generator=gen)}]] for _ in range(2))
    latent = fh.latent(size=args.size)
    inject = args.steps  # every step injected: the worst case for overhead

    bank = flux_inversion.invert(model, latent, source_prompt, args.steps, inject)  # also the warm-up
    times = {"plain": [], "injected": [], "inversion": []}
    for _ in range(args.rounds):  # alternating, so that machine load affects all sides alike
        times["plain"].append(timed(lambda: fh.plain_sample(model, bank, target_prompt, 5.0)))
        times["injected"].append(timed(lambda: flux_sampling.pnp_sample(model, bank, target_prompt, 5.0, inject)))
        times["inversion"].append(timed(lambda: flux_inversion.invert(model, latent, source_prompt, args.steps, inject)))

    def ratio(a: str, b: str) -> str:
        per_round = [x / y for x, y in zip(times[a], times[b])]
        return (f"{min(times[a]) / min(times[b]):.3f} (fastest of each; per-round median "
                f"{statistics.median(per_round):.3f}, rounds {', '.join(f'{r:.2f}' for r in per_round)})")

    measured = placement.nbytes(bank.tables.values())
    predicted = bank_bytes(args.size * 8, args.text, element=4, hidden=args.hidden, steps=inject)
    print(f"Flux.1 blocks 19 double / 38 single, hidden {args.hidden}, latent {args.size}x{args.size} "
          f"({(args.size // 2) ** 2} image + {args.text} text tokens), {args.steps} RF-Solver steps, inject {inject}, "
          f"{torch.get_num_threads()} threads")
    print(f"PnP-injected sampling / plain RF-Solver sampling: {ratio('injected', 'plain')}")
    print(f"inversion with feature keeping / plain sampling (same evaluations): {ratio('inversion', 'plain')}")
    print(f"bank here: {measured} bytes, from the shapes: {predicted} bytes ({'match' if measured == predicted else 'MISMATCH'})")
    for text, note in ((256, "ComfyUI pads T5 to 256 tokens"), (512, "the official code pads T5 to 512")):
        size = bank_bytes(1024, text)
        print(f"full Flux.1 bank at 1024x1024, defaults (25 steps, inject 20), bf16, {note}: "
              f"{size / 2 ** 30:.2f} GiB ({size} bytes); fp32 {2 * size / 2 ** 30:.2f} GiB")
    steps, per_step = FULL["steps"], FULL["evaluations"]
    for prompts in (1, 4):
        ours = steps * per_step * (1 + prompts)      # one inversion, then one sampling per prompt
        official = steps * per_step * 2 * prompts    # edit.py inverts again for every run
        print(f"model evaluations, {prompts} target prompt(s): ours {ours}, official {official} ({ours / official:.2f})")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.1f} GiB")


if __name__ == "__main__":
    main()
