"""Draw the README's method diagram (docs/pnp-method.png) and the registry icon (docs/icon.png).

A schematic of what the nodes compute, drawn with Pillow alone (ComfyUI's requirements
include it): the pictures of the scene are flat shapes, not model outputs.

    .venv/bin/python scripts/draw_diagram.py [--out-dir docs]
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SCALE = 2  # drawn at twice the size, then downsampled: smooth lines without anti-aliasing support
WIDTH, HEIGHT = 1400, 740

INK = (34, 38, 46)
MUTED = (96, 104, 118)
SOURCE_TINT = (225, 236, 250)   # the source lane
BANK_TINT = (255, 243, 214)     # the feature bank
TARGET_TINT = (228, 245, 230)   # the target lane
SOURCE_EDGE = (70, 120, 200)
BANK_EDGE = (205, 145, 30)
TARGET_EDGE = (60, 150, 80)

# The scene: one layout (horizon, sun/moon, house, tree), two appearances.
SOURCE_LOOK = {"sky": (150, 200, 245), "ground": (120, 180, 90), "orb": (255, 220, 80),
               "wall": (230, 200, 160), "roof": (180, 70, 50), "window": (90, 130, 170),
               "trunk": (110, 80, 50), "leaves": (60, 140, 60)}
TARGET_LOOK = {"sky": (30, 40, 90), "ground": (40, 70, 80), "orb": (240, 240, 210),
               "wall": (150, 120, 170), "roof": (80, 50, 110), "window": (255, 210, 90),
               "trunk": (60, 50, 70), "leaves": (40, 90, 100)}


def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size * SCALE)


def s(*values):
    """Logical units to pixels of the drawing."""
    return [v * SCALE for v in values]


def scene(size: int, look: dict) -> Image.Image:
    """The schematic scene at `size` x `size` pixels of the drawing."""
    img = Image.new("RGB", (size, size), look["sky"])
    d = ImageDraw.Draw(img)
    u = size / 100
    d.rectangle([0, 62 * u, size, size], fill=look["ground"])
    d.ellipse([68 * u, 10 * u, 86 * u, 28 * u], fill=look["orb"])
    d.rectangle([18 * u, 42 * u, 52 * u, 70 * u], fill=look["wall"])
    d.polygon([(14 * u, 43 * u), (35 * u, 24 * u), (56 * u, 43 * u)], fill=look["roof"])
    d.rectangle([24 * u, 49 * u, 32 * u, 57 * u], fill=look["window"])
    d.rectangle([39 * u, 52 * u, 46 * u, 70 * u], fill=look["window"])
    d.rectangle([72 * u, 48 * u, 76 * u, 72 * u], fill=look["trunk"])
    d.ellipse([62 * u, 30 * u, 86 * u, 54 * u], fill=look["leaves"])
    return img


def noisy(img: Image.Image, amount: float, seed: int) -> Image.Image:
    """`img` blended with seeded Gaussian-looking noise: a stand-in for a latent at noise level `amount`."""
    if amount <= 0:
        return img
    rng = random.Random(seed)
    cell = max(1, img.width // 24)
    small = Image.new("RGB", (img.width // cell, img.height // cell))
    small.putdata([tuple(max(0, min(255, int(rng.gauss(128, 70)))) for _ in range(3))
                   for _ in range(small.width * small.height)])
    noise = small.resize(img.size, Image.NEAREST)
    return Image.blend(img, noise, amount)


class Canvas:
    def __init__(self):
        self.img = Image.new("RGB", s(WIDTH, HEIGHT), "white")
        self.d = ImageDraw.Draw(self.img)

    def box(self, x0, y0, x1, y1, fill, edge, radius=10, width=2, dashed=False):
        self.d.rounded_rectangle(s(x0, y0, x1, y1), radius=radius * SCALE, fill=fill,
                                 outline=None if dashed else edge, width=width * SCALE)
        if dashed:
            for a, b in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
                self.dashes(a, b, edge, width)

    def dashes(self, a, b, color, width=2, on=7, off=5):
        (xa, ya), (xb, yb) = a, b
        length = ((xb - xa) ** 2 + (yb - ya) ** 2) ** 0.5
        pos = 0.0
        while pos < length:
            end = min(pos + on, length)
            self.d.line(s(xa + (xb - xa) * pos / length, ya + (yb - ya) * pos / length,
                          xa + (xb - xa) * end / length, ya + (yb - ya) * end / length),
                        fill=color, width=width * SCALE)
            pos += on + off

    def arrow(self, a, b, color=INK, width=2, dashed=False, head=9):
        (xa, ya), (xb, yb) = a, b
        length = ((xb - xa) ** 2 + (yb - ya) ** 2) ** 0.5
        ux, uy = (xb - xa) / length, (yb - ya) / length
        tip_base = (xb - ux * head, yb - uy * head)
        if dashed:
            self.dashes(a, tip_base, color, width)
        else:
            self.d.line(s(xa, ya, *tip_base), fill=color, width=width * SCALE)
        px, py = -uy, ux
        self.d.polygon([tuple(s(xb, yb)),
                        tuple(s(tip_base[0] + px * head * 0.55, tip_base[1] + py * head * 0.55)),
                        tuple(s(tip_base[0] - px * head * 0.55, tip_base[1] - py * head * 0.55))], fill=color)

    def text(self, xy, text, size=15, color=INK, anchor="la", bold=False):
        self.d.text(s(*xy), text, font=font(size), fill=color, anchor=anchor,
                    stroke_width=(1 if bold else 0), stroke_fill=color)

    def picture(self, img: Image.Image, x, y, edge):
        self.img.paste(img, tuple(s(x, y)))
        self.d.rectangle(s(x, y, x + img.width // SCALE, y + img.height // SCALE), outline=edge, width=SCALE)

    def save(self, path: Path, size=None):
        out = self.img.resize(size or (WIDTH, HEIGHT), Image.LANCZOS)
        out.save(path, optimize=True)


def draw_method(path: Path):
    c = Canvas()
    c.text((WIDTH / 2, 16), "Plug-and-Play diffusion features: the layout of a source image, the look of a prompt",
           size=22, anchor="ma", bold=True)
    c.text((WIDTH / 2, 46), "schematic of the method (flat drawings, not model outputs); node names in bold",
           size=14, color=MUTED, anchor="ma")

    # Lanes: the source read left to right above, the target sampled right to left below,
    # the feature bank between them.
    c.box(20, 76, WIDTH - 20, 282, SOURCE_TINT, SOURCE_EDGE)
    c.box(200, 306, WIDTH - 20, 456, BANK_TINT, BANK_EDGE)
    c.box(20, 480, WIDTH - 20, HEIGHT - 20, TARGET_TINT, TARGET_EDGE)

    # Columns shared by the trajectory and the injected sampling, so that the bank's arrows run
    # straight down: the same timesteps, noisiest on the right.
    thumb = 92
    steps = [("t = 1", 0.15), ("t = 21", 0.35), ("...", 0.6), ("t = 961", 0.85), ("t = 981", 0.95)]
    cols = [440 + i * 165 for i in range(len(steps))]
    notes_x = cols[-1] + thumb + 22

    # 1. Source lane: source image -> DDIM inversion trajectory.
    c.picture(scene(140 * SCALE, SOURCE_LOOK), 40, 102, SOURCE_EDGE)
    c.text((110, 270), "source image", size=15, anchor="mb", bold=True)
    c.arrow((186, 178), (cols[0] - 10, 178), SOURCE_EDGE)
    c.text((cols[0] - 125, 166), "VAE Encode", size=13, color=MUTED, anchor="mb")
    c.text((cols[0], 88), "PnP DDIM Inversion", size=16, color=SOURCE_EDGE, bold=True)
    c.text((cols[0] + 190, 90), "deterministic DDIM run backwards (empty prompt): the noise path of the source",
           size=13, color=MUTED)
    small_src = scene(thumb * SCALE, SOURCE_LOOK)
    for i, ((label, amount), x) in enumerate(zip(steps, cols)):
        c.picture(noisy(small_src, amount, seed=i), x, 132, SOURCE_EDGE)
        c.text((x + thumb / 2, 250), label, size=13, anchor="mb")
        if i + 1 < len(cols):
            c.arrow((x + thumb + 6, 178), (cols[i + 1] - 6, 178), SOURCE_EDGE)
    c.text((notes_x, 150), "trajectory", size=13, bold=True)
    c.text((notes_x, 168), "one latent per step,", size=12, color=MUTED)
    c.text((notes_x, 183), "from the source latent", size=12, color=MUTED)
    c.text((notes_x, 198), "to the inverted latent", size=12, color=MUTED)

    # 2. Feature bank: ResBlock features for the first 80% of the sampling steps (the noisiest),
    #    attention for the first 50%; in five columns, four and two.
    c.text((218, 318), "PnP Capture Features", size=16, color=BANK_EDGE, bold=True)
    c.text((218, 342), "one U-Net pass per", size=13, color=MUTED)
    c.text((218, 359), "early step on the", size=13, color=MUTED)
    c.text((218, 376), "trajectory latent", size=13, color=MUTED)
    c.text((218, 408), "feature bank", size=18, bold=True)
    c.text((218, 432), "keyed by sigma", size=12, color=MUTED)
    for i, x in enumerate(cols):
        has_res, has_attn = i >= 1, i >= 3
        if has_res:
            c.arrow((x + thumb / 2, 284), (x + thumb / 2, 318), BANK_EDGE, dashed=True, head=7)
        for row, (present, name) in enumerate(((has_res, "ResBlock"), (has_attn, "self-attn q/k"))):
            y = 322 + row * 64
            fill = (250, 214, 140) if present else (245, 240, 230)
            edge = BANK_EDGE if present else (200, 190, 170)
            for k in range(3):  # a small stack of feature maps
                c.box(x + 8 + k * 6, y + k * 5, x + 70 + k * 6, y + 32 + k * 5, fill, edge, radius=3, width=1)
            c.text((x + thumb / 2 + 2, y + 60), name if present else "not kept", size=11,
                   color=INK if present else MUTED, anchor="mb")
    c.text((notes_x, 322), "ResBlock features", size=13, bold=True)
    c.text((notes_x, 340), "decoder layer 4,", size=12, color=MUTED)
    c.text((notes_x, 355), "first 80% of steps", size=12, color=MUTED)
    c.text((notes_x, 386), "self-attention", size=13, bold=True)
    c.text((notes_x, 404), "queries/keys, decoder", size=12, color=MUTED)
    c.text((notes_x, 419), "layers 4-11, first 50%", size=12, color=MUTED)

    # 3. Target lane: injected sampling from the inverted latent, right to left -> target image.
    c.text((218, 682), "PnP Sampler", size=16, color=TARGET_EDGE, bold=True)
    c.text((340, 684), "DDIM sampling from the inverted latent with the target prompt; at each early step the U-Net's own",
           size=13, color=MUTED)
    c.text((340, 701), "ResBlock features and self-attention queries/keys are replaced by the bank's (no arrow: nothing kept, plain step)",
           size=13, color=MUTED)
    small_tgt = scene(thumb * SCALE, TARGET_LOOK)
    lane_y = 548
    for i, x in enumerate(cols):
        c.picture(noisy(small_tgt, steps[i][1] * 0.9, seed=10 + i), x, lane_y, TARGET_EDGE)
        c.text((x + thumb / 2, lane_y + thumb + 20), "U-Net step", size=12, color=MUTED, anchor="mb")
        if i >= 1:  # the steps the bank holds features for
            c.arrow((x + thumb / 2, 450), (x + thumb / 2, lane_y - 4), BANK_EDGE, width=3)
    for a, b in zip(cols, cols[1:]):
        c.arrow((b - 6, lane_y + 46), (a + thumb + 6, lane_y + 46), TARGET_EDGE)

    prompt_top = lane_y + 2
    c.box(notes_x - 6, prompt_top, WIDTH - 34, prompt_top + 88, "white", TARGET_EDGE)
    c.text((notes_x + 4, prompt_top + 10), "target prompt", size=14, bold=True)
    c.text((notes_x + 4, prompt_top + 32), '"a painting of a', size=13, color=MUTED)
    c.text((notes_x + 4, prompt_top + 49), 'house at night,', size=13, color=MUTED)
    c.text((notes_x + 4, prompt_top + 66), 'moonlight"', size=13, color=MUTED)
    c.arrow((notes_x - 6, lane_y + 46), (cols[-1] + thumb + 6, lane_y + 46), TARGET_EDGE)

    c.picture(scene(140 * SCALE, TARGET_LOOK), 40, 512, TARGET_EDGE)
    c.text((110, 676), "target image", size=15, anchor="mb", bold=True)
    c.text((110, 694), "source layout, prompt look", size=12, color=MUTED, anchor="mb")
    c.arrow((cols[0] - 6, lane_y + 46), (186, lane_y + 46), TARGET_EDGE)
    c.text((cols[0] - 125, lane_y + 34), "VAE Decode", size=13, color=MUTED, anchor="mb")
    c.save(path)


def draw_icon(path: Path, size: int = 256):
    """Square registry icon: the source scene, an arrow, the same layout in the prompt's look."""
    big = size * SCALE
    img = Image.new("RGB", (big, big), (246, 248, 252))
    d = ImageDraw.Draw(img)
    pic = int(big * 0.42)
    img.paste(scene(pic, SOURCE_LOOK), (int(big * 0.05), int(big * 0.08)))
    img.paste(scene(pic, TARGET_LOOK), (int(big * 0.53), int(big * 0.50)))
    d.line([int(big * 0.30), int(big * 0.56), int(big * 0.30), int(big * 0.71), int(big * 0.47), int(big * 0.71)],
           fill=INK, width=int(big * 0.035), joint="curve")
    d.polygon([(int(big * 0.52), int(big * 0.71)), (int(big * 0.44), int(big * 0.65)), (int(big * 0.44), int(big * 0.77))],
              fill=INK)
    d.text((int(big * 0.74), int(big * 0.27)), "PnP", font=ImageFont.load_default(size=int(big * 0.16)),
           fill=INK, anchor="mm", stroke_width=SCALE, stroke_fill=INK)
    img.resize((size, size), Image.LANCZOS).save(path, optimize=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    draw_method(args.out_dir / "pnp-method.png")
    draw_icon(args.out_dir / "icon.png")
    print(f"wrote {args.out_dir / 'pnp-method.png'} and {args.out_dir / 'icon.png'}")


if __name__ == "__main__":
    main()
