"""Which Flux.1 projections the Flux path reads and overwrites, as data.

Flux.1 has 19 double-stream blocks (image and text tokens in separate weights) and 38
single-stream blocks (text and image tokens concatenated, text first). A *site* is one
projection that produces queries, keys and values: a double block's image attention
`img_attn.qkv` (image tokens only) or a single block's `linear1` (its first 3 * hidden
columns are q, k, v; the rest feed the MLP). A layer set lists sites with the tensors
(q, k, v) and, for single blocks, the tokens (all, or the image tokens after the text).

Presets:
- `rf-solver-edit` (RF-Solver-Edit, Wang et al. 2024): V of all tokens in single blocks
  20-37. Official code (wangjiangshan0725/RF-Solver-Edit at 3388e29),
  FLUX_Image_Edit/src/flux/modules/layers.py lines 235 and 247-252 (the value tensor of the
  single block's qkv, all tokens, kept when `info['id'] > 19`); the ids are set in
  FLUX_Image_Edit/src/flux/model.py lines 107-113 (single blocks counted from 0, so 20-37).
- `stable-flow` (Avrahami et al. 2025): keys and values of the image tokens in double blocks
  0, 1, 17, 18 and single blocks 6, 9, 34, 35, 37. snap-research/stable-flow at c99ac0e,
  run_stable_flow.py lines 10-11 (single blocks given as [28, 53, 54, 56, 25] - 19), and its
  src/diffusers/models/attention_processor.py lines 1753-1756 (single: tokens from 512 on,
  after the text) and 1827-1830 (double: the image stream's projections).
"""
from __future__ import annotations

from dataclasses import dataclass

import comfy.ldm.flux.model
import comfy.model_base
import comfy.supported_models as sm
import torch

from ..errors import PnPError
from ..layer_text import count, expand, ranges, read_clauses

TENSORS = ("q", "k", "v")
SUPPORTED = ("PnP supports SD 1.x, SD 2.x and SDXL U-Nets (PnP DDIM Inversion and the nodes after it) "
             "and Flux.1 dev/schnell (the PnP Flux nodes)")


@dataclass(frozen=True)
class Site:
    stream: str                 # "double" (img_attn.qkv) or "single" (linear1)
    block: int
    tensors: tuple[str, ...]    # subset of q, k, v, in that order
    tokens: str = "all"         # "all" or "image"; double sites are image tokens by construction

    def key(self, tensor: str) -> str:
        return f"{self.stream}.{self.block}.{tensor}"

    def describe(self) -> str:
        tail = "@image" if self.stream == "single" and self.tokens == "image" else ""
        return f"{self.stream}.{self.block}:{','.join(self.tensors)}{tail}"


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
    return tuple(Site(stream, b, tuple(tensors.split(",")), "image" if stream == "double" else tokens) for b in blocks)


PRESETS: dict[str, FluxLayerSet] = {
    "rf-solver-edit": FluxLayerSet(_sites("single", range(20, 38), "v")),
    "stable-flow": FluxLayerSet(_sites("double", (0, 1, 17, 18), "k,v")
                                + _sites("single", (6, 9, 34, 35, 37), "k,v", "image")),
}
PRESET_NAMES = list(PRESETS)


def check_flux(model_patcher) -> None:
    """Flux.1 (dev, schnell, Kontext: the Flux config with three rope axes), or a clear error."""
    base = model_patcher.model
    config = getattr(base, "model_config", None)
    net = getattr(base, "diffusion_model", None)
    name = type(config).__name__ if config is not None else type(base).__name__
    is_flux1 = (type(base) is comfy.model_base.Flux and type(config) in (sm.Flux, sm.FluxSchnell)
                and type(net) is comfy.ldm.flux.model.Flux and len(net.params.axes_dim) == 3)
    if not is_flux1:
        kind = "a U-Net" if hasattr(net, "output_blocks") else "another transformer family"
        raise PnPError(f"{SUPPORTED}; this model is {name}, {kind}. Load a Flux.1 checkpoint for the PnP Flux "
                       f"nodes, or use PnP DDIM Inversion with an SD 1.x, 2.x or SDXL checkpoint.")


_EXAMPLE = "single.20-37:v"
_WHAT = "custom Flux layer set"


def _clause(clause: str) -> tuple[str, list[range], list[str], str | None]:
    """'single.6,9:k,v@image' -> ('single', block ranges, ['k', 'v'], 'image'), by plain
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
    if not spans or not named or any(t not in TENSORS for t in named) or len(set(named)) != len(named):
        raise ValueError(clause)
    if stream == "double" and tokens == "all":
        raise ValueError(clause)
    return stream, spans, named, tokens


def parse_custom(text: str) -> FluxLayerSet:
    """Read `single.20-37:v` or `double.0,1,17,18:k,v; single.6,9,34,35,37:k,v@image`.

    Linear in the text's length, which is capped (layer_text.MAX_LENGTH); every range is
    checked before it is expanded."""
    clauses = read_clauses(text, _WHAT, _EXAMPLE, _clause, lambda c: count(c[1]),
                           f"Cannot read the Flux layer set {text!r}. Write clauses separated by ';', each "
                           f"'<double|single>.<blocks>:<tensors>' with blocks like 20-37 or 0,1,17 and tensors from q,k,v; "
                           f"single blocks take '@image' for the image tokens only (default all tokens); double blocks "
                           f"are the image stream. Example: 'double.0,1,17,18:k,v; single.6,9,34,35,37:k,v@image'.")
    sites: list[Site] = []
    for stream, spans, named, tokens in clauses:
        ordered = ",".join(t for t in TENSORS if t in named)
        sites.extend(_sites(stream, expand(spans), ordered, tokens or "all"))
    if not sites:
        raise PnPError("The custom Flux layer set names no layer: give at least one clause, as in 'single.20-37:v'.")
    layers = FluxLayerSet(tuple(sites))
    if len(set(layers.keys())) != len(layers.keys()):
        raise PnPError(f"The custom Flux layer set {text!r} names a block's tensor twice: list each once.")
    return layers


def resolve(model_patcher, preset: str = "rf-solver-edit", custom: str = "") -> FluxLayerSet:
    """The layer set: the custom text if given, else the preset; checked against the model."""
    check_flux(model_patcher)
    if custom.strip():
        layers = parse_custom(custom)
    elif preset in PRESETS:
        layers = PRESETS[preset]
    else:
        raise PnPError(f"Unknown Flux layer preset {preset!r}: choose one of {PRESET_NAMES}.")
    modules(model_patcher.model.diffusion_model, layers)  # raises if a block does not exist
    return layers


def modules(net, layers: FluxLayerSet) -> dict[Site, torch.nn.Module]:
    """The projection module of each site."""
    out = {}
    for site in layers.sites:
        blocks = net.double_blocks if site.stream == "double" else net.single_blocks
        if not 0 <= site.block < len(blocks):
            raise PnPError(f"This Flux model has {site.stream} blocks 0..{len(blocks) - 1}; {site.stream} block "
                           f"{site.block} does not exist. Choose a preset or blocks within that range.")
        block = blocks[site.block]
        out[site] = block.img_attn.qkv if site.stream == "double" else block.linear1
    return out


def columns(net, tensor: str) -> slice:
    """The output columns of q, k or v in a qkv projection (layout [3, heads, head_dim])."""
    width = net.hidden_size
    index = TENSORS.index(tensor)
    return slice(index * width, (index + 1) * width)


def signature(model_patcher) -> str:
    """Identifies the architecture a bank was made on: block counts and widths."""
    net = model_patcher.model.diffusion_model
    return (f"flux1:{len(net.double_blocks)}x{len(net.single_blocks)}:hidden{net.hidden_size}:"
            f"heads{net.num_heads}")
