"""The synthetic world: scenes of one to three coloured shapes on a square image.

Owns the vocabulary of shapes, colours and sizes, scene sampling with little overlap,
and the per-scene attribute labels that linear probes are trained to recover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow", "purple", "cyan")
COLOR_RGB = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.72, 0.15),
    "blue": (0.12, 0.25, 0.95),
    "yellow": (0.98, 0.90, 0.10),
    "purple": (0.60, 0.12, 0.80),
    "cyan": (0.10, 0.88, 0.92),
}
SIZES = ("small", "large")
RADIUS = {"small": 0.14, "large": 0.2}  # fraction of the image side
MAX_OBJECTS = 3

VWORDS = ("top", "middle", "bottom")
HWORDS = ("left", "centre", "right")

ATTRIBUTES: dict[str, int] = {
    "count": MAX_OBJECTS,
    "shape": len(SHAPES),
    "color": len(COLORS),
    "size": len(SIZES),
    "hpos": 3,
    "vpos": 3,
    "cell": 9,
}

_PLACEMENT_TRIES = 64
_MIN_GAP = 0.8  # centres at least this fraction of the summed radii apart


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    x: float  # centre, 0 = left edge, 1 = right edge
    y: float  # centre, 0 = top edge, 1 = bottom edge
    depth: int  # 0 = front-most

    def __post_init__(self) -> None:
        if self.shape not in SHAPES or self.color not in COLORS or self.size not in SIZES:
            raise ValueError(f"unknown object {self.shape!r} {self.color!r} {self.size!r}")
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise ValueError(f"centre ({self.x}, {self.y}) outside the image")

    @property
    def radius(self) -> float:
        return RADIUS[self.size]


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]  # front to back: objects[0] is drawn last
    texture_seed: int

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene holds 1..{MAX_OBJECTS} objects, got {len(self.objects)}")
        if any(o.depth != i for i, o in enumerate(self.objects)):
            raise ValueError("object depths must equal their index (0 = front)")


def _place(rng: np.random.Generator, r: float, placed: list[tuple[float, float, float]]) -> tuple[float, float]:
    """A centre inside the image, far enough from `placed`; the least-overlapping try if none is."""
    best, best_gap = (0.5, 0.5), -np.inf
    for _ in range(_PLACEMENT_TRIES):
        x, y = rng.uniform(r, 1.0 - r, size=2)
        gap = min((np.hypot(x - px, y - py) / (r + pr) for px, py, pr in placed), default=np.inf)
        if gap >= _MIN_GAP:
            return float(x), float(y)
        if gap > best_gap:
            best, best_gap = (float(x), float(y)), gap
    return best


def sample_scene(rng: np.random.Generator, min_objects: int = 1, max_objects: int = 2) -> Scene:
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}")
    n = int(rng.integers(min_objects, max_objects + 1))
    objects: list[Obj] = []
    placed: list[tuple[float, float, float]] = []
    for depth in range(n):
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = COLORS[rng.integers(len(COLORS))]
        size = SIZES[rng.integers(len(SIZES))]
        r = RADIUS[size]
        x, y = _place(rng, r, placed)
        placed.append((x, y, r))
        objects.append(Obj(shape, color, size, x, y, depth))
    return Scene(tuple(objects), int(rng.integers(2**31 - 1)))


def _third(v: float) -> int:
    return min(int(v * 3.0), 2)


def position_words(obj: Obj) -> tuple[str, str]:
    """(vertical, horizontal) words of the thirds holding the centre, e.g. ("top", "left")."""
    return VWORDS[_third(obj.y)], HWORDS[_third(obj.x)]


def scene_attributes(scene: Scene) -> dict[str, int]:
    """Probe labels; every attribute but count describes the front object."""
    front = scene.objects[0]
    hpos, vpos = _third(front.x), _third(front.y)
    return {
        "count": len(scene.objects) - 1,
        "shape": SHAPES.index(front.shape),
        "color": COLORS.index(front.color),
        "size": SIZES.index(front.size),
        "hpos": hpos,
        "vpos": vpos,
        "cell": 3 * vpos + hpos,
    }
