"""Which projections of a Flux-family transformer the flow path reads and overwrites, as data.

Every family of this wing (`families.FAMILIES`: Flux.1, Chroma, Flux.2, HunyuanVideo) has double-
and single-stream blocks with the layout below; Flux.2's single `linear1` holds q, k, v in its first
3 * hidden columns too (then the SwiGLU's gate and up), and HunyuanVideo's single blocks hold the text
after the video tokens (`text_first`). Which family a model is, and what else the family fixes, is
`families`.

Flux.1 has 19 double-stream blocks (image and text tokens in separate weights) and 38
single-stream blocks (text and image tokens concatenated, text first). A *site* is one
projection that produces queries, keys and values: a double block's image attention
`img_attn.qkv` (image tokens only) or a single block's `linear1` (its first 3 * hidden
columns are q, k, v; the rest feed the MLP). A layer set lists sites with the tensors
(q, k, v) and, for single blocks, the tokens (all, or the image tokens after the text).
A tensor is replaced by the source's (the default) or, marked `+`, the source's is added to
it (FireFlow's add_q, add_k, add_v). The official code adds q and k after the block's
QK-norm (FireFlow src/flux/modules/layers.py lines 236, 270-278), so an added q or k is read
and written at the output of the block's `norm.query_norm` / `norm.key_norm`; a replaced q or
k is taken at the projection (the norm of the source's q is the source's normed q).

Presets:
- `rf-solver-edit` (RF-Solver-Edit, Wang et al. 2024): V of all tokens in single blocks
  20-37. Official code (wangjiangshan0725/RF-Solver-Edit at 3388e29),
  FLUX_Image_Edit/src/flux/modules/layers.py lines 235 and 247-252 (the value tensor of the
  single block's qkv, all tokens, kept when `info['id'] > 19`); the ids are set in
  FLUX_Image_Edit/src/flux/model.py lines 107-113 (single blocks counted from 0, so 20-37).
- `fireflow` (FireFlow, Deng et al. 2024): V of all tokens in single blocks 0-37. Official
  code (HolmesShuan/FireFlow-Fast-Inversion-of-Rectified-Flow-for-Image-Semantic-Editing),
  README.md lines 172-173 (`--start_layer_index 0 --end_layer_index 37`, the recommended
  editing settings), src/flux/modules/layers.py lines 239 and 243-245 (the single block's value
  tensor, all tokens, kept for ids from start to end inclusive when `reuse_v`, the default of
  src/edit.py line 277), src/flux/model.py lines 107-113 (single blocks counted from 0). Its
  other strategies (`STRATEGIES`) act on the same blocks.
- `stable-flow` (Avrahami et al. 2025): keys and values of the image tokens in double blocks
  0, 1, 17, 18 and single blocks 6, 9, 34, 35, 37. snap-research/stable-flow at c99ac0e,
  run_stable_flow.py lines 10-11 (single blocks given as [28, 53, 54, 56, 25] - 19), and its
  src/diffusers/models/attention_processor.py lines 1753-1756 (single: tokens from 512 on,
  after the text) and 1827-1830 (double: the image stream's projections).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import PnPError
from ..layer_text import count, excerpt, expand, ranges, read_clauses
from . import families

TENSORS = ("q", "k", "v")


@dataclass(frozen=True)
class Site:
    stream: str                 # "double" (img_attn.qkv) or "single" (linear1)
    block: int
    tensors: tuple[str, ...]    # subset of q, k, v, in that order
    tokens: str = "all"         # "all" or "image"; double sites are image tokens by construction
    added: tuple[str, ...] = ()  # the tensors the source's is added to (the rest are replaced)

    def key(self, tensor: str) -> str:
        return f"{self.stream}.{self.block}.{tensor}"

    def describe(self) -> str:
        tail = "@image" if self.stream == "single" and self.tokens == "image" else ""
        named = ",".join(("+" if t in self.added else "") + t for t in self.tensors)
        return f"{self.stream}.{self.block}:{named}{tail}"


@dataclass(frozen=True)
class FluxLayerSet:
    sites: tuple[Site, ...]

    def keys(self) -> list[str]:
        return [s.key(t) for s in self.sites for t in s.tensors]

    def describe(self) -> str:
        return "; ".join(s.describe() for s in self.sites)

    @property
    def needs_same_text_length(self) -> bool:
        """All-token sites carry the source prompt's text tokens too."""
        return any(s.stream == "single" and s.tokens == "all" for s in self.sites)


def _sites(stream: str, blocks, tensors: str, tokens: str = "all") -> tuple[Site, ...]:
    """Sites of `blocks` with `tensors` as in 'k,v' or '+q,v' ('+': added)."""
    named = [t.strip() for t in tensors.split(",")]
    ordered = tuple(t for t in TENSORS if t in named or "+" + t in named)
    added = tuple(t for t in ordered if "+" + t in named)
    return tuple(Site(stream, b, ordered, "image" if stream == "double" else tokens, added) for b in blocks)


# FireFlow's editing strategies (README.md lines 212-213 and 248-249: `--editing_strategy` with
# `--reuse_v 0`; the demo, camenduru/FireFlow-hf app.py, offers replace_v, add_q and add_k in
# any combination), as the tensors of single blocks 0-37 they keep and how they apply them:
# src/flux/modules/layers.py lines 249-254 keep q, k, v where the strategy's text contains
# 'q', 'k', 'v'; lines 261-278 replace or add each.
STRATEGIES = {
    "replace_v": "v",
    "add_q": "+q",
    "add_k": "+k",
    "add_v": "+v",
    "add_q replace_v": "+q,v",
    "add_k replace_v": "+k,v",
    "add_q add_k": "+q,+k",
    "add_q add_k replace_v": "+q,+k,v",
}
FIREFLOW_BLOCKS = range(0, 38)


def fireflow_preset(strategy: str = "replace_v") -> str:
    """The preset name of FireFlow's layer set for one of its editing strategies."""
    if strategy not in STRATEGIES:
        raise PnPError(f"Unknown FireFlow strategy {strategy!r}: choose one of {list(STRATEGIES)}.")
    return "fireflow" if strategy == "replace_v" else f"fireflow {strategy}"


PRESETS: dict[str, FluxLayerSet] = {
    "rf-solver-edit": FluxLayerSet(_sites("single", range(20, 38), "v")),
    **{fireflow_preset(name): FluxLayerSet(_sites("single", FIREFLOW_BLOCKS, tensors))
       for name, tensors in STRATEGIES.items()},
    "stable-flow": FluxLayerSet(_sites("double", (0, 1, 17, 18), "k,v")
                                + _sites("single", (6, 9, 34, 35, 37), "k,v", "image")),
}
ANALOGY = "rf-solver-edit (by analogy)"
# Offered on PnP Flux/Chroma/HunyuanVideo Inversion; all resolve
PRESET_NAMES = ["rf-solver-edit", ANALOGY, "fireflow", "stable-flow"]


def by_analogy(single_blocks: int) -> FluxLayerSet:
    """RF-Solver-Edit's rule carried to a family without official code: V of all tokens in the second
    half of the single-stream blocks (on Flux.1 the official blocks are 20-37 of 38)."""
    return FluxLayerSet(_sites("single", range(single_blocks // 2, single_blocks), "v"))


# RF-Solver-Edit's official video edit on HunyuanVideo (wangjiangshan0725/RF-Solver-Edit at 3388e29,
# Hunyuanvideo_Video_Edit/hyvideo/modules/models.py lines 347-354: the value tensor of the single
# block's linear1, all tokens, kept and injected when `block_id > 20`; block ids count the 40 single
# blocks from 0, lines 652-653): single blocks 21-39.
HUNYUAN_RF_SOLVER_EDIT = FluxLayerSet(_sites("single", range(21, 40), "v"))


def for_family(preset: str, family: families.Family, single_blocks: int) -> FluxLayerSet:
    """A preset's layers on this family: as published on Flux.1 (and RF-Solver-Edit's own table on
    HunyuanVideo); FireFlow's (every single block) over this model's single blocks; otherwise the
    block numbers are Flux.1's."""
    if family is families.FLUX1:
        return PRESETS[preset]
    if family is families.HUNYUAN_VIDEO and preset == "rf-solver-edit":
        return HUNYUAN_RF_SOLVER_EDIT
    if preset.startswith("fireflow"):
        return FluxLayerSet(tuple(replace(site, block=b) for site in PRESETS[preset].sites[:1]
                                  for b in range(single_blocks)))
    if family is families.HUNYUAN_VIDEO:  # RF-Solver-Edit's video code is HunyuanVideo's official edit
        raise PnPError(f"The {preset!r} layers are the official code's block numbers for Flux.1, and this model is "
                       f"{family.label}, whose official edit (RF-Solver-Edit's video code) has its own layers: choose "
                       f"'rf-solver-edit' (V of all tokens in single blocks 21-39) or give custom_layers.")
    raise PnPError(f"The {preset!r} layers are the official code's block numbers for Flux.1, and this model is "
                   f"{family.label}, for which no official code exists: choose {ANALOGY!r} (V of all tokens in the "
                   f"second half of the single-stream blocks) or give custom_layers.")


def text_first(net) -> bool:
    """Whether the single blocks put the text before the image tokens: all but HunyuanVideo, whose blocks hold
    [video, text] (comfy/ldm/hunyuan_video/model.py, `torch.cat((img, txt), 1)`; the official
    hyvideo/modules/models.py line 650 alike)."""
    return not families.is_hunyuan_video(net)


_EXAMPLE = "single.20-37:v"
_WHAT = "custom Flux layer set"


def _clause(clause: str) -> tuple[str, list[range], list[str], str | None]:
    """'single.6,9:+k,v@image' -> ('single', block ranges, ['+k', 'v'], 'image'), by plain
    splitting (linear time); ValueError where the clause does not follow the grammar."""
    stream, dot, rest = clause.partition(".")
    stream = stream.strip()
    blocks, colon, rest = rest.partition(":")
    tensors, at, tokens = rest.partition("@")
    tokens = tokens.strip() if at else None
    if not dot or stream not in ("double", "single") or not colon or tokens not in (None, "all", "image"):
        raise ValueError(clause)
    spans = ranges(blocks)
    named = [t.strip() for t in tensors.split(",") if t.strip()]
    bare = [t.removeprefix("+").strip() for t in named]
    if not spans or not named or any(t not in TENSORS for t in bare) or len(set(bare)) != len(bare):
        raise ValueError(clause)
    if stream == "double" and tokens == "all":
        raise ValueError(clause)
    return stream, spans, named, tokens


def parse_custom(text: str) -> FluxLayerSet:
    """Read `single.20-37:v` or `double.0,1,17,18:k,v; single.6,9,34,35,37:k,v@image`.

    Linear in the text's length, which is capped (layer_text.MAX_LENGTH); every range is
    checked before it is expanded."""
    clauses = read_clauses(text, _WHAT, _EXAMPLE, _clause, lambda c: count(c[1]),
                           f"Cannot read the Flux layer set {excerpt(text)}. Write clauses separated by ';', each "
                           f"'<double|single>.<blocks>:<tensors>' with blocks like 20-37 or 0,1,17 and tensors from "
                           f"q,k,v "
                           f"(a tensor marked '+' gets the source's added instead of replaced, as FireFlow's add_q); "
                           f"single blocks take '@image' for the image tokens only (default all tokens); double blocks "
                           f"are the image stream. Example: 'double.0,1,17,18:k,v; single.6,9,34,35,37:k,v@image'.")
    sites: list[Site] = []
    for stream, spans, named, tokens in clauses:
        sites.extend(_sites(stream, expand(spans), ",".join(t.replace(" ", "") for t in named), tokens or "all"))
    if not sites:
        raise PnPError("The custom Flux layer set names no layer: give at least one clause, as in 'single.20-37:v'.")
    layers = FluxLayerSet(tuple(sites))
    if len(set(layers.keys())) != len(layers.keys()):
        raise PnPError(f"The custom Flux layer set {excerpt(text)} names a block's tensor twice: list each once.")
    return layers


def resolve(model_patcher, preset: str = "rf-solver-edit", custom: str = "") -> FluxLayerSet:
    """The layer set: the custom text if given, else the preset; checked against the model."""
    family = families.family_of(model_patcher)
    singles = len(model_patcher.model.diffusion_model.single_blocks)
    if custom.strip():
        layers = parse_custom(custom)
    elif preset == ANALOGY:
        layers = by_analogy(singles)
    elif preset in PRESETS:
        layers = for_family(preset, family, singles)
    else:
        raise PnPError(f"Unknown Flux layer preset {preset!r}: choose one of {PRESET_NAMES}.")
    modules(model_patcher.model.diffusion_model, layers)  # raises if a block does not exist
    return layers


def modules(net, layers: FluxLayerSet) -> dict[torch.nn.Module, list[tuple[Site, str]]]:
    """The module whose output holds each site tensor: the site's projection, or for an added
    q or k its block's query or key norm (outputs [batch, heads, tokens, head_dim])."""
    out: dict[torch.nn.Module, list[tuple[Site, str]]] = {}
    for site in layers.sites:
        blocks = net.double_blocks if site.stream == "double" else net.single_blocks
        if not 0 <= site.block < len(blocks):
            raise PnPError(f"This Flux model has {site.stream} blocks 0..{len(blocks) - 1}; {site.stream} block "
                           f"{site.block} does not exist. Choose a preset or blocks within that range.")
        block = blocks[site.block]
        attention = block.img_attn if site.stream == "double" else block
        for tensor in site.tensors:
            if is_normed(site, tensor):
                module = getattr(getattr(attention, "norm", None), f"{'query' if tensor == 'q' else 'key'}_norm", None)
                if module is None:
                    raise PnPError(f"This Flux model's {site.stream} block {site.block} has no QK-norm module to add "
                                   f"the source's {tensor} after; replace {tensor} instead (no '+').")
            else:
                module = block.img_attn.qkv if site.stream == "double" else block.linear1
            out.setdefault(module, []).append((site, tensor))
    return out


def is_normed(site: Site, tensor: str) -> bool:
    """An added q or k acts after the QK-norm (see the module's docstring)."""
    return tensor in site.added and tensor in ("q", "k")


def columns(net, tensor: str) -> slice:
    """The output columns of q, k or v in a qkv projection (layout [3, heads, head_dim])."""
    width = net.hidden_size
    index = TENSORS.index(tensor)
    return slice(index * width, (index + 1) * width)
