"""The attention mask against a pair-by-pair reading of the rule, and the layout it reads."""

import numpy as np
import torch

from helpers import random_example
from llmjepa.data.layout import CONTEXT, PAD, TARGET, TEXT, collate
from llmjepa.model.attention import dense_mask, flex_mask_mod


def reference(ex, L):
    """The rule evaluated per token pair from the example's segment list (no tensors)."""
    owner = []  # (segment index, segment) per token
    for s_idx, seg in enumerate(ex.segments):
        n = len(seg.tokens) if seg.role == TEXT else len(seg.patches)
        owner += [(s_idx, seg)] * n
    m = np.zeros((L, L), bool)
    for q, (sq, segq) in enumerate(owner):
        for k, (sk, segk) in enumerate(owner):
            if sq == sk:
                m[q, k] = segq.role != TEXT or k <= q
            elif sk < sq:
                m[q, k] = segk.role != CONTEXT
    return m, len(owner)


def test_dense_mask_equals_pairwise_rule_on_random_layouts():
    rng = np.random.default_rng(0)
    for _ in range(30):
        exs = [random_example(rng) for _ in range(3)]
        batch = collate(exs)
        mask = dense_mask(batch.segment, batch.role, batch.modality)[:, 0]
        L = batch.shape[1]
        for b, ex in enumerate(exs):
            ref, n = reference(ex, L)
            assert torch.equal(mask[b, :n, :n], torch.from_numpy(ref[:n, :n])), f"layout {b} differs"
            assert not mask[b, :n, n:].any(), "a real token reads padding"
            pads = batch.role[b] == PAD
            assert mask[b, pads][:, pads].diagonal().all(), "a padding row reads nothing (NaN in SDPA)"


def test_flex_mask_mod_equals_dense_mask():
    rng = np.random.default_rng(1)
    batch = collate([random_example(rng) for _ in range(4)])
    B, L = batch.shape
    mod = flex_mask_mod(batch.segment, batch.role, batch.modality)
    q = torch.arange(L)[:, None].expand(L, L)
    k = torch.arange(L)[None, :].expand(L, L)
    dense = dense_mask(batch.segment, batch.role, batch.modality)[:, 0]
    for b in range(B):
        bb = torch.full_like(q, b)
        assert torch.equal(mod(bb, 0, q, k), dense[b])


def test_context_and_target_share_positions_and_coords():
    rng = np.random.default_rng(2)
    ex = random_example(rng)
    batch = collate([ex])
    for seg_id in batch.segment[0].unique().tolist():
        sel = batch.segment[0] == seg_id
        if (batch.role[0, sel] == CONTEXT).all():
            item = batch.item[0, sel][0]
            tsel = (batch.item[0] == item) & (batch.role[0] == TARGET)
            patch = batch.media_index[0]
            for tok in sel.nonzero().flatten():
                twin = tsel & (patch == patch[tok])
                assert twin.sum() == 1
                assert batch.position[0, twin] == batch.position[0, tok]
                assert torch.equal(batch.coords[0, twin][0], batch.coords[0, tok])


def test_position_sharing_off_gives_contexts_their_own_positions():
    rng = np.random.default_rng(3)
    ex = random_example(rng)
    while not any(s.role == CONTEXT for s in ex.segments):
        ex = random_example(rng)
    shared, separate = collate([ex], True), collate([ex], False)
    ctx = shared.role[0] == CONTEXT
    tgt = shared.role[0] == TARGET
    assert set(separate.position[0, ctx].tolist()).isdisjoint(separate.position[0, tgt].tolist())
    assert set(shared.position[0, ctx].tolist()) <= set(shared.position[0, tgt].tolist())
