"""FireFlow against RF-Solver-Edit, each at its recommended settings, measured side by side in one run.

A Flux.1 with the real block counts (19 double, 38 single) and a reduced hidden width, random
weights, on the CPU. Alternating rounds time a whole edit (inversion, then sampling) of FireFlow
(8 steps, inject 1, guidance 2: the official README.md lines 168-176) and of RF-Solver-Edit
(25 steps, inject 20, guidance 5: its edit.py defaults), count their model evaluations, and time
FireFlow's injected sampling against plain FireFlow sampling of the same inverted latent. Ratios
are printed, not absolute times. The bank sizes of full Flux.1 at 1024x1024 follow from the
shapes, checked against the banks measured here.

    .venv/bin/python bench/bench_fireflow.py
    .venv/bin/python bench/bench_fireflow.py --hidden 384 --size 32 --rounds 5
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
from comfyui_pnp.pnp_injection import placement  # noqa: E402
from comfyui_pnp.pnp_injection.flow import inversion as flux_inversion  # noqa: E402
from comfyui_pnp.pnp_injection.flow import layers as flux_layers  # noqa: E402
from comfyui_pnp.pnp_injection.flow import sampling as flux_sampling  # noqa: E402
from comfyui_pnp.pnp_injection.flow import solvers  # noqa: E402
from comfyui_pnp.pnp_injection.flow.bank import slot_count  # noqa: E402

METHODS = {  # solver, layers, steps, inject (= keep_steps), guidance
    "FireFlow": ("fireflow", "fireflow", 8, 1, 2.0),
    "RF-Solver-Edit": ("rf_solver", "rf-solver-edit", 25, 20, 5.0),
}


def full_bank_bytes(method: str, text_tokens: int = 256, image: int = 1024, hidden: int = 3072, element: int = 2) -> int:
    """The bank of full Flux.1 (bf16) at `image` px: every site tensor's tokens by the width, per slot."""
    solver, preset, steps, inject, _ = METHODS[method]
    tokens = (image // 16) ** 2 + text_tokens  # 8x VAE, 2x2 patches; the sites hold all tokens
    tensors = len(flux_layers.PRESETS[preset].keys())
    return tensors * slot_count(solver, steps, inject) * tokens * hidden * element


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256, help="hidden width (heads of 128, as Flux.1)")
    parser.add_argument("--size", type=int, default=16, help="latent size (image = 8x)")
    parser.add_argument("--text", type=int, default=32, help="text tokens")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = fh.make_flux(seed=0, hidden=args.hidden, heads=args.hidden // 128, axes=[16, 56, 56])
    gen = torch.Generator().manual_seed(1)
    source_prompt, target_prompt = ([[torch.randn(1, args.text, fh.CONTEXT, generator=gen),
                                      {"pooled_output": torch.randn(1, fh.POOLED, generator=gen)}]] for _ in range(2))
    latent = fh.latent(size=args.size)
    calls = {"n": 0}
    model.model.diffusion_model.register_forward_pre_hook(lambda module, inputs: calls.update(n=calls["n"] + 1))

    banks, counts = {}, {}

    def edit(method):
        solver, preset, steps, inject, guidance = METHODS[method]
        calls["n"] = 0
        banks[method] = flux_inversion.invert(model, latent, source_prompt, steps, inject, preset, solver=solver)
        flux_sampling.pnp_sample(model, banks[method], target_prompt, guidance, inject)
        counts[method] = calls["n"]

    def timed(fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for method in METHODS:  # warm-up
        edit(method)
    fireflow = banks["FireFlow"]
    times = {"FireFlow": [], "RF-Solver-Edit": [], "injected": [], "plain": []}
    for _ in range(args.rounds):  # alternating, so that machine load affects all sides alike
        for method in METHODS:
            times[method].append(timed(lambda: edit(method)))
        times["plain"].append(timed(lambda: fh.plain_sample(model, fireflow, target_prompt, 2.0)))
        times["injected"].append(timed(lambda: flux_sampling.pnp_sample(model, fireflow, target_prompt, 2.0, 1)))

    def ratio(a: str, b: str) -> str:
        per_round = [x / y for x, y in zip(times[a], times[b])]
        return (f"{min(times[a]) / min(times[b]):.3f} (fastest of each; per-round median "
                f"{statistics.median(per_round):.3f}, rounds {', '.join(f'{r:.2f}' for r in per_round)})")

    print(f"Flux.1 blocks 19 double / 38 single, hidden {args.hidden}, latent {args.size}x{args.size} "
          f"({(args.size // 2) ** 2} image + {args.text} text tokens), {torch.get_num_threads()} threads, CPU")
    for method, (solver, _, steps, inject, guidance) in METHODS.items():
        official = 2 * solvers.evaluations(solver, steps)
        print(f"{method}: {steps} steps, inject {inject}, guidance {guidance}: {counts[method]} model evaluations "
              f"per edit (official code: {official}), bank here {placement.nbytes(banks[method].tables.values())} bytes")
    print(f"edit time FireFlow / RF-Solver-Edit: {ratio('FireFlow', 'RF-Solver-Edit')}")
    print(f"FireFlow injected sampling (inject 1) / plain FireFlow sampling: {ratio('injected', 'plain')}")
    for method in METHODS:
        here = placement.nbytes(banks[method].tables.values())
        scaled = full_bank_bytes(method, args.text, args.size * 8, args.hidden, element=4)
        assert here == scaled, f"{method}: the bank here ({here}) is not the shapes' ({scaled})"
        size = full_bank_bytes(method)
        print(f"full Flux.1 bank at 1024x1024, {method} settings, bf16, T5 padded to 256 tokens: "
              f"{size / 2 ** 30:.2f} GiB ({size} bytes)")


if __name__ == "__main__":
    main()
