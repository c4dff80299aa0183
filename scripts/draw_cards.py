"""Draw the template browser's card pictures, workflows/<name>.jpg, one per shipped workflow.

ComfyUI lists a pack's workflows with nothing but their file names: the host's
`/workflow_templates` answers {pack folder: [file stems]} (app/custom_node_manager.py,
`get_workflow_templates`), and the frontend makes each card from the stem alone, as its title
and, with '-' and '_' turned into spaces, its description (comfyui_frontend_package 1.32.9,
the `workflowTemplates` store: `{name: N, title: N, description: N, mediaType: "image",
mediaSubtype: "jpg"}`; the card shows `title ?? name` and the description). No index or field
of a custom pack's workflow is read. The picture, `<stem>.jpg` beside the workflow, is the one
thing a pack controls on its card, so each card's title, one-line description and purpose are
drawn into it: the title and the line, then the edit as a schematic (the source, the model and
method, the result; flat drawings as in docs/pnp-method.png, not model outputs), then the
pack's nodes the graph runs, by the names the node library shows (each help page's title).

    .venv/bin/python scripts/draw_cards.py [--out-dir workflows]

tests/test_frontend.py checks that the shipped pictures are these drawings and that the real
frontend's template browser shows them on the pack's cards.
"""
from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from draw_diagram import (BANK_EDGE, BANK_TINT, INK, MUTED, SCALE, SOURCE_EDGE, SOURCE_LOOK, TARGET_EDGE, TARGET_LOOK,
                          TARGET_TINT, Canvas, font, scene)

ROOT = Path(__file__).resolve().parents[1]
SIZE = 400        # the card picture's side (the frontend shows it square)
QUALITY = 90      # JPEG quality of the shipped pictures


@dataclass(frozen=True)
class Card:
    title: str
    description: str   # one line: what the workflow does
    model: str         # the model family it runs on
    method: str        # the edit's method, as the picture's arrow says it
    nodes: tuple[str, ...]  # node ids of the pack's nodes the graph runs, in order
    kind: str = "image"     # image, video, masked, multi, twice (a saved bank sampled again)


CARDS = {
    "pnp-basic": Card("Edit a photo, keep its layout", "SD 1.5 at the paper's defaults: a 999-step inversion, "
                      "the source's features injected into the target prompt.", "SD 1.5", "Plug-and-Play",
                      ("PnPInversion", "PnPCaptureFeatures", "PnPSampler")),
    "pnp-fast": Card("Fast PnP edit", "The same edit with a 50-step inversion: a few times faster, nearly the same "
                     "result.", "SD 1.5", "Plug-and-Play, 50 steps",
                     ("PnPInversion", "PnPCaptureFeatures", "PnPSampler")),
    "pnp-controlnet": Card("PnP with a ControlNet", "The target prompt also follows a canny ControlNet hint made "
                           "from the source.", "SD 1.5 + ControlNet", "PnP + canny",
                           ("PnPInversion", "PnPCaptureFeatures", "PnPSampler")),
    "pnp-hires": Card("PnP, then a hires pass", "The edit at 512 px, upscaled 1.5x and refined by a KSampler at "
                      "denoise 0.5.", "SD 1.5", "PnP + hires fix",
                      ("PnPInversion", "PnPCaptureFeatures", "PnPSampler")),
    "pnp-multi-prompt": Card("One source, three prompts", "One feature bank sampled by three PnP Samplers, one "
                             "target prompt each.", "SD 1.5", "Plug-and-Play",
                             ("PnPInversion", "PnPCaptureFeatures", "PnPSampler"), "multi"),
    "pnp-masked": Card("Edit one region", "PnP with a mask: white is edited, black keeps the source exactly.",
                       "SD 1.5", "Plug-and-Play, masked", ("PnPInversion", "PnPCaptureFeatures", "PnPSampler"),
                       "masked"),
    "pnp-expert": Card("PnP with stock samplers", "The injected model into SamplerCustomAdvanced: swap in other "
                       "samplers, guiders and patches.", "SD 1.5", "Plug-and-Play",
                       ("PnPInversion", "PnPCaptureFeatures", "PnPApplyInjection", "PnPSigmas")),
    "pnp-save-load-bank": Card("Capture once, edit again", "Save the feature bank to a file; later runs load it and "
                               "only sample.", "SD 1.5", "Plug-and-Play",
                               ("PnPInversion", "PnPCaptureFeatures", "PnPSaveFeatureBank", "PnPLoadFeatureBank",
                                "PnPSampler"), "twice"),
    "pnp-flux": Card("Edit a photo on Flux.1", "RF-Solver-Edit at its defaults: 25 steps, the first 20 injected, "
                     "guidance 5.", "Flux.1 dev", "RF-Solver-Edit", ("PnPFluxInversion", "PnPFluxSampler")),
    "pnp-flux-advanced": Card("Flux edit, stock samplers", "The Flux edit through SamplerCustomAdvanced, for graphs "
                              "that swap or add parts.", "Flux.1 dev", "RF-Solver-Edit",
                              ("PnPFluxInversion", "PnPFluxApplyInjection", "PnPFluxNoise", "PnPRFSolverSampler")),
    "pnp-flux-fireflow": Card("Fast Flux edit (FireFlow)", "FireFlow's recommended settings: 8 steps, 1 injected, "
                              "18 model evaluations per edit.", "Flux.1 dev", "FireFlow",
                              ("PnPFluxFireFlowInversion", "PnPFluxSampler")),
    "pnp-flux-kv-edit": Card("Edit one region on Flux.1", "KV-Edit: only the masked region is generated; the rest "
                             "stays the source.", "Flux.1 dev", "KV-Edit",
                             ("PnPFluxKVEditInversion", "PnPFluxKVEditSampler"), "masked"),
    "pnp-chroma": Card("Edit a photo on Chroma", "RF-Solver-Edit's rule by analogy on Chroma: 25 steps, 20 "
                       "injected.", "Chroma", "RF-Solver-Edit (analogy)", ("PnPFluxInversion", "PnPFluxSampler")),
    "pnp-hunyuan-video": Card("Edit a video on HunyuanVideo", "RF-Solver-Edit's official video edit: a clip in, "
                              "the edited clip out.", "HunyuanVideo", "RF-Solver-Edit",
                              ("PnPFluxInversion", "PnPFluxSampler"), "video"),
    "pnp-wan-video-edit": Card("Edit a video on Wan 2.1", "UniEdit-Flow at the official Wan demo's settings: a clip "
                               "in, the edited clip out.", "Wan 2.1 1.3B", "UniEdit-Flow", ("PnPUniEdit",), "video"),
    "pnp-flowedit-flux": Card("Edit without inversion (Flux.1)", "FlowEdit at its Flux settings: the source and "
                              "target prompts, no inversion.", "Flux.1 dev", "FlowEdit", ("PnPFlowEdit",)),
    "pnp-sd35-edit": Card("Edit without inversion (SD3.5)", "FlowEdit on SD3.5 medium at its official SD3 "
                          "settings.", "SD3.5 medium", "FlowEdit", ("PnPFlowEdit",)),
    "pnp-qwen-image-edit": Card("Edit without inversion (Qwen)", "FlowEdit with CFG on Qwen-Image, at SD3's "
                                "values by analogy.", "Qwen-Image", "FlowEdit", ("PnPFlowEdit",)),
}


def display_name(node_id: str) -> str:
    """The node's name in the node library: its help page's title (tests/test_node_docs.py keeps them equal)."""
    return (ROOT / "web" / "docs" / f"{node_id}.md").read_text(encoding="utf-8").splitlines()[0].removeprefix("# ")


def wrap(text: str, size: int, width: float, lines: int) -> list[str]:
    """`text` broken into at most `lines` lines of at most `width` (card units) at font `size`."""
    measure = font(size)
    out: list[str] = []
    for word in text.split():
        if out and measure.getlength(f"{out[-1]} {word}") <= width * SCALE:
            out[-1] = f"{out[-1]} {word}"
        else:
            out.append(word)
    if len(out) > lines:
        raise ValueError(f"{text!r} needs {len(out)} lines at size {size}; at most {lines} fit the card")
    return out


class Card2(Canvas):
    """A canvas of the card's size (Canvas draws at SCALE x and shrinks on save)."""

    def __init__(self, side: int):
        super().__init__()
        self.img = Image.new("RGB", (side * SCALE, side * SCALE), "white")
        self.d = ImageDraw.Draw(self.img)


def film(c: Canvas, look: dict, x: int, y: int, side: int, edge):
    """Three frames of a clip, stacked: the last in front."""
    for k in (2, 1, 0):
        c.picture(scene((side - 8) * SCALE, look), x + 4 * k, y - 4 * k, edge)


def node_boxes(nodes, size: int, step: int, margin: int, y: int) -> list[tuple[float, float, float, str]]:
    """Where each node's box goes (x, y, width, display name), rows of `step` from `y`, 18 units between boxes
    on a row for the arrow."""
    boxes, x = [], margin
    for k, node in enumerate(nodes):
        name = display_name(node)
        width = font(size).getlength(name) / SCALE + 12
        gap = 18 if k else 0
        if x + gap + width > SIZE - margin:
            x, y, gap = margin, y + step, 0
        boxes.append((x + gap, y, width, name))
        x += gap + width
    return boxes


def draw(card: Card) -> Image.Image:
    c = Card2(SIZE)
    margin, y = 16, 14
    for line in wrap(card.title, 28, SIZE - 2 * margin, 2):
        c.text((margin, y), line, size=28, bold=True)
        y += 34
    y += 4
    for line in wrap(card.description, 18, SIZE - 2 * margin, 3):
        c.text((margin, y), line, size=18, color=MUTED)
        y += 22
    # The edit: source -> method on the model -> result.
    side, top = 122, y + 12
    left, right = margin + 4, SIZE - margin - 4 - side
    c.box(margin - 6, top - 10, SIZE - margin + 6, top + side + 30, BANK_TINT, BANK_EDGE, radius=8, width=1)
    if card.kind == "video":
        film(c, SOURCE_LOOK, left, top + 6, side - 6, SOURCE_EDGE)
        film(c, TARGET_LOOK, right, top + 6, side - 6, TARGET_EDGE)
    else:
        c.picture(scene(side * SCALE, SOURCE_LOOK), left, top, SOURCE_EDGE)
        if card.kind == "masked":  # the right half edited, the left half the source's
            result = scene(side * SCALE, SOURCE_LOOK)
            result.paste(scene(side * SCALE, TARGET_LOOK).crop((side * SCALE // 2, 0, side * SCALE, side * SCALE)),
                         (side * SCALE // 2, 0))
            c.picture(result, right, top, TARGET_EDGE)
            c.dashes((right + side / 2, top), (right + side / 2, top + side), TARGET_EDGE, width=1)
        elif card.kind == "multi":  # three results, one per prompt
            small = side // 2 - 2
            for k, look in enumerate((TARGET_LOOK, {**SOURCE_LOOK, "sky": (250, 170, 120), "ground": (200, 170, 90)},
                                      {**TARGET_LOOK, "sky": (200, 210, 230), "ground": (240, 240, 245)})):
                c.picture(scene(small * SCALE, look), right + (k % 2) * (small + 4) + (small // 2 + 2 if k == 2 else 0),
                          top + (k // 2) * (small + 4), TARGET_EDGE)
        else:
            c.picture(scene(side * SCALE, TARGET_LOOK), right, top, TARGET_EDGE)
    c.text((left + side / 2, top + side + 7), "source clip" if card.kind == "video" else "source", size=13,
           anchor="ma")
    c.text((right + side / 2, top + side + 7), {"video": "edited clip", "multi": "one edit per prompt"}.get(
        card.kind, "masked edit" if card.kind == "masked" else "edit"), size=13, anchor="ma")
    mid = top + side / 2
    c.arrow((left + side + 6, mid + 8), (right - 6, mid + 8), INK, width=2)
    for k, line in enumerate(wrap(card.method, 13, right - left - side - 10, 2)):
        c.text(((left + side + right) / 2, mid - 32 + 15 * k), line, size=13, anchor="ma", bold=True)
    notes = wrap(card.model, 12, right - left - side - 10, 2) + (["bank saved, reused"] if card.kind == "twice" else [])
    for k, line in enumerate(notes):
        c.text(((left + side + right) / 2, mid + 16 + 15 * k), line, size=12, color=MUTED, anchor="ma")
    # The pack's nodes the graph runs: at 14 px, or 12 px with tighter rows where long names need more rows.
    c.text((margin, top + side + 36), "Nodes", size=13, color=MUTED)
    for size, step in ((14, 28), (12, 24)):
        boxes = node_boxes(card.nodes, size, step, margin, top + side + 54)
        if boxes[-1][1] + step - 6 <= SIZE - 4:
            break
    else:
        raise ValueError(f"{card.title!r}: its nodes do not fit the card")
    for k, (x, y, width, name) in enumerate(boxes):
        if k and x > margin:  # an arrow from the previous node on the same row
            c.arrow((x - 15, y + step // 2 - 3), (x - 3, y + step // 2 - 3), MUTED, width=1, head=5)
        c.box(x, y, x + width, y + step - 6, TARGET_TINT, TARGET_EDGE, radius=5, width=1)
        c.text((x + 6, y + (step - 6 - size) / 2 - 1), name, size=size)
    return c.img.resize((SIZE, SIZE), Image.LANCZOS)


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=QUALITY, optimize=True)
    return out.getvalue()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "workflows")
    args = parser.parse_args()
    for name, card in CARDS.items():
        (args.out_dir / f"{name}.jpg").write_bytes(jpeg(draw(card)))
    print(f"wrote {len(CARDS)} card pictures into {args.out_dir}")


if __name__ == "__main__":
    main()
