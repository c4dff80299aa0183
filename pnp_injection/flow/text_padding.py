"""HunyuanVideo's text as the official video edit feeds it to the model: every prompt padded to 256 tokens, the
padding masked.

The official code (wangjiangshan0725/RF-Solver-Edit at 3388e29, Hunyuanvideo_Video_Edit/; docs in README.md,
"Video: RF-Solver-Edit on HunyuanVideo"):
- the llava-llama-3 tokenizer pads every prompt on the right to 256 tokens after its template and returns the
  attention mask (hyvideo/config.py line 101 `--text-len 256`; hyvideo/inference.py lines 100-108, max_length =
  256 + the template's crop_start; hyvideo/text_encoder/__init__.py lines 193, 246-259 and 320-332);
- the token refiner pools the mean of the prompt's tokens (hyvideo/modules/token_refiner.py lines 222-228) and
  masks its self-attention: a prompt token attends to the prompt's tokens, a padding token to the first token only
  (lines 143-157);
- the double and single blocks attend with flash_attn_varlen_func over cu_seqlens (hyvideo/modules/attenion.py lines
  30-53 and 103-116; hyvideo/modules/models.py lines 627-631): per row, the video and prompt tokens form one sequence
  and the padding another, each attending within itself;
- V of all tokens, padding included, is kept and put back in single blocks 21-39 (models.py lines 347-354): where the
  target prompt is longer than the source's, its last prompt tokens get the V of the source's padding.

The host (comfy/ldm/hunyuan_video/model.py) gets no padding from its text encoder (the llama tokenizer's min_length
is 1, and an all-ones mask is dropped: comfy/text_encoders/hunyuan_video.py), and an `attention_mask` given to it
does not act as the official one: the refiner pools the plain mean over all tokens (TokenRefiner.forward), a padding
token attends to every prompt token in the refiner and to the video and prompt tokens in the blocks (one key mask
for every query), and a batch of more than one row fails. So, for layers that carry text tokens:
- the inversion's calls are padded here (`length`, `call`): the source prompt with zeros to 256 tokens (zeros: the
  host's own padding, as for Flux.2; the official padding holds the text encoder's output at its pad tokens, which
  no CONDITIONING carries), masked as the official code by two patches scoped to the call: a forward pre-hook gives
  the refiner's context embedder the mean of the prompt's tokens, and an `optimized_attention_override`
  (transformer_options) runs each attention call as the official varlen one. A call that does not run all its
  attention through the override is refused (a host whose HunyuanVideo changed). The bank keeps V of all 256;
- the sampling calls stay unpadded and take the bank's first tokens (`unpadded`): the official target's padding is
  a sequence of its own that the video and the prompt never see, so its V, the source's padding past the target's
  prompt, cannot reach the edit. A target prompt longer than the source's takes the V of the source's padding at
  its last tokens, as in the official code.
Without injection the padding changes nothing (the video and the prompt never see it): the padded inversion gives
the host's velocities, and the calls without PnP's work stay as the host makes them.
"""
from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager

import torch

from ..errors import PnPError
from ..model_calls import outside_compiler
from . import families
from . import layers as flux_layers

OVERRIDE = "optimized_attention_override"  # the host's transformer_options entry (comfy/ldm/modules/attention.py)


def length(net, layers: flux_layers.FluxLayerSet, prompt_tokens: int) -> int:
    """The text tokens of an inversion call: HunyuanVideo's prompt padded to the official 256 where the layers carry
    text tokens; otherwise the prompt's."""
    if not (families.is_hunyuan_video(net) and layers.needs_same_text_length):
        return prompt_tokens
    return families.text_tokens(families.HUNYUAN_VIDEO.name, prompt_tokens)


def unpadded(net, site: flux_layers.Site, source: torch.Tensor, bank_text: int, call_text: int) -> torch.Tensor:
    """The bank's tokens a sampling call takes at a site: on HunyuanVideo's all-token sites, with a target prompt of
    `call_text` tokens shorter than the bank's padded `bank_text`, the first ones (the video, then the text at the
    target prompt's positions). The rest is the source's padding past the target's prompt, which in the official code
    meets only the target's padding, a varlen sequence of its own that the video and the prompt never see: so the
    target needs no padding, and its unpadded call with these values is the official padded one's video."""
    surplus = bank_text - call_text
    if (surplus > 0 and families.is_hunyuan_video(net) and site.stream == "single" and site.tokens == "all"
            and source.shape[1] > surplus):
        return source[:, :source.shape[1] - surplus]
    return source


@torch.compiler.disable
def call(text_tokens: int, hooks, executor, *args, **kwargs):
    """One model call with PnP's forward hooks (model_calls.outside_compiler), its text padded to `text_tokens`
    and masked as the official code where the model is HunyuanVideo and the prompt is shorter."""
    net = executor.class_obj
    if not families.is_hunyuan_video(net):
        return outside_compiler(hooks, executor, *args, **kwargs)
    names = _positional_names(type(net))

    def part(name):
        if name in kwargs:
            return kwargs[name]
        index = names.index(name)
        return args[index] if index < len(args) else None
    context = part("context")
    if context.shape[1] >= text_tokens:
        return outside_compiler(hooks, executor, *args, **kwargs)  # nothing to pad
    check_unmasked(part("attention_mask"))
    padded = torch.cat([context, context.new_zeros(context.shape[0], text_tokens - context.shape[1],
                                                   context.shape[2])], 1)
    masking = OfficialMask(net, context.shape[1], padded, part("transformer_options") or {})
    args, kwargs = list(args), dict(kwargs)
    for name, value in (("context", padded), ("attention_mask", None), ("transformer_options", masking.options)):
        index = names.index(name)
        if name in kwargs or index >= len(args):
            kwargs[name] = value
        else:
            args[index] = value
    with masking.pooling():
        out = outside_compiler(hooks, executor, *args, **kwargs)
    masking.check()
    return out


@functools.cache
def _positional_names(net_class) -> list[str]:
    """The names of the host network's `_forward` arguments (the DIFFUSION_MODEL executor passes them by position)."""
    return list(inspect.signature(net_class._forward).parameters)[1:]  # without self


def check_unmasked(mask: torch.Tensor | None) -> None:
    """The prompt comes whole (the host's HunyuanVideo text encoder drops an all-ones mask): a mask over some of its
    tokens is another node's padding, which the host masks otherwise than the official code."""
    if mask is not None and not bool(((mask == 0) if torch.is_floating_point(mask) else (mask != 0)).all()):
        raise PnPError("This HunyuanVideo prompt carries an attention mask over some of its tokens (another node "
                       "padded it). PnP Flux pads and masks HunyuanVideo's prompts itself, as the official code: "
                       "encode the prompts with CLIP Text Encode and the hunyuan_video text encoders (DualCLIPLoader), "
                       "without nodes that pad or mask the text.")


class OfficialMask:
    """The official masking of one HunyuanVideo call whose text is `padded` after the prompt's `prompt` tokens: the
    refiner's pooling (`pooling`) and every attention call (`options`' override), counted for `check`."""

    def __init__(self, net, prompt: int, padded: torch.Tensor, options: dict):
        self.net, self.prompt, self.padded, self.text = net, prompt, padded, padded.shape[1]
        self.previous = options.get(OVERRIDE)  # another node's override runs on each part
        self.options = {**options, OVERRIDE: self.attention}
        self.refiner_calls = self.block_calls = self.other_calls = self.pooled = 0

    @contextmanager
    def pooling(self):
        """The refiner's context embedder gets the mean of the prompt's tokens (the official masked mean) instead
        of the host's mean over the padded length."""
        def pool(module, args):
            (plain, *rest) = args
            expected = self.padded.float().mean(1)
            if plain.shape != expected.shape or (plain.float() - expected).norm() > 5e-2 * expected.norm() + 1e-6:
                raise self.departure("pools the text otherwise than by its plain mean")
            self.pooled += 1
            return (self.padded[:, :self.prompt].float().mean(1).to(plain), *rest)
        embedder = getattr(getattr(self.net, "txt_in", None), "c_embedder", None)
        if not isinstance(embedder, torch.nn.Module):
            raise self.departure("has no token refiner with a context embedder (txt_in.c_embedder)")
        handle = embedder.register_forward_pre_hook(pool)
        try:
            yield
        finally:
            handle.remove()

    def attention(self, func, *args, **kwargs):
        """The host's attention function, run as the official varlen attention: in the refiner (the text alone) a
        prompt token attends to the prompt's tokens and a padding token to the first token; in the blocks (video
        then text) the video and prompt tokens attend to each other and the padding to itself."""
        q, k, v, *rest = args
        tokens = q.shape[2] if isinstance(q, torch.Tensor) and q.ndim == 4 else None
        if kwargs.get("mask") is not None or not kwargs.get("skip_reshape") or tokens is None or tokens < self.text:
            self.other_calls += 1
            return self.run(func, *args, **kwargs)
        refiner = tokens == self.text
        if refiner:
            self.refiner_calls += 1
        else:
            self.block_calls += 1
        start = self.prompt if refiner else tokens - self.text + self.prompt  # the first padding token
        spans = [(slice(0, start), slice(0, start)),  # the video and prompt tokens (the refiner: the prompt's)
                 (slice(start, tokens), slice(0, 1) if refiner else slice(start, tokens))]  # the padding
        outs = [self.run(func, q[:, :, queries], k[:, :, keys], v[:, :, keys], *rest, **kwargs)
                for queries, keys in spans]
        return torch.cat(outs, 2 if kwargs.get("skip_output_reshape") else 1)  # along the tokens

    def run(self, func, *args, **kwargs):
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def check(self) -> None:
        """Every attention call and the pooling went through the official masking, or the padding leaked. A call
        that did not reach the model (a step cache answered it) had nothing to mask."""
        refiner = len(self.net.txt_in.individual_token_refiner.blocks)
        blocks = len(self.net.double_blocks) + len(self.net.single_blocks)
        counts = (self.refiner_calls, self.block_calls, self.other_calls, self.pooled)
        if counts != (0, 0, 0, 0) and counts != (refiner, blocks, 0, 1):
            raise self.departure(f"ran {self.refiner_calls} of its {refiner} refiner and {self.block_calls} of its "
                                 f"{blocks} block attention calls through ComfyUI's {OVERRIDE} ({self.other_calls} "
                                 f"others) and pooled the text {self.pooled} time(s)")

    def departure(self, what: str) -> PnPError:
        return PnPError(f"PnP Flux pads HunyuanVideo's prompts to {self.text} tokens and masks the padding as the "
                        f"official code, but this ComfyUI's HunyuanVideo {what}: the padding would leak into the edit. "
                        f"Inject the video tokens only (custom_layers 'single.21-39:v@image', no padding needed), or "
                        f"use a ComfyUI version this pack supports.")
