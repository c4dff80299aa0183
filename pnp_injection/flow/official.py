"""The official settings of the flow wing's methods on each family: what a node's `auto` (-1) takes.

- RF-Solver-Edit on Flux.1: 25 steps, the first 20 injected, the target at Flux guidance 5
  (wangjiangshan0725/RF-Solver-Edit @ 3388e29, FLUX_Image_Edit/src/edit.py lines 236-241).
- RF-Solver-Edit on HunyuanVideo: 25 steps, 2 injected, embedded guidance 6 (the official example,
  Hunyuanvideo_Video_Edit/scripts/run_jeep.sh lines 3, 9 and 10; the README, line 57, suggests 1 to 5 injected
  steps).
- FireFlow: 8 steps, 1 injected, guidance 2 (HolmesShuan/FireFlow-Fast-Inversion-of-Rectified-Flow-for-Image-
  Semantic-Editing, README.md lines 168-176), on every family.
- Chroma and Flux.2 have no official code: RF-Solver-Edit's Flux.1 settings carry over (Chroma has no distilled
  guidance, so its guidance value is not used).

The inversion runs at guidance 1 (edit.py line 157; FireFlow the same; KV-Edit 1.5), the inversion nodes' default.
"""
from __future__ import annotations

from dataclasses import dataclass

AUTO = -1  # a node input left at "auto"


@dataclass(frozen=True)
class Settings:
    steps: int
    inject: int
    guidance: float


RF_SOLVER_EDIT = Settings(steps=25, inject=20, guidance=5.0)
RF_SOLVER_EDIT_VIDEO = Settings(steps=25, inject=2, guidance=6.0)
FIREFLOW = Settings(steps=8, inject=1, guidance=2.0)


def settings(family: str, solver: str) -> Settings:
    """The official settings for a family (its name in bank signatures: flux1, chroma, flux2, hunyuan_video) and a
    solver (rf_solver, fireflow, euler)."""
    if solver == "fireflow":
        return FIREFLOW
    return RF_SOLVER_EDIT_VIDEO if family == "hunyuan_video" else RF_SOLVER_EDIT


def steps(value: int, family: str, solver: str) -> int:
    return settings(family, solver).steps if value == AUTO else value


def kept(value: int, steps_: int, family: str, solver: str) -> int:
    """Steps whose features a bank keeps: AUTO keeps the steps the official edit injects (at most `steps_`)."""
    return min(settings(family, solver).inject, steps_) if value == AUTO else value


def guidance(value: float, family: str, solver: str) -> float:
    return settings(family, solver).guidance if value == AUTO else value

