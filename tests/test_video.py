"""Tests of video clips: dynamics and bounce events, rendering, probe labels and motion texts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from llmjepa.data.render import render_batch
from llmjepa.data.video import (
    CLIP_ATTRIBUTES, DIRECTIONS, SPEED_RANGE, Clip, clip_attributes, clip_caption, make_clip, motion_text,
    render_clip, render_clips, sample_clip, scene_at, simulate,
)
from llmjepa.data.world import COLORS, RADIUS, SHAPES, Obj

VOCAB = re.compile(r"\b(" + "|".join(COLORS + SHAPES + DIRECTIONS) + r"|top|bottom|yes|no|one|two|three)\b")


def _clips(seed: int, n: int, frames: int = 8, max_objects: int = 2) -> list[Clip]:
    rng = np.random.default_rng(seed)
    return [sample_clip(rng, frames, 1, max_objects) for _ in range(n)]


def _steps(clip: Clip, i: int) -> np.ndarray:
    """(T - 1, 2) displacement of object i from each frame to the next."""
    return np.diff(clip.positions[:, i], axis=0)


# hand-made clips -------------------------------------------------------------------------------
# A: a slow small red circle heads left from near the left wall (bounces at frame 2: 0.2, 0.165,
# then 0.13 < r = 0.14 is mirrored to 0.15); a slower large blue square drifts up, far away.
A = make_clip([Obj("circle", "red", "small", 0.2, 0.5, 0), Obj("square", "blue", "large", 0.75, 0.7, 1)],
              [(-0.035, 0.0), (0.0, -0.02)], frames=8, texture_seed=7)
A_TEXTS = {
    "the red circle bounces off the left wall.",
    "the red circle first moves left.",
    "the blue square moves up.",
    "q: which way does the red circle go first? a: left.",
    "q: which way does the blue square go first? a: up.",
    "q: which shape moves faster? a: the red circle.",
    "q: is the red circle slow or fast? a: slow.",
    "q: is the red circle fast or slow? a: slow.",
    "q: is the blue square slow or fast? a: slow.",
    "q: is the blue square fast or slow? a: slow.",
    "q: does the red circle bounce? a: yes.",
    "q: does the blue square bounce? a: no.",
    "q: which wall does the red circle hit first? a: left.",
    "q: do the shapes collide? a: no.",
    "two shapes move; the circle bounces.",
}
# B: two identical small green triangles meet head-on at frame 2 (centres 0.2 apart < 0.28)
B = make_clip([Obj("triangle", "green", "small", 0.3, 0.5, 0), Obj("triangle", "green", "small", 0.7, 0.5, 1)],
              [(0.06, 0.0), (-0.02, 0.0)], frames=4)
B_TEXTS = {"q: do the shapes collide? a: yes.", "two shapes move; both bounce."}  # no way to name either
# C: a fast large yellow square heading down, bouncing only on the last frame (hard to see)
C = make_clip([Obj("square", "yellow", "large", 0.5, 0.3, 0)], [(0.0, 0.075)], frames=8)
C_TEXTS = {
    "the yellow square first moves down.",
    "q: which way does the yellow square go first? a: down.",
    "q: is the yellow square slow or fast? a: fast.",
    "q: is the yellow square fast or slow? a: fast.",
    "one shape moves.",
}


def _texts(clip: Clip, n: int = 300) -> set[str]:
    return {motion_text(clip, np.random.default_rng(s)) for s in range(n)}


# ---------------------------------------------------------------- sampling

def test_same_seed_same_clips_videos_and_texts_other_seed_differs():
    def everything(seed):
        rng = np.random.default_rng(seed)
        clips = [sample_clip(rng, 8, 1, 3) for _ in range(6)]
        videos, labels = render_clips(clips)
        texts = [motion_text(c, rng) for c in clips] + [clip_caption(c, rng) for c in clips]
        facts = [(c.objects, c.positions.tobytes(), c.velocities.tobytes(), c.bounces, c.texture_seed) for c in clips]
        return facts, videos.tobytes(), labels.tobytes(), texts

    a, b, c = everything(3), everything(3), everything(4)
    assert a == b
    assert a[0] != c[0] and a[1] != c[1] and a[3] != c[3]


def test_frames_must_be_even():
    rng = np.random.default_rng(0)
    for frames in (7, 1, 0):
        with pytest.raises(ValueError, match="even"):
            sample_clip(rng, frames)
        with pytest.raises(ValueError, match="even"):
            simulate(A.objects, A.velocities, frames)
    with pytest.raises(ValueError, match="even"):
        Clip(A.objects, A.positions[:7], A.velocities, (), 0, 7)
    assert sample_clip(rng, 4).positions.shape[0] == 4 and sample_clip(rng, 16).frames == 16


def test_clip_checks_its_fields_and_is_read_only():
    with pytest.raises(ValueError, match="fit"):
        Clip(A.objects, A.positions[:, :1], A.velocities, (), 0, 8)
    with pytest.raises(ValueError, match="centres"):
        Clip(A.objects, A.positions[::-1].copy(), A.velocities, (), 0, 8)
    with pytest.raises(ValueError, match="bounce"):
        Clip(A.objects, A.positions, A.velocities, ((0, 0, "left"),), 0, 8)
    with pytest.raises(ValueError, match="bounce"):
        Clip(A.objects, A.positions, A.velocities, ((3, 0, "wall"),), 0, 8)
    with pytest.raises(ValueError):
        A.positions[0, 0, 0] = 0.9


def test_sampled_clips_stay_inside_keep_speeds_and_bounce_in_about_half():
    clips = _clips(0, 400, max_objects=3)
    assert {len(c.objects) for c in clips} == {1, 2, 3}
    for c in clips:
        r = np.array([RADIUS[o.size] for o in c.objects])[None, :, None]
        assert np.all(c.positions >= r - 1e-12) and np.all(c.positions <= 1 - r + 1e-12)
        speeds = np.hypot(*c.velocities.T)
        assert np.all((speeds >= SPEED_RANGE[0]) & (speeds <= SPEED_RANGE[1]))
        walls_only = all(k != "object" for _, _, k in c.bounces)
        if walls_only:  # walls keep every speed: each step is v, or shorter when mirrored
            steps = np.hypot(*np.diff(c.positions, axis=0).transpose(2, 0, 1))
            assert np.all(steps <= speeds + 1e-12)
        for t, i, kind in c.bounces:
            assert 1 <= t < c.frames and 0 <= i < len(c.objects)
    bounced = np.mean([bool(c.bounces) for c in _clips(1, 600)])  # the default 1-2 objects
    assert 0.3 <= bounced <= 0.6, bounced


# ---------------------------------------------------------------- dynamics

def test_wall_bounce_is_recorded_at_its_frame_and_flips_velocity():
    assert A.bounces == ((2, 0, "left"),)
    np.testing.assert_allclose(A.positions[:4, 0, 0], [0.2, 0.165, 0.15, 0.185])
    steps = _steps(A, 0)
    np.testing.assert_allclose(steps[:1, 0], [-0.035])
    np.testing.assert_allclose(steps[2:, 0], 0.035)  # from frame 2 on it moves right
    np.testing.assert_allclose(steps[:, 1], 0.0)
    np.testing.assert_allclose(_steps(A, 1), [[0.0, -0.02]] * 7)

    for side, start, v, axis in (("right", 0.8, 0.05, 0), ("top", 0.2, -0.05, 1), ("bottom", 0.8, 0.05, 1)):
        xy = [0.5, 0.5]
        xy[axis] = start
        vel = [0.0, 0.0]
        vel[axis] = v
        clip = make_clip([Obj("circle", "red", "small", *xy, 0)], [vel])
        # 0.8 -> 0.85 -> 0.9 > 0.86: mirrored to 0.82 at frame 2
        assert clip.bounces == ((2, 0, side),)
        assert np.sign(_steps(clip, 0)[2, axis]) == -np.sign(v)


def test_head_on_discs_bounce_together_and_swap_velocities():
    assert B.bounces == ((2, 0, "object"), (2, 1, "object"))
    np.testing.assert_allclose(_steps(B, 0)[:2], [[0.06, 0.0]] * 2)
    np.testing.assert_allclose(_steps(B, 0)[2], [-0.02, 0.0])  # the other's velocity
    np.testing.assert_allclose(_steps(B, 1)[2], [0.06, 0.0])

    # overlapping discs that move apart do not bounce
    apart = make_clip([Obj("circle", "red", "small", 0.4, 0.5, 0), Obj("circle", "blue", "small", 0.6, 0.5, 1)],
                      [(-0.02, 0.0), (0.02, 0.0)], frames=4)
    assert apart.bounces == ()


def test_glancing_collision_keeps_momentum_and_energy_and_swaps_only_the_normal_part():
    clip = make_clip([Obj("circle", "red", "small", 0.3, 0.45, 0), Obj("circle", "blue", "small", 0.65, 0.55, 1)],
                     [(0.05, 0.0), (-0.01, 0.0)], frames=4)
    assert [(t, k) for t, _, k in clip.bounces] == [(2, "object"), (2, "object")]
    before = np.stack([_steps(clip, 0)[0], _steps(clip, 1)[0]])
    after = np.stack([_steps(clip, 0)[2], _steps(clip, 1)[2]])
    np.testing.assert_allclose(before.sum(0), after.sum(0))  # momentum
    np.testing.assert_allclose((before ** 2).sum(), (after ** 2).sum())  # energy
    d = clip.positions[2, 1] - clip.positions[2, 0]
    n = d / np.linalg.norm(d)
    tangent = np.array([-n[1], n[0]])
    np.testing.assert_allclose(after @ tangent, before @ tangent)  # each keeps its tangential part
    np.testing.assert_allclose(after @ n, (before @ n)[::-1])  # and takes the other's normal part
    assert after[0, 1] < 0 < after[1, 1]  # pushed apart across the line of centres


# ---------------------------------------------------------------- rendering

def test_render_shapes_ranges_and_frames_equal_world_scenes():
    clips = _clips(2, 5, frames=6, max_objects=3)
    videos, labels = render_clips(clips, size=24, patch=4, noise=0.2)
    assert videos.shape == (5, 3, 6, 24, 24) and videos.dtype == np.float32
    assert labels.shape == (5, 6, 6, 6) and labels.dtype == np.int64
    assert videos.min() >= 0.0 and videos.max() <= 1.0
    images, image_labels = render_batch([scene_at(c, t) for c in clips for t in range(6)], 24, 4, 0.2)
    np.testing.assert_array_equal(videos.transpose(0, 2, 1, 3, 4).reshape(30, 3, 24, 24), images)
    np.testing.assert_array_equal(labels.reshape(30, 6, 6), image_labels)
    for c, lab in zip(clips, labels):
        assert lab.max() <= len(c.objects)

    video, label = render_clip(clips[0], size=16, patch=8)
    assert video.shape == (3, 6, 16, 16) and label.shape == (6, 2, 2)
    with pytest.raises(ValueError, match="same number of frames"):
        render_clips([clips[0], sample_clip(np.random.default_rng(0), 4)])
    with pytest.raises(ValueError, match="divisible"):
        render_clips(clips, size=30, patch=4)


def test_patch_labels_follow_the_object_frame_by_frame():
    for shape in ("circle", "square"):
        clip = make_clip([Obj(shape, "cyan", "large", 0.25, 0.7, 0)], [(0.07, -0.045)], frames=8)
        _, labels = render_clip(clip, size=32, patch=4)
        g = 8
        centres = []
        for t in range(clip.frames):
            rows, cols = np.nonzero(labels[t] == 1)
            centre = np.array([(cols + 0.5).mean(), (rows + 0.5).mean()]) / g  # x, y
            np.testing.assert_allclose(centre, clip.positions[t, 0], atol=0.5 / g)
            centres.append(centre)
        assert not np.array_equal(labels[0], labels[-1])
        assert np.hypot(*(centres[-1] - centres[0])) > 0.2


def test_video_pixels_change_only_where_objects_move():
    video, _ = render_clip(A, size=32, patch=4)
    changed = np.any(video[:, 0] != video[:, -1], axis=0)
    c = (np.arange(32) + 0.5) / 32
    near = np.zeros((32, 32), bool)
    for t in (0, A.frames - 1):
        for o, (x, y) in zip(A.objects, A.positions[t]):
            near |= np.hypot(c[None, :] - x, c[:, None] - y) <= o.radius + 1 / 32
    assert changed.any() and not (changed & ~near).any()  # the background is the same in every frame


# ---------------------------------------------------------------- labels and texts

def test_attributes_match_hand_made_clips():
    assert clip_attributes(A) == {"count": 1, "shape": 0, "color": 0, "size": 0, "direction": 0, "speed": 0,
                                  "bounced": 1}
    assert clip_attributes(C) == {"count": 0, "shape": 1, "color": 3, "size": 1, "direction": 3, "speed": 1,
                                  "bounced": 1}
    calm = make_clip([Obj("triangle", "cyan", "small", 0.5, 0.5, 0)], [(0.0, -0.03)])
    assert clip_attributes(calm)["bounced"] == 0 and clip_attributes(calm)["direction"] == DIRECTIONS.index("up")
    seen = {k: set() for k in CLIP_ATTRIBUTES}
    for c in _clips(5, 300, max_objects=3):
        attrs = clip_attributes(c)
        assert attrs.keys() == CLIP_ATTRIBUTES.keys()
        for k, v in attrs.items():
            assert 0 <= v < CLIP_ATTRIBUTES[k]
            seen[k].add(v)
    assert all(len(v) == CLIP_ATTRIBUTES[k] for k, v in seen.items())  # every class shows up


def test_motion_texts_are_right_about_hand_made_clips():
    a = _texts(A)
    assert a <= A_TEXTS, a - A_TEXTS
    assert len(a) >= 12  # every template that applies turns up
    b = _texts(B)
    assert b == B_TEXTS
    c = _texts(C)
    assert c <= C_TEXTS and len(c) >= 4, c - C_TEXTS  # no bounce claims about the last frame
    # near-equal speeds and a near-diagonal heading: no "faster" question, no direction claim
    close = make_clip([Obj("circle", "red", "small", 0.5, 0.3, 0), Obj("square", "blue", "small", 0.5, 0.7, 1)],
                      [(0.03, 0.0), (0.024, 0.021)], frames=4)
    d = _texts(close)
    assert not any("faster" in t or "blue square moves" in t or "way does the blue" in t for t in d), d
    assert "q: which way does the red circle go first? a: right." in d
    # a corner bounce at frame 1: the first visible step goes back out, and no wall is first
    corner = make_clip([Obj("circle", "red", "small", 0.17, 0.145, 0)], [(-0.06, -0.01)])
    assert corner.bounces == ((1, 0, "left"), (1, 0, "top"))
    assert _texts(corner) == {
        "q: is the red circle slow or fast? a: fast.", "q: is the red circle fast or slow? a: fast.",
        "q: does the red circle bounce? a: yes.", "one shape moves; it bounces.",
    }


def test_motion_texts_and_captions_are_short_lowercase_ascii():
    rng = np.random.default_rng(6)
    templates = set()
    for c in _clips(6, 400, max_objects=3):
        text, caption = motion_text(c, rng), clip_caption(c, rng)
        for s in (text, caption):
            assert s.isascii() and s == s.lower() and s.endswith("."), s
        assert 15 <= len(text.encode()) <= 60, text
        assert len(caption) <= 67, caption
        templates.add(" ".join(VOCAB.sub("x", text).split()[:4]))
    assert len(templates) >= 9, templates


def test_captions_describe_motion():
    captions = {clip_caption(A, np.random.default_rng(s)) for s in range(40)}
    assert all("red circle moving left" in c and "blue square moving up" in c for c in captions), captions
    alone = make_clip(A.objects[:1], A.velocities[:1])
    assert any(clip_caption(alone, np.random.default_rng(s)).endswith("bounces off the left wall.") for s in range(40))
    b = clip_caption(B, np.random.default_rng(0))
    assert re.search("green triangle (moving )?right", b) and re.search("green triangle (moving )?left", b), b
