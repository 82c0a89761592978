"""Training batches and evaluation sequences built from a source, deterministic per (seed, step).

A training example is `[bos <image>] [ctx]... [tgt] [</image> text <eos>]` (several images in a row
for comparison text). `text_ratio` decides how many examples carry text at all; without text no
token has a loss but the JEPA task is unchanged. Masks are sampled here, never in the model.
Evaluation sequences hold full items only, as the model sees them at inference.
"""

from __future__ import annotations

import numpy as np

from llmjepa.data import tokenizer as tok
from llmjepa.data.layout import (
    CONTEXT, IMAGE, TARGET, Batch, Example, Item, Pair, collate, grid_coords, media_segment, text_segment,
)
from llmjepa.data.masks import context_scale_at, multiblock
from llmjepa.data.sources import make_source
from llmjepa.specs import ExperimentSpec

STREAM_TRAIN, STREAM_EVAL = 0, 1  # separate seed streams for training and held-out data


def image_item(image: np.ndarray, grid: int) -> Item:
    return Item(IMAGE, image, grid_coords(grid, grid))


def text_tail(text: str | None, prefix: list[int]) -> "Segment":
    """`prefix text <eos>` with a loss on every next token of the text (none without text)."""
    if text is None:
        return text_segment(prefix + [tok.EOS])
    ids = prefix + tok.encode(text) + [tok.EOS]
    loss = np.ones(len(ids), bool)
    loss[: len(prefix) - 1] = False  # the prefix before its last token predicts nothing of the text
    loss[-1] = False
    return text_segment(ids, loss)


def add_item(ex: Example, item: Item, rng, spec: ExperimentSpec, scale, with_contexts: bool = True) -> None:
    """Append an item's context copies (one per masks.num_contexts) and its target copy."""
    m, g = spec.masks, spec.data.grid
    ex.items.append(item)
    idx = len(ex.items) - 1
    contexts = []
    for _ in range(m.num_contexts if with_contexts else 0):
        bm = multiblock(rng, g, g, m.num_targets, m.target_scale, m.target_aspect, scale, m.min_context)
        ex.segments.append(media_segment(CONTEXT, idx, ex.items, bm.context))
        contexts.append((len(ex.segments) - 1, bm.targets))
    ex.segments.append(media_segment(TARGET, idx, ex.items))
    tgt = len(ex.segments) - 1
    ex.pairs += [Pair(c, tgt, t) for c, targets in contexts for t in targets]


class Stream:
    """Training batches: `batch(step)` is the same for the same spec, seed and step."""

    def __init__(self, spec: ExperimentSpec):
        self.spec = spec
        self.source = make_source(spec.data)

    def batch(self, step: int) -> Batch:
        s = self.spec
        rng = np.random.default_rng([s.train.seed, STREAM_TRAIN, step])
        m = s.masks
        scale = context_scale_at(m.context_schedule, m.context_scale, step, s.train.steps, m.schedule_span, rng)
        return collate([self.example(rng, scale) for _ in range(s.data.batch_size)], s.masks.share_positions)

    def example(self, rng: np.random.Generator, scale) -> Example:
        d = self.spec.data
        n_images = 2 if rng.random() < d.pair_ratio else 1
        with_text = rng.random() < d.text_ratio
        draw = self.source.draw(rng, n_images)
        ex = Example(segments=[text_segment([tok.BOS, tok.IMAGE_START])])
        for i in range(n_images):
            if i:
                ex.segments.append(text_segment([tok.IMAGE_END, tok.IMAGE_START]))
            add_item(ex, image_item(draw.images[i], d.grid), rng, self.spec, scale)
        text = None
        if with_text:
            if d.text_relevance == "unrelated":
                from llmjepa.data.text import unrelated_text

                text = unrelated_text(rng)
            elif n_images == 2:
                text = self.source.compare(draw.scenes[0], draw.scenes[1], rng)
            else:
                text = self.source.related(draw.scenes[0], rng, d.text_kind)
        ex.segments.append(text_tail(text, [tok.IMAGE_END]))
        return ex


class ProbeSet:
    """The fixed held-out images, their labels and texts, the same for every run of a data spec."""

    def __init__(self, spec: ExperimentSpec):
        self.spec = spec
        e, d = spec.eval, spec.data
        self.source = make_source(d)
        rng = np.random.default_rng([e.seed, STREAM_EVAL])
        n = e.probe_train + e.probe_test
        self.draw = self.source.draw(rng, n)
        self.texts = [self.source.related(sc, rng, d.text_kind) for sc in self.draw.scenes]
        self.captions = [self.source.caption(sc, rng) for sc in self.draw.scenes]
        self.train = np.arange(e.probe_train)
        self.test = np.arange(e.probe_train, n)
        self.collapse = self.test[: e.collapse_size]
        self.text = self.test[: e.text_size]

    def item_batch(self, idx: np.ndarray, with_text: bool = True, shuffle: np.ndarray | None = None) -> Batch:
        """`[bos <image>] [tgt] [</image> text <eos>]` for images idx (images taken from
        `shuffle` instead, text kept, when given: the image-use control)."""
        g = self.spec.data.grid
        images = idx if shuffle is None else shuffle
        exs = []
        for i, j in zip(idx, images):
            ex = Example(segments=[text_segment([tok.BOS, tok.IMAGE_START])])
            add_item(ex, image_item(self.draw.images[j], g), None, self.spec, None, with_contexts=False)
            ex.segments.append(text_tail(self.texts[i] if with_text else None, [tok.IMAGE_END]))
            exs.append(ex)
        return collate(exs)

    def caption_batch(self, idx: np.ndarray) -> Batch:
        """`[bos caption <eos>]` text-only sequences for retrieval."""
        exs = [Example(segments=[text_tail(self.captions[i], [tok.BOS])]) for i in idx]
        return collate(exs)
