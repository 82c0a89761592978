"""Training batches and evaluation sequences built from a source, deterministic per (seed, step).

Layouts (segments in order; contexts are hidden from every later token):
- image: `[bos <image>] [ctx]... [tgt] [</image> text <eos>]`, several images in a row for
  comparison text;
- video: the same with tubelets and 3-D masks spanning all frames;
- audio_video variant 1: `[bos <video>] [vid ctx] [vid tgt] [aud ctx] [aud tgt] [</audio> text <eos>]`
  with pairs vid->vid and aud->aud (the audio context sees the video target);
- audio_video variant 2: `[bos <video>] [vid ctx] [aud ctx] [vid tgt] [aud tgt] [...]` with the
  cross pairs aud ctx -> vid tgt and vid ctx -> aud tgt (within pairs as a switch).
`text_ratio` decides how many examples carry text at all. Masks are sampled here, never in the
model. Evaluation sequences hold full items only, as the model sees them at inference.
"""

from __future__ import annotations

import numpy as np

from llmjepa.data import tokenizer as tok
from llmjepa.data.layout import (
    AUDIO, CONTEXT, IMAGE, TARGET, VIDEO, Batch, Example, Item, Pair, Segment, collate, grid_coords,
    media_segment, text_segment,
)
from llmjepa.data.masks import BlockMask, block_shape, context_scale_at, multiblock, place_block
from llmjepa.data.sources import make_source
from llmjepa.data.text import answer_span, unrelated_text
from llmjepa.specs import DataSpec, ExperimentSpec

STREAM_TRAIN, STREAM_EVAL = 0, 1  # separate seed streams for training and held-out data
OPEN = {"image": tok.IMAGE_START, "video": tok.VIDEO_START, "audio": tok.AUDIO_START}
CLOSE = {"image": tok.IMAGE_END, "video": tok.VIDEO_END, "audio": tok.AUDIO_END}


# ----------------------------------------------------------------------------- items


def make_item(modality: str, data: np.ndarray, d: DataSpec, anchor: int | None = None) -> Item:
    """An item with its patch grid's coordinates. Video patches are (tubelet, y, x) row-major;
    audio patches are (time, mel) row-major with time in tubelet units, so that audio time t and
    video tubelet t carry the same time coordinate. An anchored audio item (shared_time) takes
    the video's 1-D positions of its time step."""
    g = d.grid
    if modality == "image":
        return Item(IMAGE, data, grid_coords(g, g))
    if modality == "video":
        return Item(VIDEO, data, grid_coords(g, g, frames=d.frames // 2))
    T, F = d.audio_grid
    coords = grid_coords(F, 1, frames=T)  # (t, f, 0)
    rel = None
    if anchor is not None:
        if F > g * g:
            raise ValueError("shared_time needs at most grid**2 mel patches per time step")
        t, f = np.divmod(np.arange(T * F), F)
        rel = t * g * g + f
    return Item(AUDIO, data, coords, rel_pos=rel, anchor=anchor)


def sample_mask(item: Item, d: DataSpec, m, rng, scale) -> BlockMask:
    """Multi-block mask for an item: 2-D blocks for images, the same spatial blocks through
    every tubelet for video (V-JEPA's 3-D blocks), time-frequency blocks for audio."""
    args = (m.num_targets, m.target_scale, m.target_aspect, scale, m.min_context)
    if item.modality == IMAGE:
        return multiblock(rng, d.grid, d.grid, *args)
    if item.modality == VIDEO:
        g2, T = d.grid * d.grid, d.frames // 2
        bm = multiblock(rng, d.grid, d.grid, *args)
        tile = lambda idx: (np.arange(T)[:, None] * g2 + idx[None, :]).ravel()  # noqa: E731
        return BlockMask(tile(bm.context), tuple(tile(t) for t in bm.targets))
    T, F = d.audio_grid
    return multiblock(rng, T, F, *args)


def text_tail(text: str | None, prefix: list[int]) -> Segment:
    """`prefix text <eos>` with a loss on every next token of the text (none without text)."""
    if text is None:
        return text_segment(prefix + [tok.EOS])
    ids = prefix + tok.encode(text) + [tok.EOS]
    loss = np.ones(len(ids), bool)
    loss[: len(prefix) - 1] = False  # the prefix before its last token predicts nothing of the text
    loss[-1] = False
    answer = np.zeros(len(ids), bool)
    start = answer_span(text)
    if start >= 0:  # positions whose next token is an answer byte (not the <eos>)
        answer[len(prefix) - 1 + start : len(ids) - 2] = True
    return text_segment(ids, loss, answer)


class Builder:
    """Appends segments and pairs to one example."""

    def __init__(self, spec: ExperimentSpec, rng, scale):
        self.spec, self.rng, self.scale = spec, rng, scale
        self.ex = Example(segments=[])

    def text(self, ids: list[int]) -> None:
        self.ex.segments.append(text_segment(ids))

    def item(self, item: Item) -> int:
        self.ex.items.append(item)
        return len(self.ex.items) - 1

    def contexts(self, idx: int, n: int | None = None) -> list[tuple[int, BlockMask]]:
        """n context copies of item idx (masks.num_contexts by default), with their masks."""
        out = []
        for _ in range(self.spec.masks.num_contexts if n is None else n):
            bm = sample_mask(self.ex.items[idx], self.spec.data, self.spec.masks, self.rng, self.scale)
            self.ex.segments.append(media_segment(CONTEXT, idx, self.ex.items, bm.context))
            out.append((len(self.ex.segments) - 1, bm))
        return out

    def target(self, idx: int, patches=None) -> int:
        self.ex.segments.append(media_segment(TARGET, idx, self.ex.items, patches))
        return len(self.ex.segments) - 1

    def pairs(self, contexts: list[tuple[int, BlockMask]], target: int, blocks_from=None) -> None:
        """Each context predicts the target's blocks: its own mask's targets, or those of
        `blocks_from` (the target item's own masks, for cross-modal pairs)."""
        for i, (seg, bm) in enumerate(contexts):
            blocks = (blocks_from[i % len(blocks_from)][1] if blocks_from else bm).targets
            self.ex.pairs += [Pair(seg, target, t) for t in blocks]


def add_copies(b: Builder, item: Item) -> None:
    idx = b.item(item)
    ctx = b.contexts(idx)
    b.pairs(ctx, b.target(idx))


def add_audio_video(b: Builder, video: np.ndarray, audio: np.ndarray) -> None:
    d = b.spec.data
    v = b.item(make_item("video", video, d))
    a = b.item(make_item("audio", audio, d, anchor=v if d.av_positions == "shared_time" else None))
    if d.av_variant == 1:
        vc = b.contexts(v)
        b.pairs(vc, b.target(v))
        ac = b.contexts(a)
        b.pairs(ac, b.target(a))
        return
    vc, ac = b.contexts(v), b.contexts(a)
    vt, at = b.target(v), b.target(a)
    b.pairs(ac, vt, blocks_from=vc)  # audio context -> video target, at the video's target blocks
    b.pairs(vc, at, blocks_from=ac)  # video context -> audio target
    if d.within_pairs:
        b.pairs(vc, vt)
        b.pairs(ac, at)


# ----------------------------------------------------------------------------- training


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
        return collate([self.example(rng, scale) for _ in range(s.data.batch_size)], m.share_positions)

    def example(self, rng: np.random.Generator, scale) -> Example:
        d = self.spec.data
        n_items = 2 if rng.random() < d.pair_ratio else 1
        with_text = rng.random() < d.text_ratio
        draw = self.source.draw(rng, n_items)
        b = Builder(self.spec, rng, scale)
        first = "image" if d.modality == "image" else "video"
        b.text([tok.BOS, OPEN[first]])
        for i in range(n_items):
            if i:
                b.text([CLOSE[first], OPEN[first]])
            if d.modality == "audio_video":
                add_audio_video(b, draw.media["video"][i], draw.media["audio"][i])
            else:
                add_copies(b, make_item(first, draw.media[first][i], d))
        text = None
        if with_text:
            if d.text_relevance == "unrelated":
                text = unrelated_text(rng)
            elif n_items == 2:
                text = self.source.compare(draw.scenes[0], draw.scenes[1], rng)
            else:
                text = self.source.related(draw.scenes[0], rng, d.text_kind)
        last = "audio" if d.modality == "audio_video" else first
        b.ex.segments.append(text_tail(text, [CLOSE[last]]))
        return b.ex


# ----------------------------------------------------------------------------- evaluation


class ProbeSet:
    """The fixed held-out items, their labels and texts, the same for every run of a data spec."""

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
        self.modalities = list(self.draw.media)  # primary modality first

    def item_batch(
        self,
        idx: np.ndarray,
        with_text: bool = True,
        shuffle: np.ndarray | None = None,
        modalities: list[str] | None = None,
        keep: float = 1.0,
        seed: int = 0,
        resolution: float = 1.0,
    ) -> Batch:
        """`[bos <m>] [tgt of each modality] [</m> text <eos>]` for items idx: target copies only.
        `shuffle` takes the media from other items (text kept: the image-use control);
        `modalities` restricts which media appear (audio alone, video without audio); `keep` < 1
        shows only a random block of that fraction of each item's patches (partial items);
        `resolution` < 1 shows images average-pooled to that fraction of their side."""
        d = self.spec.data
        mods = modalities or self.modalities
        media = idx if shuffle is None else shuffle
        rng = np.random.default_rng([seed, 7])
        exs = []
        for i, j in zip(idx, media):
            b = Builder(self.spec, rng, None)
            b.text([tok.BOS, OPEN[mods[0]]])
            anchor = None
            for m in mods:
                if m == "image" and resolution < 1:
                    item = low_resolution(self.draw.media[m][j], d, resolution)
                else:
                    item = make_item(m, self.draw.media[m][j], d, anchor if m == "audio" else None)
                k = b.item(item)
                if m == "video" and d.av_positions == "shared_time":
                    anchor = k
                b.target(k, None if keep >= 1 else partial(item, d, keep, rng))
            b.ex.segments.append(text_tail(self.texts[i] if with_text else None, [CLOSE[mods[-1]]]))
            exs.append(b.ex)
        return collate(exs)

    def caption_batch(self, idx: np.ndarray) -> Batch:
        """`[bos caption <eos>]` text-only sequences for retrieval."""
        exs = [Example(segments=[text_tail(self.captions[i], [tok.BOS])]) for i in idx]
        return collate(exs)


def partial(item: Item, d: DataSpec, keep: float, rng) -> np.ndarray:
    """Patch indices of one square-ish block covering about `keep` of the item (through every
    tubelet for video): a partial view, as a context copy is during training."""
    rows, cols = (d.audio_grid if item.modality == AUDIO else (d.grid, d.grid))
    block = place_block(rng, rows, cols, *block_shape(rng, rows, cols, (keep, keep), (1.0, 1.0)))
    idx = np.flatnonzero(block)
    if item.modality == VIDEO:
        idx = (np.arange(d.frames // 2)[:, None] * rows * cols + idx[None, :]).ravel()
    return idx


def low_resolution(image: np.ndarray, d: DataSpec, resolution: float) -> Item:
    """An image average-pooled by k = 1 / resolution: (g / k)^2 patches whose coordinates sit at
    the centres of the full-resolution patches they cover, so positions stay comparable."""
    k = round(1 / resolution)
    C, S, _ = image.shape
    if S % (k * d.patch_size):
        raise ValueError(f"resolution {resolution} does not divide a {S}px image into {d.patch_size}px patches")
    small = image.reshape(C, S // k, k, S // k, k).mean((2, 4))
    g = S // k // d.patch_size
    coords = grid_coords(g, g) * np.array([1, k, k], np.float32) + np.array([0, (k - 1) / 2, (k - 1) / 2], np.float32)
    return Item(IMAGE, small.astype(np.float32), coords)
