"""Short clips of world shapes moving in straight lines and bouncing off walls and each other.

Owns the clip dynamics (constant velocity, mirror reflection off the walls, equal-mass disc
collisions between objects, every bounce recorded at its frame), the rendering of clips to
videos with per-frame patch labels (frame t is the world scene `scene_at(clip, t)` as
render.py draws it, with the clip's fixed background), the clip probe labels, and texts that
need the motion to be right.

Frame convention: a bounce event at frame t means frame t is the first frame drawn after the
bounce, and the motion from frame t to t + 1 uses the velocity after it. A wall bounce mirrors
the overshoot back inside, so an object always keeps its radius (world.RADIUS) from the edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llmjepa.data.render import _PIXEL_NOISE, _background, _object_table, _shape_masks
from llmjepa.data.text import MAX_LEN, NUMBERS, _join, _pick
from llmjepa.data.world import COLORS, MAX_OBJECTS, RADIUS, SHAPES, SIZES, Obj, Scene, sample_scene

WALLS = ("left", "right", "top", "bottom")
BOUNCE_KINDS = WALLS + ("object",)
DIRECTIONS = ("left", "right", "up", "down")  # y grows downwards, so "up" is a negative y velocity
SPEEDS = ("slow", "fast")
SPEED_RANGE = (0.02, 0.08)  # image widths per frame
SPEED_SPLIT = 0.05  # slow below, fast from here on

CLIP_ATTRIBUTES: dict[str, int] = {
    "count": MAX_OBJECTS,
    "shape": len(SHAPES),
    "color": len(COLORS),
    "size": len(SIZES),
    "direction": len(DIRECTIONS),
    "speed": len(SPEEDS),
    "bounced": 2,
}

_CALM = (0.15, 1.0, 1.0)  # by object count: share of clips whose directions are redrawn until nothing bounces
_CALM_TRIES = 16
# texts only say what can be seen clearly
_DIRECTION_RATIO = 1.5  # the main velocity component is at least this times the other
_SPEED_MARGIN = 0.01  # "fast" / "slow" only this far from SPEED_SPLIT
_FASTEST_RATIO = 1.3  # the fastest object is at least this times faster than the next


@dataclass(frozen=True)
class Clip:
    objects: tuple[Obj, ...]  # appearance and position at frame 0 (world.Obj), front to back
    positions: np.ndarray  # (T, n, 2) float x, y in [0, 1] of each object's centre per frame
    velocities: np.ndarray  # (n, 2) initial velocity in image widths per frame
    bounces: tuple[tuple[int, int, str], ...]  # (frame, object index, "left"|"right"|"top"|"bottom"|"object")
    texture_seed: int
    frames: int  # T, even

    def __post_init__(self) -> None:
        Scene(self.objects, self.texture_seed)  # 1..MAX_OBJECTS objects, depths in order
        _check_frames(self.frames)
        n = len(self.objects)
        positions = np.array(self.positions, dtype=np.float64)  # own read-only copies
        velocities = np.array(self.velocities, dtype=np.float64)
        if positions.shape != (self.frames, n, 2) or velocities.shape != (n, 2):
            raise ValueError(f"positions {positions.shape} and velocities {velocities.shape} do not fit "
                             f"{self.frames} frames of {n} objects")
        if not np.allclose(positions[0], [(o.x, o.y) for o in self.objects]):
            raise ValueError("positions[0] must be the objects' centres")
        for frame, i, kind in self.bounces:
            if not (1 <= frame < self.frames and 0 <= i < n and kind in BOUNCE_KINDS):
                raise ValueError(f"bad bounce event {(frame, i, kind)}")
        positions.setflags(write=False)
        velocities.setflags(write=False)
        object.__setattr__(self, "positions", positions)
        object.__setattr__(self, "velocities", velocities)


def _check_frames(frames: int) -> None:
    if frames < 2 or frames % 2:
        raise ValueError(f"frames must be even and at least 2, got {frames}")


# ---------------------------------------------------------------- dynamics

def simulate(objects: Sequence[Obj], velocities, frames: int) -> tuple[np.ndarray, tuple[tuple[int, int, str], ...]]:
    """Positions (T, n, 2) and bounce events of objects starting at their centres with `velocities`.

    Each step moves every object by its velocity, mirrors any overshoot past a wall (flipping
    that velocity component), then lets every pair of overlapping discs that approach each other
    swap their velocity components along the line of centres (equal masses, elastic).
    """
    _check_frames(frames)
    n = len(objects)
    r = [RADIUS[o.size] for o in objects]
    p = [[o.x, o.y] for o in objects]
    v = [[float(a), float(b)] for a, b in np.asarray(velocities, dtype=np.float64).reshape(n, 2)]
    positions = np.empty((frames, n, 2))
    positions[0] = p
    events: list[tuple[int, int, str]] = []
    for t in range(1, frames):
        for i in range(n):
            for axis, (low, high) in enumerate((("left", "right"), ("top", "bottom"))):
                c = p[i][axis] + v[i][axis]
                lo, hi = r[i], 1.0 - r[i]
                if c < lo or c > hi:
                    c = 2.0 * (lo if c < lo else hi) - c
                    events.append((t, i, low if v[i][axis] < 0 else high))
                    v[i][axis] = -v[i][axis]
                p[i][axis] = c
        for i in range(n):
            for j in range(i + 1, n):
                dx, dy = p[j][0] - p[i][0], p[j][1] - p[i][1]
                d2 = dx * dx + dy * dy
                approach = (v[j][0] - v[i][0]) * dx + (v[j][1] - v[i][1]) * dy
                if 0.0 < d2 < (r[i] + r[j]) ** 2 and approach < 0.0:
                    # exchange the normal components: v_i += (vj.n - vi.n) n and back
                    k = approach / d2
                    v[i][0] += k * dx
                    v[i][1] += k * dy
                    v[j][0] -= k * dx
                    v[j][1] -= k * dy
                    events += [(t, i, "object"), (t, j, "object")]
        positions[t] = p
    events.sort(key=lambda e: (e[0], e[1]))  # stable: walls before objects for one object and frame
    return positions, tuple(events)


def make_clip(objects: Sequence[Obj], velocities, frames: int = 8, texture_seed: int = 0) -> Clip:
    """The clip of `objects` (front to back, at their frame-0 centres) moving off with `velocities`."""
    positions, bounces = simulate(objects, velocities, frames)
    return Clip(tuple(objects), positions, np.asarray(velocities, dtype=np.float64).reshape(len(objects), 2),
                bounces, int(texture_seed), frames)


def _velocities(speeds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angles = rng.uniform(0.0, 2.0 * np.pi, size=len(speeds))
    return np.stack([speeds * np.cos(angles), speeds * np.sin(angles)], axis=1)


def sample_clip(rng: np.random.Generator, frames: int = 8, min_objects: int = 1, max_objects: int = 2) -> Clip:
    """Objects placed as in world scenes, each with a uniform direction and a speed in SPEED_RANGE.

    The objects are large next to the image, so most free draws bounce within 8 frames (about
    60 % with one object, 95 % with two); in a share _CALM of the clips, set by the object count,
    the directions (not the speeds, so slow and fast stay even) are redrawn up to _CALM_TRIES
    times until nothing bounces. Then about 50 % of the 8-frame clips with one object and 60 %
    with two hold a bounce (55 % for the default 1-2); three large objects nearly always bounce.
    World placement lets objects start slightly overlapped, which may collide at frame 1.
    """
    _check_frames(frames)
    scene = sample_scene(rng, min_objects, max_objects)
    n = len(scene.objects)
    speeds = rng.uniform(*SPEED_RANGE, size=n)
    velocities = _velocities(speeds, rng)
    positions, bounces = simulate(scene.objects, velocities, frames)
    if rng.random() < _CALM[n - 1]:
        for _ in range(_CALM_TRIES):
            if not bounces:
                break
            velocities = _velocities(speeds, rng)
            positions, bounces = simulate(scene.objects, velocities, frames)
    return Clip(scene.objects, positions, velocities, bounces, scene.texture_seed, frames)


def scene_at(clip: Clip, t: int) -> Scene:
    """Frame t of a clip as a world scene: the objects moved to their centres at t, same background."""
    objects = tuple(Obj(o.shape, o.color, o.size, float(x), float(y), o.depth)
                    for o, (x, y) in zip(clip.objects, clip.positions[t]))
    return Scene(objects, clip.texture_seed)


# ---------------------------------------------------------------- rendering

def render_clips(
    clips: Sequence[Clip], size: int = 32, patch: int = 4, noise: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    """Videos (B, 3, T, S, S) float32 in [0, 1] and patch labels (B, T, S/p, S/p) int64.

    Frame t of a clip is exactly `render_batch([scene_at(clip, t)])` (the tests check this), but
    the shapes of all frames of all clips are drawn in one go with render.py's own helpers and
    the background, which every frame of a clip shares, is drawn once per clip: the background
    is most of render_batch's cost. Labels are 0 for background or 1 + the object index.
    """
    if not clips:
        raise ValueError("no clips to render")
    if size % patch:
        raise ValueError(f"size {size} is not divisible by patch {patch}")
    frames = clips[0].frames
    if any(c.frames != frames for c in clips):
        raise ValueError("all clips of a batch need the same number of frames")
    b, n, g = len(clips), len(clips) * frames, size // patch
    scenes = [scene_at(c, t) for c in clips for t in range(frames)]
    cx, cy, r, kind, present, rgb = _object_table(scenes, size)
    masks = _shape_masks(cx, cy, r, kind, present, size)
    k = kind.shape[1]
    owner = np.zeros((n, size, size), dtype=np.int64)
    for j in reversed(range(k)):  # back to front, so the front object wins
        owner[masks[:, j]] = j + 1
    background, grain = _background(scenes[::frames], size, noise)  # (B, 3, S, S) each
    grain *= np.float32(_PIXEL_NOISE * noise)
    palette = rgb.reshape(n * (k + 1), 3)  # object colours, row 0 of each frame unused
    pick = (owner + (k + 1) * np.arange(n)[:, None, None]).reshape(b, frames, size, size)
    drawn = pick % (k + 1) > 0
    videos = np.empty((b, 3, frames, size, size), dtype=np.float32)
    for c in range(3):
        videos[:, c] = np.where(drawn, palette[:, c][pick], background[:, c, None]) + grain[:, c, None]
    videos = np.clip(videos, 0.0, 1.0, out=videos)

    # per patch, the owner with the most pixels; argmax ties go to the background, then the front
    cell = (np.arange(n)[:, None, None] * g + np.arange(size)[:, None] // patch) * g + np.arange(size) // patch
    counts = np.bincount((cell * (k + 1) + owner).ravel(), minlength=n * g * g * (k + 1))
    labels = counts.reshape(n, g, g, k + 1).argmax(axis=-1).astype(np.int64)
    return videos, labels.reshape(b, frames, g, g)


def render_clip(clip: Clip, size: int = 32, patch: int = 4, noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """One clip as a video (3, T, S, S) float32 and patch labels (T, S/p, S/p) int64."""
    videos, labels = render_clips([clip], size, patch, noise)
    return videos[0], labels[0]


# ---------------------------------------------------------------- motion facts

def direction(velocity) -> str:
    """"left", "right", "up" or "down": the sign of the larger velocity component."""
    vx, vy = float(velocity[0]), float(velocity[1])
    if abs(vx) >= abs(vy):
        return "left" if vx < 0 else "right"
    return "up" if vy < 0 else "down"


def speed(velocity) -> float:
    return float(np.hypot(velocity[0], velocity[1]))


def clip_attributes(clip: Clip) -> dict[str, int]:
    """Probe labels; all but count and bounced describe the front object and its initial velocity
    (direction by the larger component, speed against SPEED_SPLIT). When it hits a wall at frame 1
    the first visible step can disagree: about 3.5 % of default clips."""
    front, v = clip.objects[0], clip.velocities[0]
    return {
        "count": len(clip.objects) - 1,
        "shape": SHAPES.index(front.shape),
        "color": COLORS.index(front.color),
        "size": SIZES.index(front.size),
        "direction": DIRECTIONS.index(direction(v)),
        "speed": int(speed(v) >= SPEED_SPLIT),
        "bounced": int(bool(clip.bounces)),
    }


def _events(clip: Clip, i: int) -> list[tuple[int, str]]:
    return [(t, kind) for t, j, kind in clip.bounces if j == i]


def _bounces(clip: Clip, i: int) -> bool | None:
    """Whether object i bounces, or None when its only bounces fall on the last frame (hard to see)."""
    frames = [t for t, _ in _events(clip, i)]
    if frames and min(frames) == clip.frames - 1:
        return None
    return bool(frames)


def _clear_direction(clip: Clip, i: int) -> bool:
    """Object i heads mostly one way and does not hit a wall straight away (the mirrored
    overshoot of a wall bounce at frame 1 can turn its first visible step around)."""
    a, b = sorted(abs(float(c)) for c in clip.velocities[i])
    return b >= _DIRECTION_RATIO * a and not any(t == 1 and k in WALLS for t, k in _events(clip, i))


def _first_wall(clip: Clip, i: int) -> str | None:
    """The wall object i hits first, if it hits one before the last frame and not two at once."""
    walls = [(t, k) for t, k in _events(clip, i) if k in WALLS]
    if not walls or walls[0][0] == clip.frames - 1 or (len(walls) > 1 and walls[1][0] == walls[0][0]):
        return None
    return walls[0][1]


def _noun(o: Obj) -> str:
    return f"{o.color} {o.shape}"


def _named(clip: Clip) -> list[int]:
    """Indices of the objects whose colour and shape no other object shares."""
    nouns = [_noun(o) for o in clip.objects]
    return [i for i, s in enumerate(nouns) if nouns.count(s) == 1]


def _short_name(clip: Clip, i: int) -> str | None:
    """"the square" when the shape is unique, else "the red square" when that is, else None."""
    o = clip.objects[i]
    if sum(p.shape == o.shape for p in clip.objects) == 1:
        return f"the {o.shape}"
    return f"the {_noun(o)}" if i in _named(clip) else None


# ---------------------------------------------------------------- texts

def _t_wall(clip, rng):
    c = [i for i in _named(clip) if _first_wall(clip, i)]
    if not c:
        return None
    i = _pick(rng, c)
    return f"the {_noun(clip.objects[i])} bounces off the {_first_wall(clip, i)} wall."


def _t_moves(clip, rng):
    c = [i for i in _named(clip) if _clear_direction(clip, i)]
    if not c:
        return None
    i = _pick(rng, c)
    first = " first" if _events(clip, i) else ""
    return f"the {_noun(clip.objects[i])}{first} moves {direction(clip.velocities[i])}."


def _q_direction(clip, rng):
    c = [i for i in _named(clip) if _clear_direction(clip, i)]
    if not c:
        return None
    i = _pick(rng, c)
    return f"q: which way does the {_noun(clip.objects[i])} go first? a: {direction(clip.velocities[i])}."


def _q_fastest(clip, rng):
    n = len(clip.objects)
    if n < 2 or any(k == "object" for _, _, k in clip.bounces):  # collisions change speeds
        return None
    speeds = sorted(((speed(v), i) for i, v in enumerate(clip.velocities)), reverse=True)
    (top, i), (second, _) = speeds[0], speeds[1]
    if top < _FASTEST_RATIO * second or i not in _named(clip):
        return None
    return f"q: which shape moves {'faster' if n == 2 else 'fastest'}? a: the {_noun(clip.objects[i])}."


def _q_fast_or_slow(clip, rng):
    c = [i for i in _named(clip)  # wall bounces keep the speed, collisions do not
         if abs(speed(clip.velocities[i]) - SPEED_SPLIT) >= _SPEED_MARGIN
         and not any(k == "object" for _, k in _events(clip, i))]
    if not c:
        return None
    i = _pick(rng, c)
    a, b = SPEEDS if rng.random() < 0.5 else SPEEDS[::-1]
    return f"q: is the {_noun(clip.objects[i])} {a} or {b}? a: {SPEEDS[speed(clip.velocities[i]) >= SPEED_SPLIT]}."


def _q_bounce(clip, rng):
    c = [i for i in _named(clip) if _bounces(clip, i) is not None]
    if not c:
        return None
    i = _pick(rng, c)
    return f"q: does the {_noun(clip.objects[i])} bounce? a: {'yes' if _bounces(clip, i) else 'no'}."


def _q_which_wall(clip, rng):
    c = [i for i in _named(clip) if _first_wall(clip, i)]
    if not c:
        return None
    i = _pick(rng, c)
    return f"q: which wall does the {_noun(clip.objects[i])} hit first? a: {_first_wall(clip, i)}."


def _q_collide(clip, rng):
    if len(clip.objects) < 2:
        return None
    hits = [t for t, _, k in clip.bounces if k == "object"]
    if hits and min(hits) == clip.frames - 1:
        return None
    return f"q: do the shapes collide? a: {'yes' if hits else 'no'}."


def _t_count(clip, rng):
    """Always applies: "two shapes move; the square bounces.", "one shape moves; it does not bounce."."""
    n = len(clip.objects)
    head = f"{NUMBERS[n]} shape{'s' if n > 1 else ''} move{'' if n > 1 else 's'}"
    state = [_bounces(clip, i) for i in range(n)]
    if None in state:
        return head + "."
    k = sum(state)
    if n == 1:
        return head + ("; it bounces." if k else "; it does not bounce.")
    if k == 0:
        return head + "; none bounces."
    if k == n:
        return head + ("; both bounce." if n == 2 else "; all bounce.")
    if k == 1 and (name := _short_name(clip, state.index(True))) is not None:
        return head + f"; {name} bounces."
    return head + f"; {NUMBERS[k]} bounce{'s' if k == 1 else ''}."


_MOTION_TEXTS = (_t_wall, _t_moves, _q_direction, _q_fastest, _q_fast_or_slow, _q_bounce, _q_which_wall,
                 _q_collide, _t_count)


def motion_text(clip: Clip, rng: np.random.Generator) -> str:
    """A short text that is only right about this clip's motion; templates that do not apply
    unambiguously (shared names, near-diagonal motion, bounces on the last frame) are skipped."""
    for i in rng.permutation(len(_MOTION_TEXTS)):
        text = _MOTION_TEXTS[i](clip, rng)
        if text is not None:
            return text
    raise AssertionError("the count text always applies")


_CAPTION_FRAMES = ("{list}.", "the clip shows {list}.", "a video of {list}.", "{count}: {list}.")
# (sizes, bounce detail) of each object's phrase, most detailed first
_CAPTION_DETAIL = ((True, "first"), (False, "first"), (False, "any"), (False, "none"))


def _motion_phrase(clip: Clip, i: int, sizes: bool, bounce: str) -> str:
    """"a large red circle moving left that bounces off the left wall", less with less detail."""
    o = clip.objects[i]
    text = f"a {o.size + ' ' if sizes else ''}{_noun(o)} moving {direction(clip.velocities[i])}"
    events = _events(clip, i)
    if bounce == "first" and events:
        kind = events[0][1]
        text += " that hits another shape" if kind == "object" else f" that bounces off the {kind} wall"
    elif bounce == "any" and events:
        text += " that bounces"
    return text


def clip_caption(clip: Clip, rng: np.random.Generator) -> str:
    """Every object front to back with its first direction and first bounce, as detailed as fits
    MAX_LEN in a random frame, else in the bare list; when nothing fits (mostly three objects),
    the terse "red circle left, blue square up, ..." (at most 67 characters)."""
    n = len(clip.objects)
    frame = _pick(rng, _CAPTION_FRAMES)
    count = f"{NUMBERS[n]} moving shape{'s' if n > 1 else ''}"
    for frame in (frame, "{list}."):  # the bare list before the terse form
        for sizes, bounce in _CAPTION_DETAIL:
            text = frame.format(list=_join([_motion_phrase(clip, i, sizes, bounce) for i in range(n)]), count=count)
            if len(text) <= MAX_LEN:
                return text
    return ", ".join(f"{_noun(o)} {direction(v)}" for o, v in zip(clip.objects, clip.velocities)) + "."
