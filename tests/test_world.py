"""Tests of the synthetic world: scenes, rendering, texts and the byte tokenizer."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from llmjepa.data import render, text, tokenizer
from llmjepa.data.render import render_batch, render_image
from llmjepa.data.text import answer_span, caption, compare_text, qa, related_text, unrelated_text
from llmjepa.data.world import (
    ATTRIBUTES, COLOR_RGB, COLORS, RADIUS, SHAPES, SIZES, Obj, Scene, position_words, sample_scene,
    scene_attributes,
)

WORDS = re.compile(r"[a-z]+")


def _scenes(seed: int, n: int, max_objects: int = 3) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, 1, max_objects) for _ in range(n)]


def _everything(seed: int):
    """Scenes, their rendering and every kind of text, all from one seed."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, 1, 3) for _ in range(6)]
    images, labels = render_batch(scenes)
    texts = [caption(s, rng) for s in scenes] + [qa(s, rng) for s in scenes]
    texts += [unrelated_text(rng), compare_text(scenes[0], scenes[1], rng)]
    return scenes, images.tobytes(), labels.tobytes(), texts


# ---------------------------------------------------------------- world

def test_same_seed_same_everything_and_other_seed_differs():
    a, b, c = _everything(3), _everything(3), _everything(4)
    assert a == b
    assert a[0] != c[0] and a[1] != c[1] and a[3] != c[3]


def test_sampled_scenes_are_valid():
    counts = set()
    for s in _scenes(0, 400):
        counts.add(len(s.objects))
        assert [o.depth for o in s.objects] == list(range(len(s.objects)))
        for o in s.objects:
            assert o.radius <= o.x <= 1 - o.radius and o.radius <= o.y <= 1 - o.radius
        for i, o in enumerate(s.objects):
            for p in s.objects[i + 1:]:
                assert np.hypot(o.x - p.x, o.y - p.y) >= 0.8 * (o.radius + p.radius) - 1e-9
    assert counts == {1, 2, 3}
    assert {len(s.objects) for s in _scenes(1, 50, max_objects=1)} == {1}


def test_sample_scene_rejects_bad_counts_and_scene_checks_depths():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        sample_scene(rng, 1, 4)
    with pytest.raises(ValueError):
        sample_scene(rng, 2, 1)
    with pytest.raises(ValueError):
        Scene((Obj("circle", "red", "small", 0.5, 0.5, 1),), 0)
    with pytest.raises(ValueError):
        Obj("star", "red", "small", 0.5, 0.5, 0)


def test_attributes_in_range_and_consistent_with_positions():
    for s in _scenes(1, 300):
        att = scene_attributes(s)
        assert att.keys() == ATTRIBUTES.keys()
        for k, v in att.items():
            assert 0 <= v < ATTRIBUTES[k], k
        front = s.objects[0]
        assert att["count"] == len(s.objects) - 1
        assert (SHAPES[att["shape"]], COLORS[att["color"]], SIZES[att["size"]]) == (front.shape, front.color, front.size)
        assert att["cell"] == 3 * att["vpos"] + att["hpos"]
        v, h = position_words(front)
        assert ("top", "middle", "bottom").index(v) == att["vpos"]
        assert ("left", "centre", "right").index(h) == att["hpos"]


def test_attributes_of_a_constructed_scene():
    s = Scene((Obj("triangle", "cyan", "large", 0.9, 0.5, 0), Obj("circle", "red", "small", 0.1, 0.1, 1)), 7)
    att = scene_attributes(s)
    assert att == {"count": 1, "shape": 2, "color": 5, "size": 1, "hpos": 2, "vpos": 1, "cell": 5}
    assert position_words(s.objects[0]) == ("middle", "right")
    assert position_words(s.objects[1]) == ("top", "left")


# ---------------------------------------------------------------- rendering

def test_image_shape_range_and_labels():
    scenes = _scenes(2, 8)
    images, labels = render_batch(scenes, size=32, patch=4, noise=0.15)
    assert images.shape == (8, 3, 32, 32) and images.dtype == np.float32
    assert labels.shape == (8, 8, 8) and labels.dtype == np.int64
    assert images.min() >= 0.0 and images.max() <= 1.0
    for s, lab in zip(scenes, labels):
        assert lab.min() >= 0 and lab.max() <= len(s.objects)
    img, lab = render_image(scenes[0], size=48, patch=8)
    assert img.shape == (3, 48, 48) and lab.shape == (6, 6)
    with pytest.raises(ValueError):
        render_batch(scenes, size=30, patch=4)


def test_a_scene_renders_the_same_alone_or_in_any_batch():
    scenes = _scenes(5, 4)
    images, labels = render_batch(scenes)
    img, lab = render_image(scenes[2])
    assert np.array_equal(img, images[2]) and np.array_equal(lab, labels[2])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", SIZES)
def test_centre_patch_is_labelled_with_its_object(shape, size):
    centre = (2 * 4 + 2) / 32  # centre of patch (2, 2), far enough from the border for either size
    x = centre if RADIUS[size] <= centre else (4 * 4 + 2) / 32
    s = Scene((Obj(shape, "green", size, x, x, 0),), 11)
    img, lab = render_image(s, noise=0.0)
    p = int(x * 8)
    assert lab[p, p] == 1
    assert lab[0, 7] == 0 and lab[7, 0] == 0
    assert np.allclose(img[:, p * 4 + 2, p * 4 + 2], COLOR_RGB["green"], atol=1e-6)


def test_front_object_hides_the_one_behind():
    front = Obj("circle", "red", "small", 0.5, 0.5, 0)
    back = Obj("square", "blue", "large", 0.5 + 1 / 16, 0.5, 1)
    img, lab = render_image(Scene((front, back), 3), noise=0.0)
    assert lab[4, 4] == 1  # the patch holding the front centre
    assert (lab == 2).any()  # the square shows around the circle
    assert np.allclose(img[:, 16, 16], COLOR_RGB["red"], atol=1e-6)


def test_labelled_patches_are_mostly_their_objects_colour():
    scenes = _scenes(6, 32)
    images, labels = render_batch(scenes, noise=0.0)
    seen = 0
    for s, img, lab in zip(scenes, images, labels):
        for (i, j), k in np.ndenumerate(lab):
            if k == 0:
                continue
            cell = img[:, 4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(3, -1)
            rgb = np.asarray(COLOR_RGB[s.objects[k - 1].color], dtype=np.float32)[:, None]
            assert (np.abs(cell - rgb).max(axis=0) < 1e-6).sum() >= 8
            seen += 1
        assert set(np.unique(lab)) - {0} == set(range(1, len(s.objects) + 1)) or len(s.objects) > 1
    assert seen > 32


def test_background_depends_on_texture_seed_only():
    a = Scene((Obj("circle", "red", "large", 0.25, 0.25, 0),), 5)
    b = Scene((Obj("square", "yellow", "small", 0.8, 0.8, 0),), 5)
    c = Scene(a.objects, 6)
    ia, la = render_image(a)
    ib, _ = render_image(b)
    ic, lc = render_image(c)
    same_ab = np.all(ia == ib, axis=0).mean()
    same_ac = np.all(ia == ic, axis=0).mean()
    assert same_ab > 0.6  # only the two objects' pixels differ
    assert same_ac < 0.1 and np.array_equal(la, lc)
    assert ia.std() > 0.05  # the nuisance is visible


def _render_lines(scenes, size):
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != render.__file__:
            return None
        if event == "line":
            count += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        render_batch(scenes, size=size, patch=4)
    finally:
        sys.settrace(previous)
    return count


def test_render_batch_has_no_per_pixel_python_loop():
    scenes = _scenes(7, 4)
    small, large = _render_lines(scenes, 16), _render_lines(scenes, 64)
    assert small > 0 and small == large


# ---------------------------------------------------------------- text

def _check_style(t: str):
    assert t == t.lower() and t.isascii() and 15 <= len(t.encode()) <= text.MAX_LEN, t


def test_texts_are_short_lowercase_ascii():
    rng = np.random.default_rng(8)
    scenes = _scenes(8, 200)
    for s, s2 in zip(scenes, scenes[1:]):
        for t in (caption(s, rng), qa(s, rng), unrelated_text(rng), compare_text(s, s2, rng)):
            _check_style(t)


def test_caption_names_the_objects_front_to_back():
    rng = np.random.default_rng(9)
    for s in _scenes(9, 300):
        t = caption(s, rng)
        words = WORDS.findall(t)
        colours = [w for w in words if w in COLORS]
        shapes = [w for w in words if w in SHAPES]
        assert colours == [o.color for o in s.objects], t
        assert shapes == [o.shape for o in s.objects], t
        if len(s.objects) == 1:
            v, h = position_words(s.objects[0])
            assert (v in words or v == "middle") and (h in words or h == "centre"), t


def test_caption_uses_several_templates():
    rng = np.random.default_rng(10)
    s = Scene((Obj("circle", "red", "small", 0.2, 0.2, 0), Obj("square", "blue", "large", 0.7, 0.7, 1)), 0)
    got = {caption(s, rng) for _ in range(200)}
    assert len(got) >= 5
    assert "a small red circle at the top left and a large blue square." in got


# every question this scene allows, with its answer
_RED_BLUE = Scene((Obj("circle", "red", "small", 0.15, 0.15, 0), Obj("square", "blue", "large", 0.75, 0.75, 1)), 1)
_RED_BLUE_ANSWERS = {
    "how many shapes?": "two",
    "how many shapes are there?": "two",
    "what colour is the circle?": "red",
    "what colour is the square?": "blue",
    "what shape is red?": "circle",
    "what shape is blue?": "square",
    "where is the red shape?": "top left",
    "where is the circle?": "top left",
    "where is the blue shape?": "bottom right",
    "where is the square?": "bottom right",
    "is the red circle small or large?": "small",
    "is the red circle large or small?": "small",
    "is the blue square small or large?": "large",
    "is the blue square large or small?": "large",
    "which shape is in front?": "red circle",
    "what is at the top left?": "a red circle",
    "what is at the bottom right?": "a blue square",
}


def _split_qa(t: str) -> tuple[str, str]:
    m = re.fullmatch(r"q: (.+\?) a: (.+)\.", t)
    assert m, t
    return m.group(1), m.group(2)


def test_qa_answers_are_correct_for_a_constructed_scene():
    rng = np.random.default_rng(11)
    asked = set()
    for _ in range(400):
        question, answer = _split_qa(qa(_RED_BLUE, rng))
        m = re.fullmatch(r"is there a (\w+) (\w+)\?", question)
        if m:
            present = m.groups() in {("red", "circle"), ("blue", "square")}
            assert answer == ("yes" if present else "no"), question
            asked.add("exists-" + answer)
        else:
            assert _RED_BLUE_ANSWERS.get(question) == answer, question
            asked.add(question)
    assert {"exists-yes", "exists-no"} <= asked
    assert len(asked) >= 14


def test_qa_never_asks_ambiguous_questions():
    s = Scene(
        (
            Obj("circle", "red", "small", 0.2, 0.2, 0),
            Obj("circle", "red", "large", 0.7, 0.7, 1),
            Obj("triangle", "green", "small", 0.8, 0.2, 2),
        ),
        2,
    )
    rng = np.random.default_rng(12)
    for _ in range(300):
        question, answer = _split_qa(qa(s, rng))
        assert "the circle" not in question and "red" not in question.replace("is there a red", ""), question
        if question == "what colour is the triangle?" or question == "what shape is green?":
            assert answer in ("green", "triangle")
        if question == "which shape is in front?":
            assert answer == "red circle"
        if question.startswith("what is "):
            assert answer in ("a red circle", "a green triangle")


def test_answer_span():
    assert answer_span("q: how many shapes? a: two.") == len("q: how many shapes? a: ")
    assert answer_span("a small red circle at the top left.") == -1
    t = "q: où? a: là."
    assert bytes(tokenizer.encode(t)[answer_span(t):]).decode() == "là."
    rng = np.random.default_rng(13)
    for s in _scenes(13, 50):
        t = qa(s, rng)
        assert t[answer_span(t):] == _split_qa(t)[1] + "."


def test_related_text_kinds():
    rng = np.random.default_rng(14)
    s = _RED_BLUE
    assert all(answer_span(related_text(s, rng, "qa")) > 0 for _ in range(20))
    assert all(answer_span(related_text(s, rng, "caption")) == -1 for _ in range(20))
    mixed = [answer_span(related_text(s, rng, "mixed")) > 0 for _ in range(100)]
    assert 20 < sum(mixed) < 80
    with pytest.raises(ValueError):
        related_text(s, rng, "poem")


def test_unrelated_text_reveals_nothing():
    rng = np.random.default_rng(15)
    texts = [unrelated_text(rng) for _ in range(600)]
    banned = COLORS + SHAPES + SIZES + ("shape", "image", "front")
    for t in texts:
        _check_style(t)
        assert not any(w in t for w in banned), t
    assert len(set(texts)) > 300
    assert any(answer_span(t) > 0 for t in texts)  # the control has question-answer texts too


def test_compare_text_answers():
    a = Scene((Obj("circle", "red", "small", 0.5, 0.5, 0),), 1)
    b = Scene(
        (
            Obj("square", "blue", "large", 0.25, 0.25, 0),
            Obj("triangle", "green", "small", 0.75, 0.75, 1),
            Obj("square", "red", "small", 0.75, 0.25, 2),
        ),
        2,
    )
    expected = {
        "the second image has more shapes.",
        "q: which image has more shapes? a: the second.",
        "q: which image has a circle? a: the first.",
        "q: which image has a square? a: the second.",
        "q: which image has a triangle? a: the second.",
        "q: which image has a red shape? a: both.",
        "q: which image has a blue shape? a: the second.",
        "q: which image has a green shape? a: the second.",
        "q: which image has a yellow shape? a: neither.",
        "q: which image has a purple shape? a: neither.",
        "q: which image has a cyan shape? a: neither.",
        "front shapes: a red circle and a blue square.",
        "q: are the front shapes the same colour? a: no.",
        "both images show a red shape.",
    }
    rng = np.random.default_rng(16)
    got = {compare_text(a, b, rng) for _ in range(500)}
    assert got == expected
    same = {compare_text(a, a, rng) for _ in range(200)}
    assert "both images have one shape." in same and "q: are the front shapes the same colour? a: yes." in same
    assert not any("more shapes" in t for t in same - {"both images have one shape."})


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_constants():
    ids = [tokenizer.PAD, tokenizer.BOS, tokenizer.EOS]
    ids += [i for pair in tokenizer.MEDIA_TOKENS.values() for i in pair]
    assert ids == list(range(256, 265)) and tokenizer.VOCAB_SIZE == 265
    assert tokenizer.MEDIA_TOKENS["image"] == (tokenizer.IMAGE_START, tokenizer.IMAGE_END)
    assert set(tokenizer.MEDIA_TOKENS) == {"image", "video", "audio"}


def test_tokenizer_round_trip():
    for t in ("q: how many shapes? a: two.", "", "caf\u00e9 \u2713"):
        ids = tokenizer.encode(t)
        assert all(0 <= i < 256 for i in ids) and len(ids) == len(t.encode())
        assert tokenizer.decode(ids) == t
    ids = [tokenizer.BOS, tokenizer.IMAGE_START, tokenizer.IMAGE_END] + tokenizer.encode("hi") + [tokenizer.EOS]
    assert tokenizer.decode(ids) == "<bos><image></image>hi<eos>"
    assert tokenizer.decode([tokenizer.AUDIO_START, tokenizer.VIDEO_END, tokenizer.PAD]) == "<audio></video><pad>"
    assert tokenizer.decode(np.array([104, 0xFF, 105])) == "h\ufffdi"
    with pytest.raises(ValueError):
        tokenizer.decode([tokenizer.VOCAB_SIZE])
