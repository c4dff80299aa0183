"""The Flux feature bank: the inverted latent and the source's projections at each kept step.

Slots follow the official keys (RF-Solver-Edit: FLUX_Image_Edit/src/flux/sampling.py line
102; FireFlow: src/flux/sampling.py line 211): the inversion step from sigma_{i+1} up to
sigma_i stores under its upper end sigma_i; sampling step i (from sigma_i down) reads under
its current level sigma_i. The first and second evaluation of a step are kept apart
(`second_order` in the official keys), for the first `steps_kept` sampling steps:

- rf_solver: both evaluations of each step, slot = 2 * step + evaluation;
- fireflow: the midpoint of each step (the only evaluation most steps make), slot = step. Its
  first evaluations happen at the sampling's first step and the inversion's first step, which
  share a key only when there is one step: then it has one more slot, after the midpoints;
- euler: one evaluation per step, slot = step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import placement, region
from ..errors import PnPError
from ..inputs import check_same_architecture, check_source_size
from ..model_calls import source_rows
from ..recompute import SourceCalls
from ..schedule import SIGMA_RTOL, check_same_schedule, step_at
from . import layers as flux_layers
from . import families, official, text_padding


SCHEDULE_FIX = ("Sample with the same model (and ModelSamplingFlux), steps and scheduler as PnP "
                "Flux/Chroma/HunyuanVideo Inversion at denoise 1.0, or feed the sigmas of PnP "
                "Flux/Chroma/HunyuanVideo Noise to SamplerCustomAdvanced.")


@dataclass(frozen=True, eq=False)
class FeatureBank:
    """Immutable; clones of a patched model share it (see `__deepcopy__`)."""

    sigmas: torch.Tensor                 # (N+1,) sampling schedule, 1 ... 0
    noise: torch.Tensor                  # the inverted latent at sigma_0 = 1, model space [B, C, H, W]
    tables: dict[str, torch.Tensor]      # site key -> [slots, B, tokens, hidden] (placement.MODES: in memory, a
                                         # disk.DiskTable, or a recompute.VirtualTable)
    layers: flux_layers.FluxLayerSet
    solver: str                          # rf_solver, fireflow or euler (solvers.SOLVERS)
    steps_kept: int                      # first sampling steps whose features are held
    text_tokens: int                     # text tokens of the source prompt
    architecture: str                    # families.signature of the inversion model
    path: torch.Tensor | None = None     # the inverted path at sigma_0 ... sigma_N = 0 (the source): [N+1, B, C, H, W]
    mask: torch.Tensor | None = None     # the source latent's noise_mask, if it carried one (KV-Edit: its cells)
    first_step: int = 0                  # the first kept sampling step (KV-Edit: the skipped steps)
    tokens: torch.Tensor | None = None   # the image tokens kept (KV-Edit: the background's); None: all
    calls: SourceCalls | None = None     # bank `recompute`: the inversion's calls the tables are computed again from
    info: str = ""                       # size, placement, kept steps and time, as the node shows them

    @property
    def is_kv_edit(self) -> bool:
        return self.tokens is not None

    @property
    def source_path(self) -> region.SourcePath | None:
        return None if self.path is None else region.SourcePath(self.sigmas, self.path)

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @property
    def slots(self) -> int:
        return slot_count(self.solver, self.steps, self.steps_kept)

    def nbytes(self) -> int:
        return placement.nbytes([*self.tables.values(), self.noise, *([self.path] if self.path is not None else [])])

    def __deepcopy__(self, memo):
        return self

    def slot_at(self, sigma: float, inject: int) -> int | None:
        """The slot serving a model call at `sigma` while sampling, or None (not injected).

        On a schedule sigma it is that step's first evaluation; strictly between sigma_{i+1}
        and sigma_i it is step i's second evaluation (the midpoint). Euler banks serve any
        call within step i from its only slot.
        """
        step = step_at(self.sigmas, sigma)
        if step is None or not self.first_step <= step < self.first_step + inject:
            return None
        on_schedule = math.isclose(sigma, float(self.sigmas[step]), rel_tol=SIGMA_RTOL)
        return slot_index(self.solver, self.steps, step - self.first_step, 0 if on_schedule else 1)

    @property
    def family(self) -> str:
        """The family's name in the bank's signature (flux1, chroma, flux2, hunyuan_video)."""
        return self.architecture.split(":")[0]

    def check_injection(self, model_patcher, inject: int) -> int:
        """The injected step count (`official.AUTO`: every step the bank kept), if this bank can serve it on this
        model, or a clear error."""
        inject = self.steps_kept if inject == official.AUTO else inject
        families.family_of(model_patcher)  # another family stops here with the supported list
        here = families.signature(model_patcher)
        check_same_architecture(self.architecture, here, "Invert the source again")
        if not 0 <= inject <= self.steps:
            raise PnPError(f"`inject` is {inject}; the schedule has {self.steps} steps: give 0 to {self.steps}, or -1 "
                           f"(auto) for every step the bank kept.")
        if inject > self.steps_kept:
            raise PnPError(f"`inject` {inject} needs the source's features at {inject} steps but the bank holds "
                           f"{self.steps_kept}: raise `keep_steps` in PnP Flux/Chroma/HunyuanVideo Inversion to at "
                           f"least {inject}.")
        return inject

    def check_schedule(self, sigmas: torch.Tensor, inject: int) -> None:
        """The sampler's sigmas must start with the bank's over the injected steps, sigma_0
        included: the inverted latent is the noise at sigma_0."""
        check_same_schedule(self.sigmas[self.first_step:], sigmas, inject + 1, "Flux feature bank", SCHEDULE_FIX)

    def check_latent(self, shape, what: str = "latent") -> None:
        """Size and batch of a latent the bank can serve: the source's size, 1 row or the bank's rows."""
        check_source_size(shape, self.noise.shape, what)
        source_rows(self.noise.shape[0], shape[0], f"{what} batch")

    def check_text(self, tokens: int, mask: torch.Tensor | None = None) -> None:
        """All-token layers carry the source's text tokens: the target must have as many (counted as
        the model call sees them: Flux.2 pads its prompts to 512; HunyuanVideo's source was padded to
        256 and a target up to that length takes its first tokens, text_padding.py), and on
        HunyuanVideo no padding `mask` of another node's."""
        family = self.family
        if self.layers.needs_same_text_length and family in families.PADDED_HERE:
            text_padding.check_unmasked(mask)
        tokens = families.text_tokens(family, tokens, self.text_tokens)
        if self.layers.needs_same_text_length and tokens != self.text_tokens:
            fix = {"chroma": "Chroma's text encoder does not pad: word both prompts to the same token count",
                   "hunyuan_video": f"PnP Flux pads HunyuanVideo's prompts as the official code, the source to "
                                    f"{self.text_tokens} tokens, and a target may be as long (the official code cuts "
                                    f"every prompt at 256): shorten the target prompt to at most {self.text_tokens} "
                                    f"llava-llama-3 tokens"}.get(
                family, "Keep both prompts under 256 T5 tokens (ComfyUI pads them to 256)")
            raise PnPError(f"The target prompt encodes to {tokens} text tokens but the source prompt to "
                           f"{self.text_tokens}; the layers {self.layers.describe()!r} replace all tokens, text "
                           f"included. {fix}, or use image-token layers (custom_layers with '@image').")

    def noise_for(self, batch: int) -> torch.Tensor:
        """The inverted latent for a target batch (a single source broadcasts)."""
        self.check_latent((batch, *self.noise.shape[1:]), "noise")
        return self.noise.expand(batch, *self.noise.shape[1:]).clone()


def slot_count(solver: str, steps: int, kept: int) -> int:
    """Slots of a bank keeping the first `kept` of `steps` sampling steps (see the module's docstring)."""
    if solver == "rf_solver":
        return 2 * kept
    if solver == "fireflow":
        return kept + (1 if steps == 1 and kept else 0)
    return kept


def slot_index(solver: str, steps: int, step: int, evaluation: int) -> int | None:
    """The slot of `evaluation` (0: at the step's start, 1: midpoint) of sampling step `step`,
    or None where the bank's solver keeps nothing for it."""
    if solver == "rf_solver":
        return 2 * step + evaluation
    if solver == "fireflow":
        if evaluation == 1:
            return step
        return 1 if steps == 1 and step == 0 else None
    return step


def inversion_slot(sigmas: torch.Tensor, sigma: float, solver: str, kept: int, first: int = 0) -> int | None:
    """The slot an inversion call at `sigma` fills, or None (not kept).

    The inversion step from sigma_{i+1} up to sigma_i is stored under its upper end sigma_i (the
    official keys, see the module's docstring): its first evaluation is at sigma_{i+1}, its
    second (the midpoint) strictly between the two. Steps `first` <= i < `first` + `kept` are kept."""
    lower = sigmas[1:]
    at_or_below = (lower <= sigma * (1 + SIGMA_RTOL)).nonzero()
    if not len(at_or_below):
        return None
    step = int(at_or_below[0])
    if not first <= step < first + kept:
        return None
    on_schedule = math.isclose(sigma, float(lower[step]), rel_tol=SIGMA_RTOL, abs_tol=1e-9)
    return slot_index(solver, len(sigmas) - 1, step - first, 0 if on_schedule else 1)


def estimate_bytes(model_patcher, layers: flux_layers.FluxLayerSet, latent_shape, text_tokens: int,
                   slots: int, image_tokens: int | None = None) -> int:
    """The bank's size before any model work: every site tensor, its tokens (the image tokens kept,
    by default all of them, plus the text tokens for all-token single sites) by the hidden width,
    for every slot and row."""
    net = model_patcher.model.diffusion_model
    image = image_count(latent_shape, net.patch_size) if image_tokens is None else image_tokens
    size = placement.compute_dtype(model_patcher).itemsize
    def tokens(site) -> int:  # all-token single sites also keep the text tokens
        return image + (text_tokens if site.stream == "single" and site.tokens == "all" else 0)

    per_slot = sum(len(site.tensors) * tokens(site) for site in layers.sites)
    return slots * latent_shape[0] * per_slot * net.hidden_size * size


def image_count(latent_shape, patch=2) -> int:
    """The image (or video) tokens for a latent: patches of 2x2 cells, padded (Flux.1, Chroma), one
    per cell (Flux.2, patch size 1), or 1x2x2 over frames, height and width (HunyuanVideo)."""
    dims = list(latent_shape[2:])
    sizes = list(patch) if isinstance(patch, (list, tuple)) else [patch] * len(dims)
    return math.prod(math.ceil(d / p) for d, p in zip(dims, sizes[-len(dims):]))
