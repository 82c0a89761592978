"""Small specs and random layouts shared by the tests."""

from __future__ import annotations

import numpy as np

from llmjepa.data.layout import CONTEXT, IMAGE, TARGET, Example, Item, Pair, grid_coords, media_segment, text_segment
from llmjepa.specs import ExperimentSpec, load_experiment

TINY = [
    "model.dim=32", "model.depth=2", "model.heads=2", "predictor.dim=16", "predictor.depth=1",
    "predictor.heads=2", "data.batch_size=4", "train.steps=6", "train.warmup=2", "train.log_every=2",
    "train.grad_norm_every=3", "eval.every=3", "eval.probe_every=6", "eval.collapse_size=16",
    "eval.probe_train=24", "eval.probe_test=16", "eval.attentive_steps=5", "eval.knn=3",
    "eval.batch_size=16", "tracking.enabled=false",
]


def tiny_spec(*overrides: str) -> ExperimentSpec:
    return load_experiment(None, TINY + list(overrides))


def random_example(rng: np.random.Generator, grid: int = 3) -> Example:
    """A random interleaving of text, several items, several contexts per item and pairs."""
    ex = Example(segments=[text_segment(rng.integers(0, 256, rng.integers(1, 4)))])
    for _ in range(rng.integers(1, 4)):
        ex.items.append(Item(IMAGE, np.zeros((3, 4 * grid, 4 * grid), np.float32), grid_coords(grid, grid)))
        idx = len(ex.items) - 1
        ctxs = []
        for _ in range(rng.integers(0, 3)):
            keep = rng.choice(grid * grid, rng.integers(1, grid * grid), replace=False)
            ex.segments.append(media_segment(CONTEXT, idx, ex.items, keep))
            ctxs.append(len(ex.segments) - 1)
        ex.segments.append(media_segment(TARGET, idx, ex.items))
        ex.pairs += [Pair(c, len(ex.segments) - 1, np.arange(2)) for c in ctxs]
        if rng.random() < 0.7:
            ex.segments.append(text_segment(rng.integers(0, 256, rng.integers(1, 5))))
    return ex
