"""Rendering of world scenes to small RGB images with per-patch object labels.

Owns all drawing: a per-scene textured nuisance background (seeded only by the scene's
texture_seed, so it says nothing about the objects), shape masks computed with numpy over
a pixel grid for a whole batch at once, back-to-front compositing and patch labelling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmjepa.data.world import COLOR_RGB, RADIUS, SHAPES, Scene

_WAVES = 3  # low-frequency sinusoids summed into the background texture
_PIXEL_NOISE = 0.4  # std of the fine pixel noise, as a fraction of `noise`
_SQUARE_HALF_SIDE = 0.8  # of the radius; circles and squares then have similar areas


def _background(scenes: Sequence[Scene], size: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Greyish tinted sinusoid texture (B, 3, S, S) and uniform pixel noise of unit std (B, 3, S, S)."""
    n = len(scenes)
    base = np.empty((n, 3))
    freq, angle, phase = np.empty((n, _WAVES)), np.empty((n, _WAVES)), np.empty((n, _WAVES))
    mix = np.empty((n, 3, _WAVES))
    grain = np.empty((n, 3, size, size), dtype=np.float32)
    for i, scene in enumerate(scenes):
        rng = np.random.Generator(np.random.PCG64(scene.texture_seed))  # = default_rng(seed), faster
        base[i] = rng.uniform(0.3, 0.6) + rng.uniform(-0.06, 0.06, size=3)
        freq[i] = rng.uniform(0.7, 3.0, size=_WAVES)
        angle[i] = rng.uniform(0.0, np.pi, size=_WAVES)
        phase[i] = rng.uniform(0.0, 2.0 * np.pi, size=_WAVES)
        mix[i] = rng.uniform(0.4, 1.0, size=(3, _WAVES))
        grain[i] = rng.random((3, size, size), dtype=np.float32)
    # cos(kx*x + ky*y + phase) = cos(X)cos(Y) - sin(X)sin(Y) is separable, so the channel
    # mixes of all waves are one batched (S, 2W) @ (2W, S) product per channel
    u = 2.0 * np.pi * (np.arange(size) + 0.5) / size
    ax = (freq * np.cos(angle))[..., None] * u + phase[..., None]  # (B, W, S), along x
    ay = (freq * np.sin(angle))[..., None] * u  # (B, W, S), along y
    rows = np.concatenate([np.cos(ay), -np.sin(ay)], axis=1)  # (B, 2W, S)
    cols = np.concatenate([np.cos(ax), np.sin(ax)], axis=1).astype(np.float32)  # (B, 2W, S)
    weights = (np.concatenate([mix, mix], axis=2)[..., None] * rows[:, None] * (noise / _WAVES)).astype(np.float32)
    texture = weights.transpose(0, 1, 3, 2) @ cols[:, None]  # (B, 3, S, S), rows are y
    return texture + base.astype(np.float32)[..., None, None], (grain - 0.5) * np.float32(np.sqrt(12.0))


def _object_table(scenes: Sequence[Scene], size: int) -> tuple[np.ndarray, ...]:
    """Per-object centre, radius (pixels), shape index, presence and colour table with a slot 0."""
    n, k = len(scenes), max((len(s.objects) for s in scenes), default=1)
    cx, cy, r = np.zeros((n, k)), np.zeros((n, k)), np.zeros((n, k))
    kind = np.zeros((n, k), dtype=np.int64)
    present = np.zeros((n, k), dtype=bool)
    rgb = np.zeros((n, k + 1, 3), dtype=np.float32)
    for i, scene in enumerate(scenes):
        for j, o in enumerate(scene.objects):
            cx[i, j], cy[i, j], r[i, j] = o.x * size, o.y * size, RADIUS[o.size] * size
            kind[i, j] = SHAPES.index(o.shape)
            present[i, j] = True
            rgb[i, j + 1] = COLOR_RGB[o.color]
    return cx, cy, r, kind, present, rgb


def _shape_masks(cx, cy, r, kind, present, size: int) -> np.ndarray:
    """(B, K, S, S) booleans: pixel centres inside each object's shape."""
    c = np.arange(size) + 0.5
    dx = c[None, None, None, :] - cx[..., None, None]
    dy = c[None, None, :, None] - cy[..., None, None]
    rr = r[..., None, None]
    circle = dx * dx + dy * dy <= rr * rr
    square = np.maximum(np.abs(dx), np.abs(dy)) <= _SQUARE_HALF_SIDE * rr
    # upward isosceles triangle filling the box of half-side r: apex top centre, base along the bottom
    triangle = (dy <= rr) & (2.0 * np.abs(dx) <= dy + rr)
    kk = kind[..., None, None]
    masks = np.where(kk == SHAPES.index("circle"), circle,
                     np.where(kk == SHAPES.index("square"), square, triangle))
    return masks & present[..., None, None]


def render_batch(
    scenes: Sequence[Scene], size: int = 32, patch: int = 4, noise: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """Images (B, 3, S, S) float32 in [0, 1] and patch labels (B, S/p, S/p) int64.

    A patch's label is 0 for background or 1 + the index in scene.objects of the object
    owning the most of its pixels (ties go to the background, then to the front).
    """
    if size % patch:
        raise ValueError(f"size {size} is not divisible by patch {patch}")
    cx, cy, r, kind, present, rgb = _object_table(scenes, size)
    masks = _shape_masks(cx, cy, r, kind, present, size)
    n, k = kind.shape
    owner = np.zeros((n, size, size), dtype=np.int64)
    for j in reversed(range(k)):  # back to front, so the front object wins
        owner[masks[:, j]] = j + 1
    background, grain = _background(scenes, size, noise)
    paint = rgb[np.arange(n)[:, None, None], owner].transpose(0, 3, 1, 2)
    image = np.where(owner[:, None] > 0, paint, background) + np.float32(_PIXEL_NOISE * noise) * grain
    image = np.clip(image, 0.0, 1.0, out=image)

    g = size // patch
    cells = owner.reshape(n, g, patch, g, patch).transpose(0, 1, 3, 2, 4).reshape(n, g, g, patch * patch)
    counts = (cells[..., None] == np.arange(k + 1)).sum(axis=-2)
    labels = counts.argmax(axis=-1).astype(np.int64)
    return image, labels


def render_image(scene: Scene, size: int = 32, patch: int = 4, noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """One scene as an image (3, S, S) float32 and patch labels (S/p, S/p) int64."""
    images, labels = render_batch([scene], size, patch, noise)
    return images[0], labels[0]
