"""One training sequence as segments, and a batch of them as index tensors.

An example is a list of segments (text, context copy, target copy) plus prediction pairs
(context segment -> target segment, target patch indices). This module assigns 1-D positions
and media coordinates, flattens pairs to token indices and pads a batch. Segment ids are
explicit: context and target copies share positions, so boundaries can never be read off them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

MODALITIES = ("text", "image", "video", "audio")
TEXT_MOD, IMAGE, VIDEO, AUDIO = range(4)
ROLES = ("text", "context", "target", "pad")
TEXT, CONTEXT, TARGET, PAD = range(4)
IGNORE = -100  # CE target for tokens without a text loss


@dataclass
class Item:
    """One media item: its model input and the (t, y, x) coordinate of each of its N patches."""

    modality: int
    data: np.ndarray  # image (C, H, W); video (C, T, H, W); audio (1, F, T)
    coords: np.ndarray  # (N, 3) float
    rel_pos: np.ndarray | None = None  # (N,) 1-D position of each patch within the item's range; arange(N) if None
    anchor: int | None = None  # another item whose position range this one shares (audio at the video's times)

    @property
    def num_patches(self) -> int:
        return len(self.coords)

    def offsets(self) -> np.ndarray:
        return np.arange(self.num_patches) if self.rel_pos is None else self.rel_pos

    @property
    def span(self) -> int:
        return int(self.offsets().max()) + 1


@dataclass
class Segment:
    role: int
    modality: int = TEXT_MOD
    tokens: np.ndarray | None = None  # text: (n,) token ids
    loss: np.ndarray | None = None  # text: (n,) bool, token i is trained to predict token i + 1
    answer: np.ndarray | None = None  # text: (n,) bool, token i + 1 belongs to an answer (scored apart)
    item: int = -1  # media: index into Example.items
    patches: np.ndarray | None = None  # media: patch indices this copy holds (all for a target)


@dataclass
class Pair:
    context: int  # segment index of a context copy
    target: int  # segment index of a target copy
    patches: np.ndarray  # target patch indices to predict


@dataclass
class Example:
    segments: list[Segment]
    pairs: list[Pair] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)


def text_segment(tokens, loss=None, answer=None) -> Segment:
    tokens = np.asarray(tokens, dtype=np.int64)
    loss = np.zeros(len(tokens), bool) if loss is None else np.asarray(loss, bool)
    answer = np.zeros(len(tokens), bool) if answer is None else np.asarray(answer, bool)
    return Segment(TEXT, TEXT_MOD, tokens=tokens, loss=loss, answer=answer)


def media_segment(role: int, item: int, items: list[Item], patches=None) -> Segment:
    n = items[item].num_patches
    patches = np.arange(n) if patches is None else np.sort(np.asarray(patches, dtype=np.int64))
    return Segment(role, items[item].modality, item=item, patches=patches)


@dataclass
class Batch:
    """Index tensors for B padded sequences of length L, and the media they point into."""

    tokens: torch.Tensor  # (B, L) text token ids (0 for media and pad)
    targets: torch.Tensor  # (B, L) next-token targets, IGNORE where no text loss
    answer: torch.Tensor  # (B, L) bool, the target is a byte of an answer ("q: ... a: <answer>")
    segment: torch.Tensor  # (B, L) segment ordinal within the example; pads come last
    role: torch.Tensor  # (B, L) TEXT / CONTEXT / TARGET / PAD
    modality: torch.Tensor  # (B, L) index into MODALITIES
    position: torch.Tensor  # (B, L) 1-D logical position (RoPE)
    coords: torch.Tensor  # (B, L, 3) media coordinates (t, y, x); zeros for text
    media_index: torch.Tensor  # (B, L) row in the modality's flat patch table (item * N + patch), -1 if text
    item: torch.Tensor  # (B, L) batch-wide item index within its modality, -1 if text
    pair_ctx: torch.Tensor  # (P, C) flat token index b * L + l of each context token
    pair_ctx_mask: torch.Tensor  # (P, C) bool, real (not padding)
    pair_tgt: torch.Tensor  # (P, T) flat token index of each target token to predict
    pair_tgt_mask: torch.Tensor  # (P, T) bool
    pair_modality: torch.Tensor  # (P,) modality of the target
    media: dict[str, torch.Tensor]  # modality name -> stacked item data (I, ...)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tokens.shape)

    def to(self, device) -> "Batch":
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = {k: t.to(device) for k, t in v.items()} if isinstance(v, dict) else v.to(device)
        return Batch(**out)


def _positions(ex: Example, share_positions: bool) -> list[np.ndarray]:
    """1-D positions per segment. Each item reserves a range of positions when first seen (an
    anchored item shares its anchor's range instead); with sharing, every copy of patch p sits at
    range start + offset(p); without it, each context copy takes a fresh range of its own length
    and the target reserves the item's range."""
    pos, base, out = 0, {}, []
    for seg in ex.segments:
        if seg.role == TEXT:
            out.append(pos + np.arange(len(seg.tokens)))
            pos += len(seg.tokens)
        elif share_positions or seg.role == TARGET:
            item = ex.items[seg.item]
            if seg.item not in base:
                if item.anchor is not None:
                    if item.anchor not in base:
                        raise ValueError("an anchored item must come after the item it shares positions with")
                    base[seg.item] = base[item.anchor]
                    pos = max(pos, base[seg.item] + item.span)
                else:
                    base[seg.item] = pos
                    pos += item.span
            out.append(base[seg.item] + item.offsets()[seg.patches])
        else:
            out.append(pos + np.arange(len(seg.patches)))
            pos += len(seg.patches)
    return out


def collate(examples: list[Example], share_positions: bool = True) -> Batch:
    """Pad examples into one Batch; items of one modality must share a patch count."""
    B = len(examples)
    lengths = [sum(len(s.tokens) if s.role == TEXT else len(s.patches) for s in ex.segments) for ex in examples]
    L = max(lengths)
    tokens = np.zeros((B, L), np.int64)
    targets = np.full((B, L), IGNORE, np.int64)
    answer = np.zeros((B, L), bool)
    segment = np.zeros((B, L), np.int64)
    role = np.full((B, L), PAD, np.int64)
    modality = np.zeros((B, L), np.int64)
    position = np.zeros((B, L), np.int64)
    coords = np.zeros((B, L, 3), np.float32)
    media_index = np.full((B, L), -1, np.int64)
    item = np.full((B, L), -1, np.int64)

    media: dict[int, list[np.ndarray]] = {}
    npatch: dict[int, int] = {}
    pairs_ctx, pairs_tgt, pairs_mod = [], [], []
    for b, ex in enumerate(examples):
        # batch-wide index of each of this example's items within its modality
        global_item = []
        for it in ex.items:
            if npatch.setdefault(it.modality, it.num_patches) != it.num_patches:
                raise ValueError(f"{MODALITIES[it.modality]} items in one batch must share a patch count")
            media.setdefault(it.modality, []).append(it.data)
            global_item.append(len(media[it.modality]) - 1)
        seg_tokens = []  # flat token index of each segment's tokens
        cursor = 0
        for s_idx, (seg, pos) in enumerate(zip(ex.segments, _positions(ex, share_positions))):
            n = len(pos)
            sl = slice(cursor, cursor + n)
            segment[b, sl], role[b, sl], modality[b, sl], position[b, sl] = s_idx, seg.role, seg.modality, pos
            if seg.role == TEXT:
                tokens[b, sl] = seg.tokens
                nxt = np.append(seg.tokens[1:], IGNORE)
                targets[b, sl] = np.where(seg.loss, nxt, IGNORE)
                answer[b, sl] = seg.answer & seg.loss
            else:
                it = ex.items[seg.item]
                coords[b, sl] = it.coords[seg.patches]
                g = global_item[seg.item]
                item[b, sl] = g
                media_index[b, sl] = g * it.num_patches + seg.patches
            seg_tokens.append(b * L + cursor + np.arange(n))
            cursor += n
        segment[b, cursor:] = len(ex.segments)  # padding: one last segment nobody else sees
        for p in ex.pairs:
            tseg = ex.segments[p.target]
            keep = np.isin(tseg.patches, p.patches)
            pairs_ctx.append(seg_tokens[p.context])
            pairs_tgt.append(seg_tokens[p.target][keep])
            pairs_mod.append(tseg.modality)

    def pad(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max((len(r) for r in rows), default=0)
        idx = np.zeros((len(rows), width), np.int64)
        mask = np.zeros((len(rows), width), bool)
        for i, r in enumerate(rows):
            idx[i, : len(r)], mask[i, : len(r)] = r, True
        return torch.from_numpy(idx), torch.from_numpy(mask)

    pair_ctx, pair_ctx_mask = pad(pairs_ctx)
    pair_tgt, pair_tgt_mask = pad(pairs_tgt)
    t = torch.from_numpy
    return Batch(
        tokens=t(tokens), targets=t(targets), answer=t(answer), segment=t(segment), role=t(role), modality=t(modality),
        position=t(position), coords=t(coords), media_index=t(media_index), item=t(item),
        pair_ctx=pair_ctx, pair_ctx_mask=pair_ctx_mask, pair_tgt=pair_tgt, pair_tgt_mask=pair_tgt_mask,
        pair_modality=torch.tensor(pairs_mod, dtype=torch.long),
        media={MODALITIES[m]: t(np.stack(v)).float() for m, v in media.items()},
    )


def grid_coords(rows: int, cols: int, frames: int = 1) -> np.ndarray:
    """(frames * rows * cols, 3) row-major (t, y, x) coordinates of a patch grid."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([t.ravel(), y.ravel(), x.ravel()], axis=1).astype(np.float32)
