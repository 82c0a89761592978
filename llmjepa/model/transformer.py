"""The compact multimodal transformer: one pass over text, context copies and target copies.

Design choices:
- text tokens embed by lookup, media patches by a linear patchifier per modality (kernel = stride;
  video as tubelets of 2 frames, audio as time x mel patches of a log-mel spectrogram);
- RoPE over the logical 1-D positions (context copies reuse their patches' positions), plus
  additive sin-cos embeddings of the media coordinates (t, y, x) and a modality embedding;
  there is deliberately no role embedding: a context must not be told from a target;
- pre-norm blocks; the attention mask is the segment rule of `attention.py`, dense for SDPA
  or a FlexAttention block mask on GPU;
- `forward` returns the residual stream after every block (index 0 = embeddings) and LM logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmjepa.data.layout import MODALITIES, TEXT_MOD, Batch
from llmjepa.model.attention import dense_mask, flex_mask_mod
from llmjepa.specs import DataSpec, ModelSpec


def sincos(coords: torch.Tensor, dim: int, base: float = 100.0) -> torch.Tensor:
    """(..., A) coordinates -> (..., dim) sin-cos features, an equal share of dims per axis."""
    axes = coords.shape[-1]
    per = 2 * math.ceil(dim / (2 * axes))
    freqs = base ** (-torch.arange(per // 2, device=coords.device, dtype=torch.float32) / (per // 2))
    ang = coords[..., None].float() * freqs  # (..., A, per/2)
    emb = torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)  # (..., A * per)
    return emb[..., :dim]


def rope_tables(position: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) positions -> cos, sin of shape (B, 1, L, head_dim / 2)."""
    inv = base ** (-torch.arange(0, head_dim, 2, device=position.device, dtype=torch.float32) / head_dim)
    ang = position[:, None, :, None].float() * inv  # (B, 1, L, hd/2)
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., ::2], x[..., 1::2]  # (B, H, L, hd/2) each
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class Block(nn.Module):
    """Pre-norm transformer block; RoPE when tables are given. Shared by model and predictor."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, int(mlp_ratio * dim))
        self.out = nn.Linear(int(mlp_ratio * dim), dim)

    def attend(self, x, mask, rope=None):
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, L, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if isinstance(mask, torch.Tensor):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, hd)
        else:  # a FlexAttention BlockMask
            from torch.nn.attention.flex_attention import flex_attention

            y = flex_attention(q, k, v, block_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, L, D))

    def forward(self, x, mask, rope=None):
        x = x + self.attend(self.ln1(x), mask, rope)  # (B, L, D)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


def init_weights(module: nn.Module, depth: int) -> None:
    """GPT-2 style: normal(0.02), zero biases, residual output projections scaled by depth."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * depth) if name.endswith(("proj.weight", "out.weight")) else 0.02
            nn.init.normal_(p, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)


@dataclass
class Output:
    hidden: list[torch.Tensor]  # depth + 1 tensors (B, L, D): embeddings, then each block's output
    logits: torch.Tensor | None  # (B, L, V); None when not asked for


class PatchEmbed(nn.Module):
    """Media (I, C, ...) -> (I, N, D) with a convolution whose kernel equals its stride.

    image (I, 3, H, W): Conv2d p x p; video (I, 3, T, H, W): Conv3d 2 x p x p (tubelets, any even
    T); audio log-mel (I, 1, F, T): Conv2d over (time, mel) after moving time first, so patches
    are (time, mel) row-major. Pixels are centred and kernels fan-in scaled so that content, not
    the shared position embedding, dominates the tokens at initialisation (otherwise every item
    pools to nearly the same vector and RankMe starts near 1). Log-mels arrive normalised."""

    def __init__(self, modality: str, dim: int, patch: int, channels: int = 3, mel_patch: int = 4, time_patch: int = 4):
        super().__init__()
        self.modality = modality
        if modality == "image":
            self.conv = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        elif modality == "video":
            self.conv = nn.Conv3d(channels, dim, kernel_size=(2, patch, patch), stride=(2, patch, patch))
        else:
            self.conv = nn.Conv2d(1, dim, kernel_size=(time_patch, mel_patch), stride=(time_patch, mel_patch))

    def reset(self) -> None:
        nn.init.normal_(self.conv.weight, std=self.conv.weight[0].numel() ** -0.5)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        if self.modality == "audio":
            x = x.transpose(2, 3)  # (I, 1, T, F)
        else:
            x = (x - 0.5) / 0.25
        return self.conv(x).flatten(2).transpose(1, 2)  # (I, N, D)


class Transformer(nn.Module):
    def __init__(self, spec: ModelSpec, vocab_size: int, data: DataSpec):
        super().__init__()
        self.spec = spec
        D = spec.dim
        self.tok_emb = nn.Embedding(vocab_size, D)
        mods = {"image": ["image"], "video": ["video"], "audio_video": ["video", "audio"]}[data.modality]
        self.patch_embed = nn.ModuleDict({
            m: PatchEmbed(m, D, data.patch_size, mel_patch=data.mel_patch, time_patch=2 * data.spec_per_frame)
            for m in mods
        })
        self.mod_emb = nn.Embedding(len(MODALITIES), D)
        self.blocks = nn.ModuleList(Block(D, spec.heads, spec.mlp_ratio) for _ in range(spec.depth))
        self.ln_f = nn.LayerNorm(D)
        self.lm_head = nn.Linear(D, vocab_size, bias=False)
        init_weights(self, spec.depth)
        for pe in self.patch_embed.values():
            pe.reset()

    def embed(self, batch: Batch) -> torch.Tensor:
        x = self.tok_emb(batch.tokens)  # (B, L, D)
        is_media = batch.modality != TEXT_MOD
        for name, data in batch.media.items():
            patches = self.patch_embed[name](data).flatten(0, 1)  # (I * N, D)
            sel = batch.modality == MODALITIES.index(name)  # (B, L)
            index = torch.where(sel, batch.media_index, 0)  # other tokens index other tables
            x = torch.where(sel[..., None], patches[index], x)
        x = x + self.mod_emb(batch.modality)
        return x + sincos(batch.coords, x.shape[-1]) * is_media[..., None]

    def attention_mask(self, batch: Batch):
        if self.spec.attention == "flex" and batch.tokens.is_cuda:
            from torch.nn.attention.flex_attention import create_block_mask

            B, L = batch.shape
            mod = flex_mask_mod(batch.segment, batch.role, batch.modality)
            return create_block_mask(mod, B, None, L, L, device=batch.tokens.device)
        return dense_mask(batch.segment, batch.role, batch.modality)  # (B, 1, L, L)

    def forward(self, batch: Batch, logits: bool = True) -> Output:
        x = self.embed(batch)  # (B, L, D)
        mask = self.attention_mask(batch)
        rope = rope_tables(batch.position, self.spec.dim // self.spec.heads, self.spec.rope_base)
        hidden = [x]
        for block in self.blocks:
            x = block(x, mask, rope)
            hidden.append(x)
        return Output(hidden=hidden, logits=self.lm_head(self.ln_f(x)) if logits else None)  # (B, L, V)


def flops_per_step(model: Transformer, predictor: nn.Module, batch: Batch, ema: bool = False) -> float:
    """Training FLOPs of one step: 6 x matmul parameters x tokens, plus 12 x L^2 x D per layer
    for attention (forward and backward), for the model, the predictor and an EMA forward."""
    B, L = batch.shape
    D, depth = model.spec.dim, model.spec.depth
    mat = sum(p.numel() for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n)
    tokens = B * L
    f = 6 * mat * tokens + 12 * depth * B * L * L * D
    P, S = batch.pair_ctx.shape[0], batch.pair_ctx.shape[1] + batch.pair_tgt.shape[1]
    pmat = sum(p.numel() for p in predictor.parameters() if p.dim() >= 2)
    Dp = predictor.mask_token.shape[0]
    f += 6 * pmat * P * S + 12 * len(predictor.blocks) * P * S * S * Dp
    if ema:
        f += 2 * mat * tokens + 4 * depth * B * L * L * D
    return float(f)
