"""Short lowercase ASCII texts about world scenes, and control texts about nothing in them.

Owns the caption, question-answer and two-image comparison templates (where the words that
depend on the image carry the information), the unrelated control text of similar length
and style, and `answer_span`, which locates the answer of a question-answer text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from llmjepa.data.world import COLORS, SHAPES, SIZES, Obj, Scene, position_words

MAX_LEN = 60  # captions drop detail until they fit, when they can

NUMBERS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
)
TEXT_KINDS = ("caption", "qa", "mixed")


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _noun(o: Obj, size: bool = False) -> str:
    return f"{o.size} {o.color} {o.shape}" if size else f"{o.color} {o.shape}"


def _place(o: Obj) -> str:
    """One of nine: "top left", "top", "top right", "left", "centre", ..., "bottom right"."""
    v, h = position_words(o)
    if v == "middle":
        return h
    return v if h == "centre" else f"{v} {h}"


def _at(o: Obj) -> str:
    p = _place(o)
    if p == "centre":
        return "in the centre"
    return f"on the {p}" if p in ("left", "right") else f"at the {p}"


def _shapes(n: int) -> str:
    return f"{NUMBERS[n]} shape" + ("s" if n > 1 else "")


def _unique(objs: Sequence[Obj], key: Callable[[Obj], object]) -> list[Obj]:
    keys = [key(o) for o in objs]
    return [o for o, k in zip(objs, keys) if keys.count(k) == 1]


# ---------------------------------------------------------------- captions

_FRAMES = (
    "{list}.",
    "there is {list}.",
    "the image shows {list}.",
    "{count}: {list}.",
    "i see {list}.",
)
_FRONT_FRAME = "{first} in front of {rest}."  # only for two or more objects
# (which objects get their place, whether sizes are said), most detailed first
_DETAIL = (("all", True), ("front", True), ("none", True), ("front", False), ("none", False))


def _phrases(objs: Sequence[Obj], places: str, size: bool) -> list[str]:
    out = []
    for i, o in enumerate(objs):
        p = f"a {_noun(o, size)}"
        if places == "all" or (places == "front" and i == 0):
            p += f" {_at(o)}"
        out.append(p)
    return out


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """Describe the objects front to back, with as much detail as fits in MAX_LEN.

    When no detail level fits the drawn frame (three objects), the bare list is used:
    even three long colour and shape names fit MAX_LEN that way.
    """
    objs = scene.objects
    frames = _FRAMES + ((_FRONT_FRAME,) if len(objs) > 1 else ())
    frame = _pick(rng, frames)
    for places, size in _DETAIL:
        ph = _phrases(objs, places, size)
        rest = _join(ph[1:]) if len(ph) > 1 else ""
        text = frame.format(list=_join(ph), count=_shapes(len(objs)), first=ph[0], rest=rest)
        if len(text) <= MAX_LEN:
            return text
    return _join(ph) + "."


# ---------------------------------------------------------------- questions

def _q_count(objs, rng):
    return _pick(rng, ("how many shapes?", "how many shapes are there?")), NUMBERS[len(objs)]


def _q_colour_of_shape(objs, rng):
    c = _unique(objs, lambda o: o.shape)
    if not c:
        return None
    o = _pick(rng, c)
    return f"what colour is the {o.shape}?", o.color


def _q_shape_of_colour(objs, rng):
    c = _unique(objs, lambda o: o.color)
    if not c:
        return None
    o = _pick(rng, c)
    return f"what shape is {o.color}?", o.shape


def _q_where(objs, rng):
    named = [(f"the {o.color} shape", o) for o in _unique(objs, lambda o: o.color)]
    named += [(f"the {o.shape}", o) for o in _unique(objs, lambda o: o.shape)]
    if not named:
        return None
    name, o = _pick(rng, named)
    return f"where is {name}?", _place(o)


def _q_size(objs, rng):
    c = _unique(objs, lambda o: (o.color, o.shape))
    if not c:
        return None
    o = _pick(rng, c)
    a, b = SIZES if rng.random() < 0.5 else SIZES[::-1]
    return f"is the {_noun(o)} {a} or {b}?", o.size


def _q_exists(objs, rng):
    if rng.random() < 0.5:
        o = _pick(rng, objs)
        color, shape = o.color, o.shape
    else:
        color, shape = _pick(rng, COLORS), _pick(rng, SHAPES)
    present = any(o.color == color and o.shape == shape for o in objs)
    return f"is there a {color} {shape}?", "yes" if present else "no"


def _q_front(objs, rng):
    return ("which shape is in front?", _noun(objs[0])) if len(objs) > 1 else None


def _q_what_at(objs, rng):
    c = _unique(objs, _place)
    if not c:
        return None
    o = _pick(rng, c)
    return f"what is {_at(o)}?", f"a {_noun(o)}"


_QUESTIONS = (_q_count, _q_colour_of_shape, _q_shape_of_colour, _q_where, _q_size, _q_exists, _q_front, _q_what_at)


def qa(scene: Scene, rng: np.random.Generator) -> str:
    """A question with an unambiguous answer in this scene: "q: ...? a: answer."."""
    for i in rng.permutation(len(_QUESTIONS)):
        got = _QUESTIONS[i](scene.objects, rng)
        if got is not None:
            return f"q: {got[0]} a: {got[1]}."
    raise AssertionError("the count question always applies")


def related_text(scene: Scene, rng: np.random.Generator, kind: str = "mixed") -> str:
    """A caption, a question-answer, or (mixed) either with equal odds."""
    if kind not in TEXT_KINDS:
        raise ValueError(f"kind must be one of {TEXT_KINDS}, got {kind!r}")
    if kind == "mixed":
        kind = "caption" if rng.random() < 0.5 else "qa"
    return caption(scene, rng) if kind == "caption" else qa(scene, rng)


# ---------------------------------------------------------------- unrelated control

_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEATHER = ("mild", "cold", "warm", "windy", "wet", "dry", "calm", "foggy")
_NAMES = ("anna", "ben", "carl", "dora", "eli", "fay", "gus", "hana", "ivan", "jo")
_PLACES = ("market", "station", "library", "river", "park", "school", "beach", "museum")
_TIMES = ("morning", "afternoon", "evening")
_ANIMALS = ("cat", "dog", "fox", "owl", "horse", "goat", "duck")
_MOODS = ("sleepy", "old", "young", "tiny", "lazy", "happy", "quiet")
_NEAR = ("under", "near", "beside", "on")
_THINGS = ("table", "bridge", "tree", "bed", "chair", "stairs")
_GOODS = ("apples", "books", "coins", "cups", "keys", "pens")


def _maybe(rng, clause: str) -> str:
    return clause if rng.random() < 0.5 else ""


def _u_weather(rng):
    also = _maybe(rng, f" and {_pick(rng, _WEATHER)} on {_pick(rng, _DAYS)}")
    return f"the weather was {_pick(rng, _WEATHER)} on {_pick(rng, _DAYS)}{also}."


def _u_sum(rng):
    a, b = rng.integers(0, 10, size=2)
    wrong = a + b + 1 if a + b < 18 else a + b - 1
    return f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}" + _maybe(rng, f", not {NUMBERS[wrong]}") + "."


def _u_sum_qa(rng):
    a, b = rng.integers(0, 10, size=2)
    return f"q: what is {NUMBERS[a]} plus {NUMBERS[b]}? a: {NUMBERS[a + b]}."


def _u_day_qa(rng):
    d = int(rng.integers(len(_DAYS)))
    return f"q: what day comes after {_DAYS[d]}? a: {_DAYS[(d + 1) % len(_DAYS)]}."


def _u_trip(rng):
    also = _maybe(rng, f" with {_pick(rng, _NAMES)}")
    return f"{_pick(rng, _NAMES)} went to the {_pick(rng, _PLACES)} in the {_pick(rng, _TIMES)}{also}."


def _u_trip_qa(rng):
    return f"q: where did {_pick(rng, _NAMES)} go on {_pick(rng, _DAYS)}? a: to the {_pick(rng, _PLACES)}."


def _u_animal(rng):
    also = _maybe(rng, f" by the {_pick(rng, _PLACES)}")
    return f"a {_pick(rng, _MOODS)} {_pick(rng, _ANIMALS)} sleeps {_pick(rng, _NEAR)} the {_pick(rng, _THINGS)}{also}."


def _u_goods(rng):
    n, m = rng.integers(2, 10, size=2)
    also = _maybe(rng, f" and {NUMBERS[m]} {_pick(rng, _GOODS)}")
    return f"{_pick(rng, _NAMES)} has {NUMBERS[n]} {_pick(rng, _GOODS)}{also}."


_UNRELATED = (_u_weather, _u_sum, _u_sum_qa, _u_day_qa, _u_trip, _u_trip_qa, _u_animal, _u_goods)


def unrelated_text(rng: np.random.Generator) -> str:
    """Text of the same length and style that says nothing about any image (the control)."""
    return _pick(rng, _UNRELATED)(rng)


# ---------------------------------------------------------------- two images

def _which(in_a: bool, in_b: bool) -> str:
    return ("neither", "the second", "the first", "both")[2 * in_a + in_b]


def _c_more(a, b, rng):
    na, nb = len(a.objects), len(b.objects)
    if na == nb:
        return f"both images have {_shapes(na)}."
    return f"the {'first' if na > nb else 'second'} image has more shapes."


def _c_more_qa(a, b, rng):
    na, nb = len(a.objects), len(b.objects)
    if na == nb:
        return None
    return f"q: which image has more shapes? a: the {'first' if na > nb else 'second'}."


def _c_which_shape(a, b, rng):
    s = _pick(rng, SHAPES)
    has = [any(o.shape == s for o in sc.objects) for sc in (a, b)]
    return f"q: which image has a {s}? a: {_which(*has)}."


def _c_which_colour(a, b, rng):
    c = _pick(rng, COLORS)
    has = [any(o.color == c for o in sc.objects) for sc in (a, b)]
    return f"q: which image has a {c} shape? a: {_which(*has)}."


def _c_fronts(a, b, rng):
    return f"front shapes: a {_noun(a.objects[0])} and a {_noun(b.objects[0])}."


def _c_same_colour(a, b, rng):
    same = a.objects[0].color == b.objects[0].color
    return f"q: are the front shapes the same colour? a: {'yes' if same else 'no'}."


def _c_shared(a, b, rng):
    shared = sorted({o.color for o in a.objects} & {o.color for o in b.objects}, key=COLORS.index)
    return f"both images show a {_pick(rng, shared)} shape." if shared else "the images share no colour."


_COMPARE = (_c_more, _c_more_qa, _c_which_shape, _c_which_colour, _c_fronts, _c_same_colour, _c_shared)


def compare_text(scene_a: Scene, scene_b: Scene, rng: np.random.Generator) -> str:
    """Text that needs both images: "first" is scene_a, "second" is scene_b."""
    for i in rng.permutation(len(_COMPARE)):
        text = _COMPARE[i](scene_a, scene_b, rng)
        if text is not None:
            return text
    raise AssertionError("the count comparison always applies")


def answer_span(text: str) -> int:
    """Byte offset where the answer of a "q: ... a: ..." text starts, or -1 for other texts."""
    i = text.find(" a: ")
    if not text.startswith("q: ") or i < 0:
        return -1
    return len(text[: i + 4].encode("utf-8"))
