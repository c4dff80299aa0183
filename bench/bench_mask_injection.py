"""Where should injection act in a masked PnP edit: everywhere (the pack's choice) or inside the
mask only? Both side by side on one bank, full-size SD 1.5 architecture with random weights on
the CPU, a hard mask over the right half.

Measured per variant, on the final latent:
- inside vs. the unmasked edit: ||inside(masked) - inside(unmasked)|| / ||inside(unmasked)||, how far
  the mask moves the paper's edit where it should hold (lower: the mask only keeps the outside);
- seam: the mean absolute step between the two latent columns across the mask's edge, over the
  median of the same step between neighbouring columns elsewhere in the result (1: no seam; with
  random weights the edit's values dwarf the source's, so any hard mask shows a large step);
- how far apart the two variants' insides are.

    .venv/bin/python bench/bench_mask_injection.py --size 256 --steps 20
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pnp  # noqa: E402  (the host, the pack, full-size models)
import torch  # noqa: E402

from comfyui_pnp.pnp_injection.unet import bank as banks  # noqa: E402
from comfyui_pnp.pnp_injection.unet import inversion, sampling  # noqa: E402


def seam(x: torch.Tensor, edge: int) -> float:
    steps = (x[..., 1:] - x[..., :-1]).abs().mean(dim=(0, 1, 2))  # step between columns c and c + 1
    others = torch.cat([steps[: edge - 1], steps[edge:]])
    return float(steps[edge - 1] / others.median())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image size in px (latent size / 8)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.5)
    args = parser.parse_args()
    model = bench_pnp.full_model("sd15")
    side = args.size // 8
    empty, target = bench_pnp.conditioning("sd15", 5, args.size), bench_pnp.conditioning("sd15", 1, args.size)
    gen = torch.Generator().manual_seed(2)
    source = torch.nn.functional.interpolate(torch.randn(1, 4, side // 4, side // 4, generator=gen), size=(side, side),
                                             mode="bilinear") * 4 + 0.5 * torch.randn(1, 4, side, side, generator=gen)
    bank = banks.capture(model, inversion.invert(model, source, empty, steps=args.steps, evaluations=args.steps),
                         0.8, 0.5)
    mask = torch.zeros(1, side, side)
    mask[..., side // 2:] = 1

    def edit(**options):
        return sampling.pnp_sample(model, bank, target, empty, args.cfg, 0.8, 0.5, **options)
    unmasked = edit()
    print(f"SD 1.5 (full-size, random weights), {args.size} px, {args.steps} steps, cfg {args.cfg}, "
          f"mask: the right half")
    print(f"  unmasked edit: seam at the middle column {seam(unmasked, side // 2):.2f}")
    insides = []
    for name, outside in (("everywhere (chosen)", True), ("inside the mask only", False)):
        out = edit(mask=mask, inject_outside=outside)
        inside = out[..., side // 2:]
        insides.append(inside)
        moved = float((inside - unmasked[..., side // 2:]).norm() / unmasked[..., side // 2:].norm())
        print(f"  injection {name:22s} inside vs. unmasked {moved:.3f}   seam {seam(out, side // 2):.2f}")
    apart = float((insides[0] - insides[1]).norm() / insides[0].norm())
    print(f"  the two variants' insides differ by {apart:.3f} (relative)")


if __name__ == "__main__":
    main()
