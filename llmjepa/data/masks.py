"""Block masks for the JEPA task: which patches a context copy keeps and which it must predict.

I-JEPA multi-block sampling on a (rows, cols) grid, without the public collator's two bugs: block
tops and lefts range over every valid row and column (the last ones included), and scale and
aspect ratio are drawn independently. Also the context-scale schedule over training.
Pure numpy; the model never samples masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlockMask:
    """Patch indices (row-major into the grid) of one context copy and its target blocks."""

    context: np.ndarray  # (Nc,) sorted patch indices the context copy keeps
    targets: tuple[np.ndarray, ...]  # one (Nt_i,) sorted index array per target block


def block_shape(
    rng: np.random.Generator, rows: int, cols: int, scale: tuple[float, float], aspect: tuple[float, float]
) -> tuple[int, int]:
    """Height and width of a block whose area is a scale fraction of the grid (independent draws)."""
    s = rng.uniform(*scale)
    # aspect log-uniform so that h/w and w/h are drawn symmetrically
    a = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
    area = s * rows * cols
    h = int(round(math.sqrt(area * a)))
    w = int(round(math.sqrt(area / a)))
    return min(max(h, 1), rows), min(max(w, 1), cols)


def place_block(rng: np.random.Generator, rows: int, cols: int, h: int, w: int) -> np.ndarray:
    """Boolean (rows, cols) block whose top-left is uniform over every valid position."""
    top = rng.integers(0, rows - h + 1)  # + 1: the last row can be covered
    left = rng.integers(0, cols - w + 1)
    m = np.zeros((rows, cols), dtype=bool)
    m[top : top + h, left : left + w] = True
    return m


def multiblock(
    rng: np.random.Generator,
    rows: int,
    cols: int,
    num_targets: int,
    target_scale: tuple[float, float],
    target_aspect: tuple[float, float],
    context_scale: tuple[float, float],
    min_context: int,
    max_tries: int = 20,
) -> BlockMask:
    """Sample target blocks, then a context block with the targets cut out of it.

    If the context keeps fewer than `min_context` patches after `max_tries` draws, one target
    block fewer is used (never zero), so that every example still has a JEPA task.
    """
    n = num_targets
    while True:
        for _ in range(max_tries):
            tmasks = [place_block(rng, rows, cols, *block_shape(rng, rows, cols, target_scale, target_aspect))
                      for _ in range(n)]
            union = np.logical_or.reduce(tmasks)
            ch, cw = block_shape(rng, rows, cols, context_scale, (1.0, 1.0))
            ctx = place_block(rng, rows, cols, ch, cw) & ~union
            if ctx.sum() >= min_context:
                return BlockMask(
                    context=np.flatnonzero(ctx),
                    targets=tuple(np.flatnonzero(t) for t in tmasks),
                )
        if n == 1:
            raise ValueError(
                f"cannot leave {min_context} context patches on a {rows}x{cols} grid with "
                f"target_scale {target_scale}; lower masks.min_context or masks.target_scale"
            )
        n -= 1


SCHEDULES = ("constant", "linear_up", "linear_down", "cosine", "random")


def context_scale_at(
    schedule: str,
    base: tuple[float, float],
    step: int,
    total_steps: int,
    span: tuple[float, float] = (0.3, 1.0),
    rng: np.random.Generator | None = None,
    width: float = 0.1,
) -> tuple[float, float]:
    """Context-scale range at a training step.

    constant: `base` throughout. Otherwise a centre s moves within `span` = (a, b) and the range
    is s +- width/2 (clipped to (0.05, 1)): linear_up a -> b, linear_down b -> a, cosine one full
    cycle b -> a -> b (large, small, large), random: s uniform in (a, b) per batch (needs rng).
    """
    if schedule == "constant":
        return base
    a, b = span
    frac = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    if schedule == "linear_up":
        s = a + (b - a) * frac
    elif schedule == "linear_down":
        s = b - (b - a) * frac
    elif schedule == "cosine":
        s = a + (b - a) * 0.5 * (1 + math.cos(2 * math.pi * frac))
    elif schedule == "random":
        if rng is None:
            raise ValueError("the random context schedule needs the batch's rng")
        s = rng.uniform(a, b)
    else:
        raise ValueError(f"unknown context schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    return max(s - width / 2, 0.05), min(s + width / 2, 1.0)
