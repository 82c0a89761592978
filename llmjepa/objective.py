"""The training objective: ce_weight * CE(text) + jepa_weight * D(g_phi(h_ctx), T(h_tgt)) [+ SIGReg].

Owns the target modes (same_pass, stopgrad, ema), the target layer and normalisation, and the
SIGReg regulariser. Distances and baselines are the pure functions of `metrics.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmjepa import metrics
from llmjepa.data.layout import IGNORE, MODALITIES, TARGET, Batch
from llmjepa.model.transformer import Output
from llmjepa.specs import ObjectiveSpec


@dataclass
class Losses:
    total: torch.Tensor  # scalar to backpropagate
    terms: dict[str, torch.Tensor]  # weighted scalar terms: ce, jepa, sigreg (for gradient norms)
    stats: dict[str, float]  # unweighted values to log
    output: Output  # the forward pass, for metrics


def text_ce(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean next-token CE over tokens with a target, and their count (0 gives a zero loss)."""
    n = int((targets != IGNORE).sum())
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return ce / max(n, 1), n


def gather_tokens(h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """h (B, L, D), flat token indices (P, T) -> (P, T, D)."""
    return h.reshape(-1, h.shape[-1])[index]


def normalise(t: torch.Tensor, kind: str) -> torch.Tensor:
    return F.layer_norm(t, t.shape[-1:]) if kind == "layernorm" else t


def sigreg(z: torch.Tensor, slices: int, points: int = 17) -> torch.Tensor:
    """SIGReg (LeJEPA): Epps-Pulley distance of random 1-D projections of z (N, D) from N(0, 1)."""
    N, D = z.shape
    dirs = F.normalize(torch.randn(D, slices, device=z.device), dim=0)
    x = z @ dirs  # (N, S)
    t = torch.linspace(-5, 5, points, device=z.device)
    tx = x[..., None] * t  # (N, S, T)
    ecf_re, ecf_im = tx.cos().mean(0), tx.sin().mean(0)  # (S, T)
    phi = torch.exp(-0.5 * t**2)
    err = (ecf_re - phi) ** 2 + ecf_im**2
    return torch.trapezoid(err * phi, t, dim=-1).mean() * N


def compute(
    model: nn.Module,
    predictor: nn.Module,
    batch: Batch,
    spec: ObjectiveSpec,
    ema: nn.Module | None = None,
) -> Losses:
    out = model(batch)
    ce, n_text = text_ce(out.logits, batch.targets)
    terms = {"ce": spec.ce_weight * ce}
    stats = {"loss/ce/text": ce.item(), "data/text_tokens": float(n_text)}

    if batch.pair_tgt.numel():
        pred = predictor(out.hidden[-1], batch)  # (P, T, D)
        if spec.target_mode == "ema":
            assert ema is not None, "target_mode ema needs an EMA model"
            with torch.no_grad():
                source = ema(batch).hidden[spec.target_layer]
        else:
            source = out.hidden[spec.target_layer]
            if spec.target_mode == "stopgrad":
                source = source.detach()
        tgt = normalise(gather_tokens(source, batch.pair_tgt), spec.target_norm)  # (P, T, D)
        mask = batch.pair_tgt_mask
        jepa = metrics.jepa_distance(pred, tgt, mask, spec.distance)
        terms["jepa"] = spec.jepa_weight * jepa
        stats["loss/jepa/all"] = jepa.item()
        with torch.no_grad():
            stats["loss/jepa_baseline/all"] = metrics.constant_baseline(tgt.detach(), mask, spec.distance)
            for m in batch.pair_modality.unique().tolist():
                sel = batch.pair_modality == m
                stats[f"loss/jepa/{MODALITIES[m]}"] = metrics.jepa_distance(
                    pred[sel], tgt[sel], mask[sel], spec.distance
                ).item()
    if spec.sigreg_weight > 0:
        z = out.hidden[spec.target_layer][batch.role == TARGET]  # (N_target_tokens, D)
        reg = sigreg(z, spec.sigreg_slices)
        terms["sigreg"] = spec.sigreg_weight * reg
        stats["loss/sigreg/all"] = reg.item()

    total = sum(terms.values())
    stats["loss/total"] = total.item()
    return Losses(total=total, terms=terms, stats=stats, output=out)
