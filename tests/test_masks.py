"""Block masks: bounds, coverage of every row and column, independent draws, schedules."""

import numpy as np
import pytest

from llmjepa.data.masks import block_shape, context_scale_at, multiblock, place_block


def test_blocks_reach_the_last_row_and_column():
    rng = np.random.default_rng(0)
    cover = np.zeros((8, 8), int)
    for _ in range(2000):
        cover += place_block(rng, 8, 8, 2, 3)
    assert cover[-1].sum() > 0 and cover[:, -1].sum() > 0, "the last row/column is never sampled"
    # every cell is covered at a rate within a factor of the interior's
    assert cover.min() > 0


def test_scale_and_aspect_are_drawn_independently():
    rng = np.random.default_rng(1)
    shapes = np.array([block_shape(rng, 64, 64, (0.1, 0.3), (0.5, 2.0)) for _ in range(4000)])
    area = shapes[:, 0] * shapes[:, 1]
    aspect = np.log(shapes[:, 0] / shapes[:, 1])
    assert abs(np.corrcoef(area, aspect)[0, 1]) < 0.1
    assert (shapes[:, 0] > shapes[:, 1]).mean() == pytest.approx(0.5, abs=0.05)


def test_multiblock_masks_within_bounds_and_disjoint_from_context():
    rng = np.random.default_rng(2)
    for _ in range(300):
        m = multiblock(rng, 8, 8, 2, (0.15, 0.2), (0.75, 1.5), (0.85, 1.0), 4)
        assert len(m.context) >= 4 and m.context.max() < 64 and m.context.min() >= 0
        for t in m.targets:
            assert len(t) and t.max() < 64
            assert not np.isin(t, m.context).any(), "a target patch is visible in the context"
    sizes = [len(multiblock(rng, 8, 8, 2, (0.15, 0.2), (0.75, 1.5), (0.85, 1.0), 4).context) for _ in range(300)]
    assert 20 <= np.median(sizes) <= 50


def test_multiblock_on_a_non_square_grid():
    rng = np.random.default_rng(3)
    m = multiblock(rng, 4, 2, 1, (0.2, 0.3), (0.75, 1.5), (0.85, 1.0), 1)
    assert m.context.max() < 8 and m.targets[0].max() < 8


def test_impossible_context_names_the_fields():
    with pytest.raises(ValueError, match="min_context"):
        multiblock(np.random.default_rng(0), 2, 2, 1, (0.9, 1.0), (1.0, 1.0), (1.0, 1.0), 4)


@pytest.mark.parametrize("schedule,step,expected", [
    ("constant", 50, (0.85, 1.0)),
    ("linear_up", 0, 0.3), ("linear_up", 99, 1.0), ("linear_up", 33, 0.3 + 0.7 / 3),
    ("linear_down", 0, 1.0), ("linear_down", 99, 0.3),
    ("cosine", 0, 1.0), ("cosine", 99, 1.0), ("cosine", 49.5, 0.3),
])
def test_schedules_give_the_requested_scale(schedule, step, expected):
    lo, hi = context_scale_at(schedule, (0.85, 1.0), step, 100, (0.3, 1.0), width=0.1)
    if isinstance(expected, tuple):
        assert (lo, hi) == expected
    else:
        centre = min(max(expected, 0.05), 1.0)
        assert lo == pytest.approx(max(centre - 0.05, 0.05), abs=1e-9)
        assert hi == pytest.approx(min(centre + 0.05, 1.0), abs=1e-9)


def test_random_schedule_varies_per_batch_within_span():
    rng = np.random.default_rng(4)
    lows = [context_scale_at("random", (0.85, 1.0), s, 100, (0.3, 1.0), rng)[0] for s in range(200)]
    assert min(lows) < 0.35 and max(lows) > 0.85 and np.std(lows) > 0.1
    with pytest.raises(ValueError):
        context_scale_at("random", (0.85, 1.0), 0, 100)
