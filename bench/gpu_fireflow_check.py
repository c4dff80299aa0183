"""The FireFlow GPU check: full-size Flux.1 at 1024x1024, FireFlow against RF-Solver-Edit, each
at its recommended settings, in one process.

On a CUDA machine, after `bash scripts/setup.sh --test`:

    .venv/bin/python bench/gpu_fireflow_check.py       # a few minutes on one H100/H200

The model and prompts are bench/gpu_flux_check.py's (Flux.1's architecture with random weights
in bf16, random 256-token prompts). Alternating rounds time a whole edit (inversion keeping the
bank, then injected sampling) of FireFlow (8 steps, inject 1, guidance 2) and of RF-Solver-Edit
(25 steps, inject 20, guidance 5), count their model evaluations, and time FireFlow's injected
sampling against plain FireFlow sampling of the same inverted latent. Prints bank sizes (with
the estimates made before the inversions), evaluation counts, time ratios and peak GPU memory.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_flux_check import full_flux  # noqa: E402

METHODS = {  # solver, layers, steps, inject (= keep_steps), guidance
    "FireFlow": ("fireflow", "fireflow", 8, 1, 2.0),
    "RF-Solver-Edit": ("rf_solver", "rf-solver-edit", 25, 20, 5.0),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="latent size (128: 1024x1024)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    patcher, prompts, latent, device = full_flux(args.size)
    import comfy.samplers
    import torch

    from comfyui_pnp.pnp_injection import passes, placement
    from comfyui_pnp.pnp_injection.flow import bank as flux_banks
    from comfyui_pnp.pnp_injection.flow import inversion, layers, sampling, solvers

    cuda = device.type == "cuda"
    calls = {"n": 0}
    patcher.model.diffusion_model.register_forward_pre_hook(lambda module, inputs: calls.update(n=calls["n"] + 1))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        return time.perf_counter() - start, result

    info, times = {}, {name: [] for name in (*METHODS, "injected", "plain")}

    def edit(method):
        solver, preset, steps, inject, guidance = METHODS[method]
        calls["n"] = 0
        bank = inversion.invert(patcher, latent, prompts[0], steps, inject, preset, solver=solver)
        out = sampling.pnp_sample(patcher, bank, prompts[1], guidance, inject)
        estimate = flux_banks.estimate_bytes(patcher, layers.PRESETS[preset], latent.shape, 256, bank.slots)
        info[method] = {"evaluations": calls["n"], "bank": placement.nbytes(bank.tables.values()),
                        "estimate": estimate, "finite": bool(torch.isfinite(out).all())}
        return bank

    def plain(bank):
        guided = inversion.with_guidance(prompts[1], 2.0)
        guider = comfy.samplers.CFGGuider(patcher)
        guider.set_conds(guided, guided)
        guider.set_cfg(1.0)
        return passes.sample(guider, torch.zeros_like(bank.noise), solvers.sampler("fireflow"), bank.sigmas,
                             noise=bank.noise.clone(), bar=False)

    fireflow = None
    for method in METHODS:  # warm-up
        bank = edit(method)
        fireflow = bank if method == "FireFlow" else fireflow
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.rounds):  # alternating, so that the machine's state affects all sides alike
        for method in METHODS:
            times[method].append(timed(lambda: edit(method))[0])
        times["plain"].append(timed(lambda: plain(fireflow))[0])
        times["injected"].append(timed(lambda: sampling.pnp_sample(patcher, fireflow, prompts[1], 2.0, 1))[0])

    gib = 2 ** 30
    print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}; latent {args.size}x{args.size}, 256 text tokens")
    for method, (solver, _, steps, inject, guidance) in METHODS.items():
        i = info[method]
        print(f"{method} ({steps} steps, inject {inject}, guidance {guidance}): {i['evaluations']} model evaluations "
              f"(official {2 * solvers.evaluations(solver, steps)}), bank {i['bank'] / gib:.2f} GiB (estimate "
              f"{i['estimate'] / gib:.2f} GiB), edit {min(times[method]):.1f} s (rounds "
              f"{[round(t, 1) for t in times[method]]}), finite: {i['finite']}")
    print(f"edit time FireFlow / RF-Solver-Edit: {min(times['FireFlow']) / min(times['RF-Solver-Edit']):.3f}")
    print(f"FireFlow injected / plain sampling: {min(times['injected']):.2f} s / {min(times['plain']):.2f} s = "
          f"{min(times['injected']) / min(times['plain']):.3f} (rounds "
          f"{[round(a / b, 3) for a, b in zip(times['injected'], times['plain'])]})")
    if cuda:
        print(f"peak GPU memory over the timed rounds: {torch.cuda.max_memory_allocated() / gib:.1f} GiB")


if __name__ == "__main__":
    main()
