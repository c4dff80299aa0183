"""The negative-prompt schedule of the latent-diffusion PnP code (docs/pnp.md, section 5).

    eps_u~_i = alpha_i * eps(x, "") + (1 - alpha_i) * eps(x, c_neg)
    eps      = eps_u~_i + w * (eps(x, c_pos) - eps_u~_i)

alpha_i = alpha * s_i with s linear 1 - i/(N-1), constant 1, or exp exp(-6 i/(N-1)).
The combination is linear, so it is applied to the denoised outputs as ComfyUI's CFG is.
"""
from __future__ import annotations

import math

import comfy.samplers

from ..errors import PnPError
from ..inputs import check_number
from ..model_calls import call_sigma
from ..schedule import step_at
from .families import family_of

SCHEDULES = ["constant", "linear", "exp"]


def negative_weight(alpha: float, schedule: str, step: int, steps: int) -> float:
    """alpha_i: the weight of the unconditional ("") prediction at step i of N."""
    t = step / (steps - 1) if steps > 1 else 0.0
    if schedule == "constant":
        return alpha
    if schedule == "linear":
        return alpha * (1.0 - t)
    if schedule == "exp":
        return alpha * math.exp(-6.0 * t)
    raise PnPError(f"Unknown negative schedule {schedule!r}; choose one of {SCHEDULES}.")


def is_plain(alpha: float, schedule: str) -> bool:
    """alpha 1 with the constant schedule is ordinary classifier-free guidance."""
    return alpha == 1.0 and schedule == "constant"


def marked_negative(conditioning):
    """`conditioning` as a negative-type prompt (what ComfyUI encodes its `negative` as; SDXL's
    refiner, for one, reads it for the aesthetic score)."""
    return [[tensor, {**extras, "prompt_type": "negative"}] for tensor, extras in conditioning]


def blended(empty: list[dict] | None, negative: list[dict] | None, weight: float) -> list[dict] | None:
    """One unconditional prompt whose prediction is `weight * eps(empty) + (1 - weight) * eps(negative)`.

    ComfyUI predicts a prompt of several entries as their strength-weighted average, so each
    entry of `empty` gets strength `weight * s / S_empty` and each entry of `negative`
    `(1 - weight) * s / S_negative` (s its own strength, S its prompt's total). For prompts
    without areas or masks that is docs/pnp.md section 5's blend exactly. A prompt of weight 0 is left out
    (and costs no evaluation), so weight 1 is the empty prompt itself: ordinary CFG.
    """
    parts = [(group, w) for group, w in ((empty, weight), (negative, 1.0 - weight)) if group and w != 0.0]
    if len(parts) == 1:
        return parts[0][0]
    out = []
    for group, w in parts:
        total = sum(entry.get("strength", 1.0) for entry in group) or 1.0
        out += [{**entry, "strength": entry.get("strength", 1.0) * w / total} for entry in group]
    return out or None


class NegativeScheduleGuider(comfy.samplers.CFGGuider):
    """CFG whose unconditional prediction blends the empty prompt with a negative prompt
    (by default the source prompt) by a weight that follows the sampling steps.

    The blend is a single unconditional prompt (both parts are chunks of kind 1, "uncond", in
    `cond_or_uncond`), handed to ComfyUI's own `sampling_function`: the model's pre-CFG,
    CFG and post-CFG functions (PAG, SAG, RescaleCFG, ...) run exactly as under CFGGuider,
    and see the blended prediction as the unconditional one."""

    def __init__(self, model_patcher, alpha: float = 1.0, schedule: str = "linear"):
        family_of(model_patcher)  # DiT/flow models get the clear error here too
        if not 0.0 <= alpha <= 1.0:
            raise PnPError(f"`negative_alpha` is {alpha}; give a value in [0, 1].")
        negative_weight(alpha, schedule, 0, 2)  # validates the schedule name
        super().__init__(model_patcher)
        self.alpha, self.schedule = alpha, schedule

    def set_cfg(self, cfg):
        super().set_cfg(check_number(cfg, "cfg"))

    def set_conds(self, positive, unconditional, negative):
        self.inner_set_conds({"positive": positive, "negative": unconditional,
                              "source_negative": marked_negative(negative)})

    def weight_at(self, timestep, model_options) -> float:
        """alpha_i of the step this call belongs to (step 0 above the schedule's first sigma)."""
        sigmas = model_options["transformer_options"]["sample_sigmas"]
        step = step_at(sigmas, call_sigma(model_options["transformer_options"], timestep))
        return negative_weight(self.alpha, self.schedule, step or 0, len(sigmas) - 1)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        unconditional = blended(self.conds.get("negative"), self.conds.get("source_negative"),
                                self.weight_at(timestep, model_options))
        return comfy.samplers.sampling_function(self.inner_model, x, timestep, unconditional,
                                                self.conds.get("positive"), self.cfg,
                                                model_options=model_options, seed=seed)
