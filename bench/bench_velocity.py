"""The velocity edits' cost on a full-size Wan 2.1 T2V 1.3B (random weights, the host's own classes, bf16 on the
CPU: the real speed of the architecture):

- model evaluations per edit (rows through the network), against the official counts: FlowEdit 2 n_avg per edited
  step (FlowEdit_utils.py lines 339-372); UniEdit-Flow k + 1 inversion and 2k edit evaluations, k = floor(alpha N)
  on Wan (UniInvEulerScheduler.py line 89, UniEditEulerScheduler.py line 77); RF-Inversion N + N (pipeline
  `invert`, `__call__`);
- seconds per evaluation relative to plain Euler sampling of the same model, latent and prompt, side by side in one
  process (alternating rounds; the fastest round of each);
- peak resident memory beyond the loaded model, relative to plain sampling's, each in a fresh process (the peak is
  reset after loading through /proc/self/clear_refs; no bank is kept: goal at most 1.1). At small latents the
  fixed costs (prompts, the guider's copies) outweigh the activations; `--layers 2` keeps the width and the
  activations per block and makes a larger latent affordable.

    .venv/bin/python bench/bench_velocity.py
    .venv/bin/python bench/bench_velocity.py --frames 2 --size 16 --steps 6 --rounds 3
    .venv/bin/python bench/bench_velocity.py --layers 2 --frames 3 --size 64 --steps 3 --memory-only
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
# Wan 2.1 T2V 1.3B (the host's model_detection of wan2.1_t2v_1.3B: dim 1536, 30 layers, 12 heads, ffn 8960,
# umt5-xxl context 4096 padded to 512 tokens).
WAN_13B = {"image_model": "wan2.1", "model_type": "t2v", "patch_size": (1, 2, 2), "in_dim": 16, "dim": 1536,
           "ffn_dim": 8960, "freq_dim": 256, "text_dim": 4096, "out_dim": 16, "num_heads": 12, "num_layers": 30,
           "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}
METHODS = ("plain", "flowedit", "uniedit", "rf_inversion")


def setup(layers: int = WAN_13B["num_layers"]):
    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    import conftest  # noqa: F401  (ComfyUI host on sys.path, CPU mode, the pack as comfyui_pnp)
    import torch

    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models as sm
    torch.set_num_threads(2)
    config = sm.WAN21_T2V({**WAN_13B, "num_layers": layers})
    config.set_inference_dtype(torch.bfloat16, None)
    base_model = comfy.model_base.WAN21(config, device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in base_model.diffusion_model.named_parameters():
            scale = 0.02 if p.ndim == 1 else 1 / math.sqrt(p.shape[-1])
            p.copy_(torch.ones_like(p) if "norm" in name and p.ndim == 1 else
                    (torch.randn(p.shape, generator=gen) * scale).to(p.dtype))
    return comfy.model_patcher.ModelPatcher(base_model, load_device=torch.device("cpu"),
                                            offload_device=torch.device("cpu"))


def runner(model, method: str, frames: int, size: int, steps: int):
    """A function running `method` once; the rows it evaluates are counted into the returned list."""
    import torch

    import comfy.samplers
    from comfyui_pnp.pnp_injection.velocity import flowedit, rf_inversion, uniedit

    def prompt(seed):
        g = torch.Generator().manual_seed(seed)
        return [[torch.randn(1, 512, 4096, generator=g) * 0.1, {}]]
    latent = {"samples": torch.randn(1, 16, frames, size, size, generator=torch.Generator().manual_seed(1))}

    def plain():
        guider = comfy.samplers.CFGGuider(model)
        guider.set_conds(prompt(1), prompt(1))
        guider.set_cfg(1.0)
        sigmas = uniedit.official_sigmas(model, steps, latent["samples"].shape)
        guider.sample(torch.randn_like(latent["samples"]), latent["samples"], comfy.samplers.sampler_object("euler"),
                      sigmas, disable_pbar=True, seed=0)
    return {"plain": plain,
            "flowedit": lambda: flowedit.edit(model, latent, prompt(2), prompt(1), steps=steps, n_max=steps - 1,
                                              source_scale=1.0, target_scale=1.0),
            "uniedit": lambda: uniedit.edit(model, latent, prompt(3), prompt(2), prompt(1), steps=steps),
            "rf_inversion": lambda: rf_inversion.edit(model, latent, prompt(3), prompt(1), steps=steps, guidance=1.0),
            }[method]


def memory_child(method: str, frames: int, size: int, steps: int, layers: int) -> dict:
    """Peak resident memory of one edit beyond the loaded model (a fresh process)."""
    model = setup(layers)  # puts tests/ on sys.path
    from harness import count_rows, process_memory, restart_peak_memory

    fn = runner(model, method, frames, size, steps)
    restart_peak_memory()
    base = process_memory("VmRSS")
    rows = count_rows(model, fn)
    return {"rows": rows, "added": process_memory("VmHWM") - base}


def timing(frames: int, size: int, steps: int, rounds: int) -> dict:
    """Seconds per evaluation of each method, side by side in this process (alternating order, fastest round)."""
    model = setup()  # puts tests/ on sys.path
    from harness import count_rows

    fns = {m: runner(model, m, frames, size, steps) for m in METHODS}
    rows = {m: count_rows(model, fn) for m, fn in fns.items()}  # also the warm-up
    best = {m: float("inf") for m in METHODS}
    for r in range(rounds):
        for m in (METHODS if r % 2 == 0 else METHODS[::-1]):
            started = time.perf_counter()
            fns[m]()
            best[m] = min(best[m], (time.perf_counter() - started) / rows[m])
    return best


def expected_rows(method: str, steps: int) -> int:
    k = math.floor(0.6 * steps)
    return {"plain": steps, "flowedit": 2 * (steps - 1), "uniedit": (k + 1) + 2 * k, "rf_inversion": 2 * steps}[method]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2, help="latent frames (5 video frames)")
    parser.add_argument("--size", type=int, default=16, help="latent height and width (128 px)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=WAN_13B["num_layers"],
                        help="blocks of the model (fewer: the same width and activations per block, faster)")
    parser.add_argument("--memory-only", action="store_true", help="skip the timing")
    parser.add_argument("--child", choices=METHODS)
    args = parser.parse_args()
    shape = (args.frames, args.size, args.steps)
    if args.child:
        print(json.dumps(memory_child(args.child, *shape, args.layers)))
        return
    memory = {}
    for method in METHODS:
        out = subprocess.run([sys.executable, str(HERE), "--child", method, "--frames", str(args.frames), "--size",
                              str(args.size), "--steps", str(args.steps), "--layers", str(args.layers)],
                             capture_output=True, text=True, check=True)
        memory[method] = json.loads(out.stdout.strip().splitlines()[-1])
    seconds = {m: float("nan") for m in METHODS} if args.memory_only else timing(*shape, args.rounds)
    depth = "full size" if args.layers == WAN_13B["num_layers"] else f"{args.layers} of its 30 blocks"
    print(f"Wan 2.1 T2V 1.3B, {depth}, bf16, CPU; latent [1, 16, {args.frames}, {args.size}, {args.size}], "
          f"{args.steps} steps")
    print(f"{'method':<14}{'evaluations':>12}{'official':>10}{'s / evaluation':>16}{'vs plain':>10}"
          f"{'added peak MiB':>16}{'vs plain':>10}")
    for method in METHODS:
        run = memory[method]
        print(f"{method:<14}{run['rows']:>12}{expected_rows(method, args.steps):>10}{seconds[method]:>16.3f}"
              f"{seconds[method] / seconds['plain']:>10.3f}{run['added'] / 2**20:>16,.0f}"
              f"{run['added'] / memory['plain']['added']:>10.2f}")


if __name__ == "__main__":
    main()
