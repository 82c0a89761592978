"""Leakage through the mask, gradient routing per target mode, and the EMA copy."""

import pytest
import torch

from helpers import tiny_spec
from llmjepa import objective
from llmjepa.data.layout import CONTEXT, TARGET, TEXT
from llmjepa.data.stream import Stream
from llmjepa.model.ema import ema_update, make_ema, momentum_at
from llmjepa.train import build


def batch_and_model(*overrides):
    spec = tiny_spec(*overrides)
    model, predictor = build(spec)
    return spec, model.eval(), predictor, Stream(spec).batch(0)


def first_context(batch, b=0):
    seg = batch.segment[b][batch.role[b] == CONTEXT][0]
    return (batch.segment[b] == seg) & (batch.role[b] == CONTEXT)


def test_changing_a_context_changes_nothing_outside_it():
    spec, model, _, batch = batch_and_model("data.pair_ratio=0.5", "masks.num_contexts=2")
    ctx = first_context(batch)
    before = model(batch).hidden
    # point the context's tokens at a different image: its pixels change, nothing else does
    other = batch.media["image"][1:2] + torch.randn_like(batch.media["image"][:1])
    batch.media["image"] = torch.cat([batch.media["image"], other])
    n_patches = spec.data.grid**2
    batch.media_index[0, ctx] = (batch.media["image"].shape[0] - 1) * n_patches + batch.media_index[0, ctx] % n_patches
    after = model(batch).hidden
    outside = torch.ones_like(batch.role, dtype=torch.bool)
    outside[0] = ~ctx
    for layer, (h0, h1) in enumerate(zip(before, after)):
        assert torch.equal(h0[outside], h1[outside]), f"context leaked at layer {layer}"
    assert not torch.allclose(before[-1][0, ctx], after[-1][0, ctx]), "the perturbation did nothing"


def test_changing_a_later_token_changes_no_earlier_one():
    _, model, _, batch = batch_and_model()
    before = model(batch).hidden
    last_text = (batch.role[0] == TEXT).nonzero().flatten()[-2]
    batch.tokens[0, last_text] = (batch.tokens[0, last_text] + 7) % 256
    after = model(batch).hidden
    for h0, h1 in zip(before, after):
        assert torch.equal(h0[0, :last_text], h1[0, :last_text])
    assert not torch.equal(before[-1][0, last_text], after[-1][0, last_text])


def embedding_grads(mode: str):
    spec, model, predictor, batch = batch_and_model(
        f"objective.target_mode={mode}", "objective.ce_weight=0", "objective.target_layer=1"
    )
    model.train()
    ema = make_ema(model) if mode == "ema" else None
    losses = objective.compute(model, predictor, batch, spec.objective, ema)
    h0 = losses.output.hidden[0]
    h0.retain_grad()
    losses.total.backward()
    g = h0.grad.abs().sum(-1)  # (B, L)
    return g, batch, predictor, ema


@pytest.mark.parametrize("mode", ["same_pass", "stopgrad", "ema"])
def test_gradients_per_target_mode(mode):
    g, batch, predictor, ema = embedding_grads(mode)
    assert g[batch.role == CONTEXT].sum() > 0, "the context copy gets no gradient"
    target_grad = g[batch.role == TARGET].sum()
    if mode == "same_pass":
        assert target_grad > 0, "same_pass must send gradient into the target copy"
    else:
        assert target_grad == 0, f"{mode} must not send gradient into the target copy"
    for name, p in predictor.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"predictor {name} gets no gradient"
    if ema is not None:
        assert all(p.grad is None and not p.requires_grad for p in ema.parameters())


def test_ema_update_moves_towards_model():
    spec, model, _, _ = batch_and_model()
    ema = make_ema(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.parameters()]
    ema_update(ema, model, 0.9)
    for b, pe, pm in zip(before, ema.parameters(), model.parameters()):
        assert torch.allclose(pe, 0.9 * b + 0.1 * pm)
    assert momentum_at(0, 100, (0.996, 1.0)) == 0.996 and momentum_at(100, 100, (0.996, 1.0)) == 1.0


def test_predictor_handles_unequal_context_and_target_sizes():
    spec, model, predictor, batch = batch_and_model()
    out = model(batch)
    pred = predictor(out.hidden[-1], batch)
    P, T = batch.pair_tgt.shape
    assert pred.shape == (P, T, spec.model.dim)
    assert batch.pair_ctx.shape[1] != T
