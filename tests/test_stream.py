"""Training and evaluation sequences: text losses, answers, determinism, text ratio."""

import numpy as np

from helpers import tiny_spec
from llmjepa.data import tokenizer as tok
from llmjepa.data.layout import IGNORE, TEXT
from llmjepa.data.stream import Stream, text_tail


def test_text_loss_covers_the_text_and_answers_are_marked():
    seg = text_tail("q: what colour is it? a: red.", [tok.IMAGE_END])
    nxt = seg.tokens[1:]
    assert list(nxt[seg.loss[:-1]]) == list(b"q: what colour is it? a: red.") + [tok.EOS]
    assert bytes(int(t) for t in nxt[seg.answer[:-1]]) == b"red."
    assert not text_tail("a red circle.", [tok.IMAGE_END]).answer.any()
    assert not text_tail(None, [tok.IMAGE_END]).loss.any()


def test_batches_are_deterministic_per_step_and_differ_across_steps():
    spec = tiny_spec()
    a, b, c = Stream(spec).batch(3), Stream(spec).batch(3), Stream(spec).batch(4)
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("tokens", "segment", "position", "pair_tgt"))
    assert np.array_equal(a.media["image"], b.media["image"])
    assert not np.array_equal(a.media["image"], c.media["image"])


def test_text_ratio_zero_leaves_no_text_loss_and_one_gives_every_example_text():
    none = Stream(tiny_spec("data.text_ratio=0", "data.batch_size=16")).batch(0)
    assert (none.targets == IGNORE).all()
    full = Stream(tiny_spec("data.text_ratio=1", "data.batch_size=16")).batch(0)
    assert ((full.targets != IGNORE).sum(1) > 5).all()
    assert ((full.role == TEXT) | (full.targets == IGNORE)).all()
