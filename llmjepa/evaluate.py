"""Evaluation of a model on the fixed held-out probe set: collapse, probes, alignment, image use.

Two tiers: `collapse()` is cheap (pooled target states of a few hundred images, every
`eval.every` steps); `full()` adds linear and attentive probes next to raw-pixel baselines,
image-to-caption retrieval and mutual-kNN per layer, and the image-use gap. Metric keys read
`group/name/modality[/layer]`. The metric arithmetic is in `metrics.py`.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from llmjepa import metrics
from llmjepa.data.layout import IGNORE, TARGET, TEXT
from llmjepa.data.stream import ProbeSet
from llmjepa.specs import ExperimentSpec


_PIXEL_CACHE: dict[tuple, dict[str, float]] = {}


def layer_indices(depth: int) -> dict[str, int]:
    """Layers {L/4, L/2, 3L/4, L} by name (`L2` is the output of block 2)."""
    idx = sorted({max(1, round(depth * f)) for f in (0.25, 0.5, 0.75, 1.0)})
    return {f"L{i}": i for i in idx}


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation with no fixed point (every example gets another example's image)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    return np.roll(perm, 1)[np.argsort(perm)]


class Evaluator:
    def __init__(self, spec: ExperimentSpec, device: str | torch.device = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        self.probe = ProbeSet(spec)
        self.layers = layer_indices(spec.model.depth)
        self.target_layer = spec.objective.target_layer % (spec.model.depth + 1)
        self.last = f"L{spec.model.depth}"
        self._pixels: dict[str, float] | None = None

    # ------------------------------------------------------------------ forward passes
    @torch.no_grad()
    def _run(self, model, idx: np.ndarray, with_text: bool, shuffle=None, patches: bool = False):
        """Pooled image states per layer (N, D), last-layer patch tokens (N, T, D) and per-example
        text CE (N,) for the probe images idx."""
        pooled = {name: [] for name in self.layers}
        pooled["target"] = []
        tokens, ces = [], []
        bs = self.spec.eval.batch_size
        for start in range(0, len(idx), bs):
            sl = slice(start, start + bs)
            batch = self.probe.item_batch(idx[sl], with_text, None if shuffle is None else shuffle[sl])
            out = model(batch.to(self.device), logits=with_text)
            sel = batch.role.to(self.device) == TARGET  # (B, L): the image tokens
            B = sel.shape[0]
            for name, layer in list(self.layers.items()) + [("target", self.target_layer)]:
                h = out.hidden[layer][sel].view(B, -1, out.hidden[layer].shape[-1])  # (B, N, D)
                pooled[name].append(h.mean(1).float().cpu())
            if patches:
                tokens.append(out.hidden[-1][sel].view(B, -1, out.hidden[-1].shape[-1]).float().cpu())
            if with_text:
                ces.append(example_ce(out.logits, batch.targets.to(self.device)).cpu())
        return (
            {k: torch.cat(v) for k, v in pooled.items()},
            torch.cat(tokens) if patches else None,
            torch.cat(ces) if with_text else None,
        )

    @torch.no_grad()
    def _caption_states(self, model, idx: np.ndarray) -> dict[str, torch.Tensor]:
        out_states = {name: [] for name in self.layers}
        bs = self.spec.eval.batch_size
        for start in range(0, len(idx), bs):
            batch = self.probe.caption_batch(idx[start : start + bs]).to(self.device)
            out = model(batch)
            w = (batch.role == TEXT).float()[..., None]  # (B, L, 1): caption tokens, not padding
            for name, layer in self.layers.items():
                h = out.hidden[layer]
                out_states[name].append(((h * w).sum(1) / w.sum(1)).float().cpu())
        return {k: torch.cat(v) for k, v in out_states.items()}

    # ------------------------------------------------------------------ tiers
    def collapse(self, model) -> dict[str, float]:
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        pooled, _, _ = self._run(model, self.probe.collapse, with_text=False)
        model.train(was_training)
        out = {}
        for name, Z in pooled.items():
            for k, v in metrics.collapse_metrics(Z).items():
                out[f"collapse/{k}/image/{name}"] = v
        c = self.spec.collapse
        out["collapse/collapsed"] = float(metrics.is_collapsed(
            {k: pooled_metric(out, k, "target") for k in ("rankme", "ln_std_mean")}, c.rankme_min, c.ln_std_min
        ))
        out["time/eval_collapse_s"] = time.perf_counter() - t0
        return out

    def full(self, model) -> dict[str, float]:
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        p, e = self.probe, self.spec.eval
        everything = np.concatenate([p.train, p.test])
        # image states never read later tokens, so the probes use image-only sequences
        pooled, patch_tokens, _ = self._run(model, everything, with_text=False, patches=e.attentive_steps > 0)
        ntr = len(p.train)
        _, _, ce = self._run(model, p.text, with_text=True)
        shuffle = p.text[derangement(len(p.text), e.seed)]
        _, _, ce_shuffled = self._run(model, p.text, with_text=True, shuffle=shuffle)
        captions = self._caption_states(model, p.text)
        model.train(was_training)

        out: dict[str, float] = {}
        attrs = {k: torch.as_tensor(v) for k, v in p.draw.attributes.items()}
        for name in self.layers:
            Z = pooled[name]
            accs = []
            for a, y in attrs.items():
                acc = metrics.ridge_probe(Z[:ntr], y[:ntr], Z[ntr:], y[ntr:], p.source.attributes[a], e.ridge)
                out[f"probe/acc/{a}/image/{name}"] = acc
                accs.append(acc)
            out[f"probe/acc/mean/image/{name}"] = float(np.mean(accs))
            Zt = Z[ntr : ntr + len(p.text)]  # the images whose captions are scored
            r = metrics.retrieval_recall(Zt, captions[name])
            out[f"align/r1/image-text/{name}"] = r["r1"]
            out[f"align/r5/image-text/{name}"] = r["r5"]
            out[f"align/mknn/image-text/{name}"] = metrics.mutual_knn(Zt, captions[name], e.knn)
        if patch_tokens is not None:
            accs = metrics.attentive_probe_multi(
                patch_tokens[:ntr], {a: y[:ntr] for a, y in attrs.items()},
                patch_tokens[ntr:], {a: y[ntr:] for a, y in attrs.items()},
                p.source.attributes, steps=e.attentive_steps, seed=e.seed,
            )
            for a, acc in accs.items():
                out[f"probe/attn/{a}/image/{self.last}"] = acc
            out[f"probe/attn/mean/image/{self.last}"] = float(np.mean(list(accs.values())))
        right, wrong = ce.mean().item(), ce_shuffled.mean().item()
        out["text/ce/caption"] = right
        out["text/ce/caption_shuffled"] = wrong
        out["text/image_use_gap"] = wrong - right
        out.update(self.pixel_baselines())
        out["time/eval_full_s"] = time.perf_counter() - t0
        return out

    def pixel_baselines(self) -> dict[str, float]:
        """Probes on raw pixels (ridge on the flat image, attentive on raw patches) and the
        majority class: computed once per probe set and process (a worker runs many trials)."""
        key = (self.spec.data.model_dump_json(), self.spec.eval.model_dump_json())
        self._pixels = self._pixels or _PIXEL_CACHE.get(key)
        if self._pixels is None:
            p, e = self.probe, self.spec.eval
            ps = self.spec.data.patch_size
            imgs = torch.as_tensor(p.draw.images)  # (N, C, S, S)
            flat = imgs.flatten(1)
            raw = F.unfold(imgs, ps, stride=ps).transpose(1, 2)  # (N, T, C * p * p)
            ntr = len(p.train)
            out = {}
            for a, y in p.draw.attributes.items():
                y = torch.as_tensor(y)
                k = p.source.attributes[a]
                out[f"probe/pixel/{a}"] = metrics.ridge_probe(flat[:ntr], y[:ntr], flat[ntr:], y[ntr:], k, e.ridge)
                out[f"probe/majority/{a}"] = metrics.majority_baseline(y[:ntr], y[ntr:])
            if e.attentive_steps > 0:
                attrs = {a: torch.as_tensor(y) for a, y in p.draw.attributes.items()}
                accs = metrics.attentive_probe_multi(
                    raw[:ntr], {a: y[:ntr] for a, y in attrs.items()},
                    raw[ntr:], {a: y[ntr:] for a, y in attrs.items()},
                    p.source.attributes, steps=e.attentive_steps, seed=e.seed,
                )
                out.update({f"probe/pixel_attn/{a}": v for a, v in accs.items()})
            for kind in ("pixel", "majority", "pixel_attn"):
                vals = [v for k, v in out.items() if k.startswith(f"probe/{kind}/")]
                if vals:
                    out[f"probe/{kind}/mean"] = float(np.mean(vals))
            self._pixels = _PIXEL_CACHE[key] = out
        return dict(self._pixels)


def pooled_metric(out: dict, name: str, layer: str) -> float:
    return out[f"collapse/{name}/image/{layer}"]


def example_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, L, V), (B, L) -> (B,) mean next-token CE per example over its text-loss tokens."""
    ce = F.cross_entropy(logits.transpose(1, 2).float(), targets, ignore_index=IGNORE, reduction="none")  # (B, L)
    n = (targets != IGNORE).sum(1).clamp(min=1)
    return ce.sum(1) / n
