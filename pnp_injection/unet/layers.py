"""Which U-Net layers PnP reads and overwrites, per architecture, as data.

A layer set names decoder (ComfyUI `output_blocks`) ResBlocks whose residual branch is
injected, and (block, transformer index) pairs whose self-attention queries and keys are
injected. docs/pnp.md, sections 3 and 6. Which family a model is (the tables' key) is `families`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PnPError
from ..layer_text import count, excerpt, expand, ranges, read_clauses
from . import families


@dataclass(frozen=True)
class LayerSet:
    resblocks: tuple[int, ...]
    attention: tuple[tuple[int, int], ...]


# The paper's layers: ResBlock of decoder layer 4, self-attention of decoder layers 4..11.
PAPER_SD = LayerSet(resblocks=(4,), attention=tuple((b, 0) for b in range(4, 12)))
# SDXL (no official port): output block 0 is at SD's layer-4 relative resolution; q/k of
# every transformer of output blocks 0..2, as Ctrl-X uses for structure (docs/pnp.md, section 6).
SDXL_STRUCTURE = LayerSet(resblocks=(0,), attention=((0, -1), (1, -1), (2, -1)))  # -1: all

# Architecture family -> preset name -> layer set. `auto` picks the family's first entry.
PRESETS: dict[str, dict[str, LayerSet]] = {
    "sd1": {"paper": PAPER_SD},
    "sd2": {"paper": PAPER_SD},
    "sdxl": {"ctrl-x": SDXL_STRUCTURE},
}
PRESET_NAMES = ["auto", "paper", "ctrl-x"]


_EXAMPLE = "res:output.4; attn:output.4-11@0"
_WHAT = "custom layer set"


def _clause(clause: str) -> tuple[str, list[range], list[range]]:
    """'attn : output.4-11@0' -> ('attn', block ranges, index ranges), by plain splitting (linear
    time), nothing expanded; `@*` is index -1, a ResBlock clause has index ranges [range(1)] for
    counting. ValueError where the clause does not follow the grammar."""
    kind, colon, rest = clause.partition(":")
    kind, rest = kind.strip(), rest.strip()
    if not colon or kind not in ("res", "attn") or not rest.startswith("output."):
        raise ValueError(clause)
    blocks, at, index = rest[len("output."):].partition("@")
    block_spans = ranges(blocks)
    if not block_spans or (kind == "res" and at):
        raise ValueError(clause)
    if kind == "res":
        return kind, block_spans, [range(1)]
    index = index.strip() or "0"
    index_spans = [range(-1, 0)] if index == "*" else ranges(index)
    if not index_spans:
        raise ValueError(clause)
    return kind, block_spans, index_spans


def parse_custom(text: str) -> LayerSet:
    """Parse `res:output.4; attn:output.4-11@0` (attn index `@i`, default 0, `@*` = all).

    Linear in the text's length, which is capped (layer_text.MAX_LENGTH); every range is
    checked before it is expanded."""
    clauses = read_clauses(text, _WHAT, _EXAMPLE, _clause, lambda c: count(c[1]) * count(c[2]),
                           f"Cannot read the custom layer set {excerpt(text)}. Write it as "
                           f"'res:output.4; attn:output.4-11@0' (ResBlocks by output block number; attention "
                           f"as output blocks @ transformer index, '@*' for all).")
    res: list[int] = []
    attn: list[tuple[int, int]] = []
    for kind, blocks, indices in clauses:
        if kind == "res":
            res.extend(expand(blocks))
        else:
            index_list = expand(indices)
            attn.extend((b, i) for b in expand(blocks) for i in index_list)
    if not res and not attn:
        raise PnPError("The custom layer set names no layer: give at least one clause, as in "
                       "'res:output.4; attn:output.4-11@0'.")
    return LayerSet(tuple(res), tuple(attn))


def resolve(model_patcher, preset: str = "auto", custom: str = "") -> LayerSet:
    """The layer set for a model: a preset of its family, or the custom text if given."""
    family = families.family_of(model_patcher)
    if custom.strip():
        layers = parse_custom(custom)
    else:
        table = PRESETS.get(family)
        if table is None:
            raise PnPError(
                f"No layer table for {family}: give a custom layer set "
                f"(e.g. 'res:output.4; attn:output.4-11@0')."
            )
        if preset == "auto":
            layers = next(iter(table.values()))
        elif preset in table:
            layers = table[preset]
        else:
            raise PnPError(f"The preset {preset!r} is not for {family}; choose one of {['auto', *table]}.")
    return expand_all_indices(model_patcher.model.diffusion_model, layers)


def expand_all_indices(unet, layers: LayerSet) -> LayerSet:
    """Replace `@*` entries (index -1) by every transformer of the block, then check all exist."""
    attn: list[tuple[int, int]] = []
    for block, index in layers.attention:
        count = len(_transformer(unet, block).transformer_blocks)
        attn.extend((block, i) for i in range(count)) if index == -1 else attn.append((block, index))
    layers = LayerSet(layers.resblocks, tuple(attn))
    check_exist(unet, layers)
    return layers


def _block(unet, block: int):
    blocks = unet.output_blocks
    if not 0 <= block < len(blocks):
        raise PnPError(
            f"This U-Net has output blocks 0..{len(blocks) - 1}; output block {block} does not "
            f"exist. Choose the `auto` layers or a custom set within that range."
        )
    return blocks[block]


def _resblock(unet, block: int):
    for m in _block(unet, block):
        if hasattr(m, "out_layers"):
            return m
    raise PnPError(f"Output block {block} has no ResBlock: remove it from the `res:` layers.")


def _transformer(unet, block: int):
    for m in _block(unet, block):
        if hasattr(m, "transformer_blocks"):
            return m
    raise PnPError(f"Output block {block} has no attention: remove it from the `attn:` layers.")


def residual_module(unet, block: int) -> torch.nn.Module:
    """The last conv of the ResBlock's residual branch (`out_layers`): its output is F."""
    return _resblock(unet, block).out_layers[-1]


def attention_module(unet, key: tuple[int, int]) -> torch.nn.Module:
    """The self-attention (attn1) of transformer `index` in output block `block`."""
    block, index = key
    blocks = _transformer(unet, block).transformer_blocks
    if not 0 <= index < len(blocks):
        raise PnPError(
            f"Output block {block} has transformers 0..{len(blocks) - 1}; index {index} does not exist."
        )
    return blocks[index].attn1


def check_exist(unet, layers: LayerSet) -> None:
    for b in layers.resblocks:
        residual_module(unet, b)
    for key in layers.attention:
        attention_module(unet, key)


def signature(model_patcher, layers: LayerSet) -> str:
    """Identifies the architecture a bank was captured on: family and config (`families.model_name`) plus the
    shapes of the layers it touches (here, since they are the layer set's)."""
    name = families.model_name(model_patcher)  # first: a model without a U-Net is refused by its family
    unet = model_patcher.model.diffusion_model
    shapes = [tuple(residual_module(unet, b).weight.shape) for b in layers.resblocks]
    shapes += [tuple(attention_module(unet, key).to_q.weight.shape) for key in layers.attention]
    return f"{name}:{shapes}"


def output_resolution(unet, block: int, height: int, width: int) -> tuple[int, int]:
    """The latent-grid size at output block `block`'s ResBlock for a latent of height x width:
    the encoder halves it (rounding up) at each Downsample, and every Upsample of the output
    blocks before `block` climbs back one level."""
    sizes = [(height, width)]
    for module in unet.input_blocks.modules():
        if type(module).__name__ == "Downsample":
            h, w = sizes[-1]
            sizes.append((-(-h // 2), -(-w // 2)))
    ups = sum(type(m).__name__ == "Upsample" for b in unet.output_blocks[:block] for m in b.modules())
    return sizes[len(sizes) - 1 - ups]
