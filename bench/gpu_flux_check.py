"""The Flux GPU check: full-size Flux.1 at 1024x1024 with RF-Solver-Edit's defaults.

On a CUDA machine, after `bash scripts/setup.sh --test`:

    .venv/bin/python bench/gpu_flux_check.py            # a few minutes on one H100/H200

A Flux.1 with the real architecture (19 double and 38 single blocks, hidden 3072, 24 heads),
random weights at a real init's scale, bfloat16, on the GPU; the text encoders are replaced by
random 256-token prompts (the bank counts text tokens, not their width). Official defaults:
25 steps, features of the first 20 kept and injected, rf-solver-edit layers, guidance 1 for
the inversion and 5 for the edit. Each figure comes from one process, in two children:

1. the inversion keeping the bank (17.9 GiB, page-locked system memory), the PnP edit and
   plain RF-Solver sampling from the same inverted latent, alternately;
2. the same inversion keeping nothing.

It prints the bank's estimate and size, the peak system memory each child added beyond the
loaded model, their difference against the bank (the target is at most 1.3), PnP / plain
sampling time, and the peak GPU memory of each.

`--method stable-flow` or `--method fireflow` times those presets instead (FireFlow: its solver, 8 steps, 1
kept, guidance 2), whose first site is early in the network; `--bank disk` or `--bank recompute` keeps the bank
there (placement.MODES) and counts the model evaluations of the PnP run against the plain one's:

    .venv/bin/python bench/gpu_flux_check.py --method fireflow --bank disk
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
TEXT_WIDTH = 64  # T5/CLIP widths are irrelevant to the bank; the 256 text tokens are not


def rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def full_flux(size: int):
    """The host set up, then Flux.1's architecture with random weights (full width in bf16 on CUDA,
    a narrow one in fp32 elsewhere), two random 256-token prompts and a random source latent."""
    import torch
    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    import host
    host.setup(cpu=not torch.cuda.is_available())

    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models as sm

    device = comfy.model_management.get_torch_device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hidden, heads = (3072, 24) if device.type == "cuda" else (256, 2)
    config = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": TEXT_WIDTH,
              "context_in_dim": TEXT_WIDTH, "hidden_size": hidden, "mlp_ratio": 4.0, "num_heads": heads, "depth": 19,
              "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
              "guidance_embed": True, "patch_size": 2}
    model_config = sm.Flux(config)
    model_config.set_inference_dtype(dtype, None)
    model = comfy.model_base.Flux(model_config, device=device)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.diffusion_model.named_parameters():
            if name.endswith(".scale"):
                p.fill_(1.0)
            elif p.ndim == 1:
                p.normal_(0, 0.02)
            else:
                p.normal_(0, 1 / math.sqrt(p.shape[1]))
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    gen = torch.Generator().manual_seed(1)
    prompts = [[[torch.randn(1, 256, TEXT_WIDTH, generator=gen), {"pooled_output": torch.randn(1, TEXT_WIDTH, generator=gen)}]]
               for _ in range(2)]
    latent = 2.0 * torch.randn(1, 16, size, size, generator=gen)
    return patcher, prompts, latent, device


METHODS = {  # preset, solver, guidance of the edit
    "rf-solver-edit": ("rf-solver-edit", "rf_solver", 5.0),
    "stable-flow": ("stable-flow", "rf_solver", 5.0),
    "fireflow": ("fireflow", "fireflow", 2.0),
}


def child(keep: int, size: int, rounds: int, steps: int, method: str = "rf-solver-edit", bank_mode: str = "memory") -> dict:
    import torch
    patcher, prompts, latent, device = full_flux(size)
    import comfy.samplers

    from comfyui_pnp.pnp_injection import passes, placement
    from comfyui_pnp.pnp_injection.flow import bank as flux_banks
    from comfyui_pnp.pnp_injection.flow import inversion, sampling, solvers

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = rss()
    start = time.perf_counter()
    preset, solver, guidance = METHODS[method]
    bank = inversion.invert(patcher, latent, prompts[0], steps, keep, preset, solver=solver, bank=bank_mode)
    inverted = time.perf_counter() - start
    layers = bank.layers
    out = {"keep": keep, "base": base, "after_inversion": rss(), "inversion_s": inverted,
           "bank": placement.nbytes(bank.tables.values()),
           "estimate": flux_banks.estimate_bytes(patcher, layers, latent.shape, 256, bank.slots),
           "pinned": all(t.is_pinned() for t in bank.tables.values())
           if device.type == "cuda" and keep and bank_mode == "memory" else None}
    if device.type == "cuda":
        out["gpu_peak_inversion"] = torch.cuda.max_memory_allocated()
    if keep:
        def plain():
            guided = inversion.with_guidance(prompts[1], guidance)
            guider = comfy.samplers.CFGGuider(patcher)
            guider.set_conds(guided, guided)
            guider.set_cfg(1.0)
            return passes.sample(guider, torch.zeros_like(bank.noise), solvers.sampler(solver), bank.sigmas,
                                 noise=bank.noise.clone(), bar=False)

        times, evaluations = {"pnp": [], "plain": []}, {}
        block = patcher.model.diffusion_model.double_blocks[0]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(rounds):
            for name, fn in (("plain", plain),
                             ("pnp", lambda: sampling.pnp_sample(patcher, bank, prompts[1], guidance, keep))):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seen = []
                handle = block.register_forward_pre_hook(lambda m, a: seen.append(1))
                t = time.perf_counter()
                result = fn()
                handle.remove()
                evaluations[name] = len(seen)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
                out[f"{name}_finite"] = bool(torch.isfinite(result).all())
        out["times"], out["evaluations"], out["slots"] = times, evaluations, bank.slots
        if device.type == "cuda":
            out["gpu_peak_sampling"] = torch.cuda.max_memory_allocated()
    out["peak"] = rss()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="latent size (128: 1024x1024)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--method", choices=list(METHODS), default="rf-solver-edit")
    parser.add_argument("--bank", choices=["memory", "disk", "recompute"], default="memory")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method == "fireflow" and args.steps == 25:
        args.steps = 8  # FireFlow's own
    if args.child is not None:
        print("RESULT " + json.dumps(child(args.child, args.size, args.rounds, args.steps, args.method, args.bank)))
        return
    results = {}
    keeps = (1 if args.method == "fireflow" else min(20, args.steps), 0)
    for keep in keeps:
        run = subprocess.run([sys.executable, str(HERE), "--child", str(keep), "--size", str(args.size),
                              "--rounds", str(args.rounds), "--steps", str(args.steps), "--method", args.method,
                              "--bank", args.bank], capture_output=True, text=True)
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        if run.returncode or not lines:
            print(run.stdout[-3000:], run.stderr[-6000:])
            sys.exit(f"child keep={keep} failed ({run.returncode})")
        results[keep] = json.loads(lines[-1][7:])
    kept, nothing = results[keeps[0]], results[0]
    gib = 2 ** 30
    print(json.dumps(results))
    print(f"bank: {kept['bank'] / gib:.2f} GiB (estimate {kept['estimate'] / gib:.2f} GiB), page-locked: {kept['pinned']}")
    added = (kept["peak"] - kept["base"]) - (nothing["peak"] - nothing["base"])
    print(f"peak system memory added by keeping the bank: {added / gib:.2f} GiB = {added / kept['bank']:.2f} x the bank "
          f"(inversion keeping it: +{(kept['after_inversion'] - kept['base']) / gib:.2f} GiB; keeping nothing: "
          f"+{(nothing['after_inversion'] - nothing['base']) / gib:.2f} GiB)")
    print(f"inversion: {kept['inversion_s']:.1f} s keeping the bank, {nothing['inversion_s']:.1f} s keeping nothing")
    t = kept["times"]
    print(f"sampling, {args.steps} steps: PnP {min(t['pnp']):.1f} s, plain {min(t['plain']):.1f} s, ratio {min(t['pnp']) / min(t['plain']):.3f} "
          f"(rounds: {[round(a / b, 3) for a, b in zip(t['pnp'], t['plain'])]}); results finite: {kept.get('pnp_finite')}")
    e = kept["evaluations"]
    print(f"{args.method}, bank {args.bank}: model evaluations PnP {e['pnp']}, plain {e['plain']} (extra "
          f"{e['pnp'] - e['plain']}; recompute adds one per injected slot: {kept['slots']} slots kept)")
    if "gpu_peak_sampling" in kept:
        print(f"peak GPU memory: inversion {kept['gpu_peak_inversion'] / gib:.1f} GiB (keeping nothing "
              f"{nothing['gpu_peak_inversion'] / gib:.1f} GiB), sampling {kept['gpu_peak_sampling'] / gib:.1f} GiB")


if __name__ == "__main__":
    main()
