"""Sampling the target with injection: the one-call path behind the PnP Sampler node."""
from __future__ import annotations

import comfy.samplers
import latent_preview
import torch

from .. import passes
from ..model_calls import target_rows
from ..errors import PnPError
from ..inputs import check_finite
from . import guidance
from .bank import FeatureBank
from .inversion import to_user_latent
from .patches import apply_injection


def start_latent(model_patcher, bank: FeatureBank) -> dict:
    """The bank's x(sigma_0) as a LATENT: sample it with noise disabled on the bank's schedule."""
    return {"samples": to_user_latent(model_patcher, bank.start)}


def pnp_sample(model_patcher, bank: FeatureBank, positive, negative, cfg: float = 7.5,
               feature_injection: float = 0.8, attention_injection: float = 0.5,
               sampler_name: str = "ddim", negative_alpha: float = 1.0, negative_schedule: str = "constant",
               source_negative=None, mask: torch.Tensor | None = None, inject_outside: bool = True) -> torch.Tensor:
    """Sample the target prompt from the bank's start latent on the bank's schedule.

    With the default negative_alpha 1 / constant this is ordinary CFG with `negative`. Otherwise
    the latent-diffusion negative-prompt schedule applies (docs/pnp.md, section 5): `negative` is the
    unconditional prompt and `source_negative` (default: the source prompt) is blended in.
    """
    check_finite(cfg=cfg)  # the fractions and negative_alpha are range-checked, NaN included
    chosen = passes.sampler(sampler_name)
    patched = apply_injection(model_patcher, bank, feature_injection, attention_injection, mask, inject_outside)
    latent = start_latent(model_patcher, bank)["samples"]
    rows = target_rows(latent.shape[0], positive, negative)
    latent = latent.expand(rows, *latent.shape[1:]).clone()  # one latent per prompt of a prompt batch
    if guidance.is_plain(negative_alpha, negative_schedule):
        guider = comfy.samplers.CFGGuider(patched)
        guider.set_conds(positive, negative)
    else:
        guider = guidance.NegativeScheduleGuider(patched, negative_alpha, negative_schedule)
        guider.set_conds(positive, negative, source_negative_or_prompt(bank, source_negative))
    guider.set_cfg(cfg)
    return passes.sample(guider, latent, chosen, bank.sigmas,
                         callback=latent_preview.prepare_callback(patched, bank.steps))


def source_negative_or_prompt(bank: FeatureBank | None, source_negative):
    """The negative of the schedule: given, or else the source prompt the bank was captured with."""
    if source_negative is not None:
        return source_negative
    if bank is not None and bank.source_prompt is not None:
        return bank.source_prompt
    raise PnPError("The negative-prompt schedule needs a negative prompt: connect `source_negative` "
                   "(a bank loaded from a file does not carry its source prompt).")
