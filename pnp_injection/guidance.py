"""The negative-prompt schedule of the latent-diffusion PnP code (spec section 5).

    eps_u~_i = alpha_i * eps(x, "") + (1 - alpha_i) * eps(x, c_neg)
    eps      = eps_u~_i + w * (eps(x, c_pos) - eps_u~_i)

alpha_i = alpha * s_i with s linear 1 - i/(N-1), constant 1, or exp exp(-6 i/(N-1)).
The combination is linear, so it is applied to the denoised outputs as ComfyUI's CFG is.
"""
from __future__ import annotations

import math

import comfy.samplers

from .errors import PnPError
from .layers import family_of
from .schedule import step_at

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


class NegativeScheduleGuider(comfy.samplers.CFGGuider):
    """CFG whose unconditional prediction blends the empty prompt with a negative prompt
    (by default the source prompt) by a weight that follows the sampling steps."""

    def __init__(self, model_patcher, alpha: float = 1.0, schedule: str = "linear"):
        family_of(model_patcher)  # DiT/flow models get the clear error here too
        if not 0.0 <= alpha <= 1.0:
            raise PnPError(f"`negative_alpha` is {alpha}; give a value in [0, 1].")
        negative_weight(alpha, schedule, 0, 2)  # validates the schedule name
        super().__init__(model_patcher)
        self.alpha, self.schedule = alpha, schedule

    def set_conds(self, positive, unconditional, negative):
        self.inner_set_conds({"positive": positive, "negative": unconditional, "source_negative": negative})

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        sigmas = model_options["transformer_options"]["sample_sigmas"]
        step = step_at(sigmas, float(timestep.reshape(-1)[0]))
        weight = negative_weight(self.alpha, self.schedule, step or 0, len(sigmas) - 1)
        positive, empty, negative = comfy.samplers.calc_cond_batch(
            self.inner_model, [self.conds.get("positive"), self.conds.get("negative"),
                               self.conds.get("source_negative")], x, timestep, model_options)
        unconditional = weight * empty + (1.0 - weight) * negative
        return unconditional + self.cfg * (positive - unconditional)
