"""The JEPA predictor g_phi: a narrow transformer from context states to target states.

Per prediction pair it reads the context copy's hidden states (projected to a small width) and
one learned mask token per target patch, each carrying the sin-cos embedding of that patch's
coordinates and its modality embedding. The queries come from the *target's* own grid, so a
context of one modality can predict a target of another with any number of patches and any
shape: nothing requires equal grids. Attention is bidirectional within a pair.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from llmjepa.data.layout import MODALITIES, Batch
from llmjepa.model.transformer import Block, init_weights, sincos
from llmjepa.specs import PredictorSpec


class Predictor(nn.Module):
    def __init__(self, model_dim: int, spec: PredictorSpec):
        super().__init__()
        Dp = spec.dim
        self.in_norm = nn.LayerNorm(model_dim)  # the residual stream's scale may drift
        self.in_proj = nn.Linear(model_dim, Dp)
        self.mask_token = nn.Parameter(torch.zeros(Dp))
        self.mod_emb = nn.Embedding(len(MODALITIES), Dp)
        self.blocks = nn.ModuleList(Block(Dp, spec.heads) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(Dp)
        self.out_proj = nn.Linear(Dp, model_dim)
        init_weights(self, spec.depth)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, h: torch.Tensor, batch: Batch) -> torch.Tensor:
        """h (B, L, D) -> predictions (P, T, D) at every pair's target tokens."""
        D = h.shape[-1]
        Dp = self.mask_token.shape[0]
        flat_h = h.reshape(-1, D)  # (B * L, D)
        coords = batch.coords.reshape(-1, 3)
        mods = batch.modality.reshape(-1)
        ctx = self.in_proj(self.in_norm(flat_h[batch.pair_ctx]))  # (P, C, Dp)
        ctx = ctx + sincos(coords[batch.pair_ctx], Dp) + self.mod_emb(mods[batch.pair_ctx])
        qry = self.mask_token + sincos(coords[batch.pair_tgt], Dp)  # (P, T, Dp)
        qry = qry + self.mod_emb(batch.pair_modality)[:, None, :]
        x = torch.cat([ctx, qry], dim=1)  # (P, C + T, Dp)
        keep = torch.cat([batch.pair_ctx_mask, batch.pair_tgt_mask], dim=1)  # (P, C + T)
        mask = keep[:, None, None, :]  # (P, 1, 1, C + T): every query reads the real tokens
        for block in self.blocks:
            x = block(x, mask)
        C = ctx.shape[1]
        return self.out_proj(self.norm(x[:, C:]))  # (P, T, D)
