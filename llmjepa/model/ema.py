"""The EMA target encoder of the I-JEPA baseline: a frozen copy updated by momentum.

Only the `ema` target mode uses it; the article's method needs none.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def make_ema(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema.eval()


def momentum_at(step: int, total_steps: int, ramp: tuple[float, float]) -> float:
    """Linear momentum ramp from ramp[0] at step 0 to ramp[1] at the last step."""
    frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return ramp[0] + (ramp[1] - ramp[0]) * frac


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, momentum: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach(), 1.0 - momentum)
