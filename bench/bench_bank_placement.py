"""Peak resident memory attributable to a bank in each placement (`bank` memory, disk, recompute), at the sizes of
the README's three large edits, each in a fresh process:

- RF-Solver-Edit on Flux.1 at 1024x1024, its defaults: V of single blocks 20-37, all 4352 tokens (4096 image + 256
  text), 3072 wide, 2 evaluations x 20 kept steps, bf16 (17.9 GiB in memory);
- KV-Edit on Flux.1 at 1024x1024 with a half mask: K and V of all 57 blocks for the 2048 background tokens, 24 edited
  steps (32 GiB in memory);
- RF-Solver-Edit on HunyuanVideo, the official example (scripts/run_jeep.sh: 77 frames at 480x480, a [1, 16, 20,
  60, 60] latent, 18000 video + 256 text tokens, 19 blocks, inject 5: 2 x 5 slots; 19.85 GiB in memory).

What runs is the pack's own bank code, as in a sampling run: the recording side of the placement (placement.Tables,
disk.DiskTables or recompute.RecordedTables with recompute.SourceCalls keeping the source's path) gets every kept
tensor of the inversion, then the sampling side serves every slot in order (streaming.StepFeed for memory and
disk, reading ahead through its window; recompute.Recomputed for recompute, holding the slot it recomputed). The
network itself is left out: the full-size models take 24-26 GB in bf16 and minutes per evaluation on this CPU,
and their activations are not the bank's. Each kept tensor comes from one buffer per shape made before the
measurement starts, as the network's activation would be. The peak (VmHWM) is reset after set-up
(/proc/self/clear_refs), so what it adds is the bank's: goal at most 2 GiB for disk and recompute. A memory bank
larger than the memory free is not made (it would swap); its figure is its size. The seconds each placement
takes are printed beside its memory bank's (on this machine the disk reads hit the page cache; bench/gpu_* has
the GPU figures).

`--edit` times whole edits instead (PnP Flux/Chroma/HunyuanVideo Inversion (RF-Solver) then its Sampler, RF-Solver-Edit's rule) in each
placement, side by side in one process (alternating rounds, the fastest of each), on Flux.1's block counts at
width 512 on the CPU, with the model evaluations each makes: recompute adds one per injected slot.

    .venv/bin/python bench/bench_bank_placement.py
    .venv/bin/python bench/bench_bank_placement.py --case rf-solver-edit --modes disk recompute
    .venv/bin/python bench/bench_bank_placement.py --edit
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
GiB = 2**30
WIDTH = 3072
# case -> (kept sites, tokens per site, slots, latent shape of the source path)
CASES = {
    "rf-solver-edit": (18, 4096 + 256, 2 * 20, (1, 16, 128, 128)),
    "kv-edit-half": (57 * 2, 2048, 24, (1, 16, 128, 128)),
    "hunyuan-video": (19, 18000 + 256, 2 * 5, (1, 16, 20, 60, 60)),
}
MODES = ("memory", "disk", "recompute")


def child(case: str, mode: str) -> dict:
    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    import conftest  # noqa: F401  (ComfyUI host on sys.path, CPU mode, the pack as comfyui_pnp)
    import torch

    from comfyui_pnp.pnp_injection import placement, recompute, streaming
    from harness import process_memory, restart_peak_memory
    sites, tokens, slots, latent_shape = CASES[case]
    activation = torch.randn(1, tokens, WIDTH).to(torch.bfloat16)  # the network's output at a site
    latent, timestep = torch.randn(latent_shape), torch.ones(1)
    like = torch.empty(0, dtype=torch.bfloat16)
    keys = [("site", i) for i in range(sites)]
    choice = placement.Placement(mode, "asked for")
    restart_peak_memory()
    base = process_memory("VmHWM")
    started = time.perf_counter()
    tables = placement.recording_tables(choice, lambda key: slots, lambda t: torch.device("cpu"), torch.bfloat16)
    calls = recompute.SourceCalls(torch.device("cpu")) if mode == "recompute" else None
    for slot in range(slots):  # the inversion
        if calls is not None:
            calls.keep(slot, 1.0 - slot / slots, (latent, timestep, {}), {}, {})
        for key in keys:
            tables.put(key, slot, activation)
    bank = {key: tables.complete(key, slots, str(key)) for key in keys}
    recorded = time.perf_counter() - started
    checksum = 0.0
    if mode == "recompute":  # the sampling run: each slot's tensors made again once, the slot before dropped
        run = recompute.Recomputed(keep_slots=1)
        for slot in range(slots):
            kept = run.get(slot, lambda: {key: activation.clone() for key in keys})
            checksum += sum(float(kept[key][0, 0, 0]) for key in keys)
            del kept  # as the sampling call's reference ends with the call
    else:
        feed = streaming.StepFeed(bank)
        for slot in range(slots):
            for key in keys:
                checksum += float(feed.get(slot, key, like)[0, 0, 0])
        feed.release()
    return {"added": process_memory("VmHWM") - base, "bank": sum(t.numel() * t.element_size() for t in bank.values()),
            "recorded_s": recorded, "total_s": time.perf_counter() - started,
            "path": 0 if calls is None else calls.nbytes(), "checksum": checksum}


def free_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(case: str, modes) -> None:
    sites, tokens, slots, _ = CASES[case]
    size = sites * tokens * WIDTH * 2 * slots
    print(f"{case}: bank {size / GiB:.2f} GiB ({sites} sites x {tokens} tokens x {WIDTH} x {slots} slots, bf16)")
    seconds = {}
    for mode in modes:
        if mode == "memory" and size > 0.8 * free_memory():
            print(f"  memory   : not made ({free_memory() / GiB:.1f} GiB free): it would keep {size / GiB:.2f} GiB")
            continue
        out = subprocess.run([sys.executable, str(HERE), "--child", case, mode], capture_output=True, text=True)
        if out.returncode:
            print(f"  {mode:9}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        seconds[mode] = r["total_s"]
        path = f", source path {r['path'] / 2**20:.1f} MiB" if mode == "recompute" else ""
        ratio = f", {r['total_s'] / seconds['memory']:.2f}x memory's time" if "memory" in seconds and mode != "memory" else ""
        print(f"  {mode:9}: peak resident memory added {r['added'] / GiB:.2f} GiB{path}; "
              f"{r['total_s']:.1f} s (recording {r['recorded_s']:.1f} s){ratio}")


def edit_times(modes, rounds: int, size: int, steps: int, keep: int) -> None:
    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    import conftest  # noqa: F401
    import torch

    import flux_harness as fh
    from comfyui_pnp.nodes.flux import PnPFluxInversion, PnPFluxSampler
    torch.set_num_threads(2)
    model = fh.make_flux(seed=0, hidden=512, heads=4, axes=[16, 56, 56])
    source, prompt, target = fh.latent(size=size), fh.conditioning(seed=5, tokens=32), fh.conditioning(seed=1, tokens=32)
    block = model.model.diffusion_model.double_blocks[0]
    best, calls, outs = {}, {}, {}
    for _ in range(rounds):
        for mode in modes:
            seen = []
            handle = block.register_forward_pre_hook(lambda m, a: seen.append(1))
            started = time.perf_counter()
            (bank,) = PnPFluxInversion.execute(model, {"samples": source}, prompt, steps, keep, 1.0, "rf-solver-edit",
                                               "rf_solver", "official", "", mode).result
            outs[mode] = PnPFluxSampler.execute(model, bank, target, 5.0, keep).result[0]["samples"]
            elapsed = time.perf_counter() - started
            handle.remove()
            best[mode] = min(best.get(mode, elapsed), elapsed)
            calls[mode] = len(seen)
            del bank
    print(f"whole edit (Flux.1 block counts at width 512, {size}x{size} latent, {steps} steps, {keep} kept, CPU, "
          f"fastest of {rounds}):")
    for mode in modes:
        same = "same latent" if torch.equal(outs[mode], outs[modes[0]]) else "DIFFERENT latent"
        print(f"  {mode:9}: {best[mode]:.2f} s = {best[mode] / best[modes[0]]:.2f}x {modes[0]}'s; "
              f"{calls[mode]} model evaluations; {same}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--child", nargs=2, metavar=("CASE", "MODE"))
    parser.add_argument("--edit", action="store_true", help="time whole edits in each placement instead")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.edit:
        edit_times(args.modes, args.rounds, size=32, steps=6, keep=5)
        return
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    for case in (CASES if args.case == "all" else [args.case]):
        measure(case, args.modes)


if __name__ == "__main__":
    main()
