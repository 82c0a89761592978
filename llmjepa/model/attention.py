"""The one attention rule of the sequence, as a dense boolean mask and as a FlexAttention mask_mod.

Query q may read key k iff
  - both are in the same media segment (bidirectional inside an item copy), or
  - both are in the same text segment and k <= q (causal), or
  - k's segment comes earlier and is not a context copy (contexts are hidden from later tokens).
Padding forms the last segment of each row, so no real token reads it.
"""

from __future__ import annotations

import torch

from llmjepa.data.layout import CONTEXT, TEXT_MOD


def allowed(seg_q, seg_k, idx_q, idx_k, mod_q, role_k):
    """The rule on broadcastable tensors: segment ids, token indices, query modality, key role."""
    same = seg_q == seg_k
    within = same & ((mod_q != TEXT_MOD) | (idx_k <= idx_q))
    earlier = (seg_k < seg_q) & (role_k != CONTEXT)
    return within | earlier


def dense_mask(segment: torch.Tensor, role: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """(B, L) ids -> (B, 1, L, L) bool, True where attention is allowed (for SDPA)."""
    B, L = segment.shape
    idx = torch.arange(L, device=segment.device)
    m = allowed(
        segment[:, :, None], segment[:, None, :],  # (B, L, 1), (B, 1, L)
        idx[None, :, None], idx[None, None, :],
        modality[:, :, None], role[:, None, :],
    )
    return m[:, None]  # (B, 1, L, L)


def flex_mask_mod(segment: torch.Tensor, role: torch.Tensor, modality: torch.Tensor):
    """The same rule as a FlexAttention mask_mod over (b, h, q_idx, kv_idx)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(segment[b, q_idx], segment[b, kv_idx], q_idx, kv_idx, modality[b, q_idx], role[b, kv_idx])

    return mask_mod
