"""Evaluation of a model on the fixed held-out probe set: collapse, probes, alignment, media use.

Two tiers: `collapse()` is cheap (pooled target states of a few hundred items per modality,
every `eval.every` steps); `full()` adds linear and attentive probes next to raw-pixel and
majority baselines, item-to-caption retrieval and mutual-kNN per layer (video-to-audio too), the
media-use gaps (caption CE with shuffled items, or without the audio, minus with the right ones),
and, when `eval.partial` lists fractions, the same probes and CE on partial items (dynamic
compute). Metric keys read `group/name/modality[/layer]`; the arithmetic is in `metrics.py`.
Item states never read later tokens, so probes run on media-only sequences.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from llmjepa import metrics
from llmjepa.data.layout import IGNORE, MODALITIES, TARGET, TEXT
from llmjepa.data.stream import ProbeSet
from llmjepa.specs import DataSpec, ExperimentSpec

_PIXEL_CACHE: dict[tuple, dict[str, float]] = {}


def layer_indices(depth: int) -> dict[str, int]:
    """Layers {L/4, L/2, 3L/4, L} by name (`L2` is the output of block 2)."""
    idx = sorted({max(1, round(depth * f)) for f in (0.25, 0.5, 0.75, 1.0)})
    return {f"L{i}": i for i in idx}


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation with no fixed point (every example gets another example's media)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    return np.roll(perm, 1)[np.argsort(perm)]


def raw_patches(media: np.ndarray, modality: str, d: DataSpec) -> torch.Tensor:
    """Raw model inputs cut into the model's patches: (N, T, values per patch)."""
    x = torch.as_tensor(media)
    p = d.patch_size
    if modality == "image":
        return F.unfold(x, p, stride=p).transpose(1, 2)
    if modality == "video":  # (N, C, T, S, S) -> tubelets (t, y, x) row-major
        N, C, T, S, _ = x.shape
        g = S // p
        x = x.reshape(N, C, T // 2, 2, g, p, g, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        return x.reshape(N, (T // 2) * g * g, -1)
    N, _, Fm, Ts = x.shape  # audio (N, 1, F, T) -> (time, mel) row-major
    tp, fp = 2 * d.spec_per_frame, d.mel_patch
    x = x.reshape(N, Fm // fp, fp, Ts // tp, tp).permute(0, 3, 1, 2, 4)
    return x.reshape(N, (Ts // tp) * (Fm // fp), -1)


def example_ce(logits: torch.Tensor, targets: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """(B, L, V), (B, L), (B, L) -> (B, 2): mean next-token CE per example over all its text
    tokens, and over its answer bytes only (NaN without an answer)."""
    ce = F.cross_entropy(logits.transpose(1, 2).float(), targets, ignore_index=IGNORE, reduction="none")  # (B, L)
    text = ce.sum(1) / (targets != IGNORE).sum(1).clamp(min=1)
    n_ans = answer.sum(1)
    ans = (ce * answer).sum(1) / n_ans.clamp(min=1)
    return torch.stack([text, torch.where(n_ans > 0, ans, torch.nan)], dim=1)


class Evaluator:
    def __init__(self, spec: ExperimentSpec, device: str | torch.device = "cpu"):
        self.spec = spec
        self.device = torch.device(device)
        self.probe = ProbeSet(spec)
        self.mods = self.probe.modalities  # primary first
        self.layers = layer_indices(spec.model.depth)
        self.target_layer = spec.objective.target_layer % (spec.model.depth + 1)
        self.last = f"L{spec.model.depth}"
        self._pixels: dict[str, float] | None = None

    # ------------------------------------------------------------------ forward passes
    @torch.no_grad()
    def _run(self, model, idx, with_text=False, shuffle=None, modalities=None, patches=False, keep=1.0, resolution=1.0):
        """Mean-pooled target states {(modality, layer name): (N, D)}, last-layer patch tokens
        {modality: (N, T, D)} and per-example text CE (N, 2: all text, answers only) for the
        probe items idx."""
        mods = modalities or self.mods
        layers = list(self.layers.items()) + [("target", self.target_layer)]
        pooled = {(m, name): [] for m in mods for name, _ in layers}
        tokens = {m: [] for m in mods}
        ces = []
        bs = self.spec.eval.batch_size
        for start in range(0, len(idx), bs):
            sl = slice(start, start + bs)
            batch = self.probe.item_batch(idx[sl], with_text, None if shuffle is None else shuffle[sl], mods,
                                          keep, seed=start, resolution=resolution).to(self.device)
            out = model(batch, logits=with_text)
            for m in mods:
                sel = (batch.role == TARGET) & (batch.modality == MODALITIES.index(m))  # (B, L)
                w = sel.float()[..., None]
                for name, layer in layers:
                    h = out.hidden[layer]
                    pooled[(m, name)].append(((h * w).sum(1) / w.sum(1).clamp(min=1)).float().cpu())
                if patches:
                    h = out.hidden[-1]
                    tokens[m].append(h[sel].view(sel.shape[0], -1, h.shape[-1]).float().cpu())
            if with_text:
                ces.append(example_ce(out.logits, batch.targets, batch.answer).cpu())
        return (
            {k: torch.cat(v) for k, v in pooled.items()},
            {m: torch.cat(v) for m, v in tokens.items()} if patches else {},
            torch.cat(ces) if with_text else None,
        )

    @torch.no_grad()
    def _caption_states(self, model, idx: np.ndarray) -> dict[str, torch.Tensor]:
        out_states = {name: [] for name in self.layers}
        bs = self.spec.eval.batch_size
        for start in range(0, len(idx), bs):
            batch = self.probe.caption_batch(idx[start : start + bs]).to(self.device)
            out = model(batch, logits=False)
            w = (batch.role == TEXT).float()[..., None]  # (B, L, 1): caption tokens, not padding
            for name, layer in self.layers.items():
                out_states[name].append(((out.hidden[layer] * w).sum(1) / w.sum(1)).float().cpu())
        return {k: torch.cat(v) for k, v in out_states.items()}

    # ------------------------------------------------------------------ tiers
    def collapse(self, model) -> dict[str, float]:
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        out = {}
        for m in self.mods:  # each modality alone: what it represents by itself
            pooled, _, _ = self._run(model, self.probe.collapse, modalities=[m])
            for (_, name), Z in pooled.items():
                for k, v in metrics.collapse_metrics(Z).items():
                    out[f"collapse/{k}/{m}/{name}"] = v
        model.train(was_training)
        c, m0 = self.spec.collapse, self.mods[0]
        out["collapse/collapsed"] = float(metrics.is_collapsed(
            {k: out[f"collapse/{k}/{m0}/target"] for k in ("rankme", "ln_std_mean")}, c.rankme_min, c.ln_std_min
        ))
        out["time/eval_collapse_s"] = time.perf_counter() - t0
        return out

    def _probes(self, pooled, tokens, ntr: int, m: str, suffix: str = "") -> dict[str, float]:
        """Ridge probes per layer (and attentive at the last layer) of modality m's attributes."""
        e, p = self.spec.eval, self.probe
        attrs = {a: torch.as_tensor(y) for a, y in p.draw.attributes[m].items()}
        classes = p.source.attributes[m]
        out = {}
        for name in self.layers:
            Z = pooled[(m, name)]
            accs = [metrics.ridge_probe(Z[:ntr], y[:ntr], Z[ntr:], y[ntr:], classes[a], e.ridge) for a, y in attrs.items()]
            if not suffix:
                out.update({f"probe/acc/{a}/{m}/{name}": acc for a, acc in zip(attrs, accs)})
            out[f"probe/acc/mean/{m}/{name}{suffix}"] = float(np.mean(accs))
        if m in tokens:
            T = tokens[m]
            accs = metrics.attentive_probe_multi(
                T[:ntr], {a: y[:ntr] for a, y in attrs.items()}, T[ntr:], {a: y[ntr:] for a, y in attrs.items()},
                classes, steps=e.attentive_steps, seed=e.seed,
            )
            out.update({f"probe/attn/{a}/{m}/{self.last}": v for a, v in accs.items()})
            out[f"probe/attn/mean/{m}/{self.last}"] = float(np.mean(list(accs.values())))
        return out

    def full(self, model) -> dict[str, float]:
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        p, e = self.probe, self.spec.eval
        everything = np.concatenate([p.train, p.test])
        ntr, nt = len(p.train), len(p.text)
        attentive = e.attentive_steps > 0
        out: dict[str, float] = {}
        states = {}
        for m in self.mods:  # each modality alone (audio probed from the audio only)
            pooled, tokens, _ = self._run(model, everything, modalities=[m], patches=attentive)
            out.update(self._probes(pooled, tokens, ntr, m))
            states[m] = pooled
        _, _, ce = self._run(model, p.text, with_text=True)
        shuffle = p.text[derangement(len(p.text), e.seed)]
        _, _, ce_shuffled = self._run(model, p.text, with_text=True, shuffle=shuffle)
        captions = self._caption_states(model, p.text)
        m0 = self.mods[0]
        for name in self.layers:
            Zt = states[m0][(m0, name)][ntr : ntr + nt]  # the items whose captions are scored
            r = metrics.retrieval_recall(Zt, captions[name])
            out[f"align/r1/{m0}-text/{name}"] = r["r1"]
            out[f"align/r5/{m0}-text/{name}"] = r["r5"]
            out[f"align/mknn/{m0}-text/{name}"] = metrics.mutual_knn(Zt, captions[name], e.knn)
            if "audio" in states:
                V, A = states["video"][("video", name)][ntr:], states["audio"][("audio", name)][ntr:]
                out[f"align/r1/video-audio/{name}"] = metrics.retrieval_recall(V, A)["r1"]
                out[f"align/mknn/video-audio/{name}"] = metrics.mutual_knn(V, A, e.knn)
        right, wrong = ce[:, 0].mean().item(), ce_shuffled[:, 0].mean().item()
        out["text/ce/caption"] = right
        out["text/ce/caption_shuffled"] = wrong
        out["text/media_use_gap"] = wrong - right
        if m0 == "image":
            out["text/image_use_gap"] = wrong - right
        # the same on answer bytes alone: templates dilute the gap over the whole text
        out["text/ce/answer"] = ce[:, 1].nanmean().item()
        out["text/answer_use_gap"] = (ce_shuffled[:, 1] - ce[:, 1]).nanmean().item()
        if "audio" in self.mods:
            _, _, ce_silent = self._run(model, p.text, with_text=True, modalities=["video"])
            out["text/ce/caption_without_audio"] = ce_silent[:, 0].mean().item()
            out["text/audio_use_gap"] = ce_silent[:, 0].mean().item() - right
            out["text/answer_audio_use_gap"] = (ce_silent[:, 1] - ce[:, 1]).nanmean().item()
        # dynamic compute: the same model shown part of each item, or images at a lower resolution
        views = [(f"/keep{k:g}", {"keep": k}) for k in e.partial]  # MLflow names allow no "@"
        views += [(f"/res{r:g}", {"resolution": r}) for r in (e.resolutions if m0 == "image" else [])]
        for tag, view in views:
            pooled, _, _ = self._run(model, everything, modalities=[m0], **view)
            acc = self._probes(pooled, {}, ntr, m0, suffix=tag)
            out[f"dyn/probe_acc/{m0}{tag}"] = acc[f"probe/acc/mean/{m0}/{self.last}{tag}"]
            _, _, ce_k = self._run(model, p.text, with_text=True, modalities=self.mods, **view)
            out[f"dyn/text_ce/{m0}{tag}"] = ce_k[:, 0].mean().item()
        model.train(was_training)
        out.update(self.pixel_baselines())
        out["time/eval_full_s"] = time.perf_counter() - t0
        return out

    def pixel_baselines(self) -> dict[str, float]:
        """Probes on raw inputs (ridge on the flat item, attentive on raw patches) and the
        majority class, per modality: computed once per probe set and process."""
        key = (self.spec.data.model_dump_json(), self.spec.eval.model_dump_json())
        self._pixels = self._pixels or _PIXEL_CACHE.get(key)
        if self._pixels is None:
            p, e = self.probe, self.spec.eval
            ntr = len(p.train)
            out = {}
            for m in self.mods:
                x = torch.as_tensor(p.draw.media[m])
                flat, raw = x.flatten(1), raw_patches(x, m, self.spec.data)
                attrs = {a: torch.as_tensor(y) for a, y in p.draw.attributes[m].items()}
                classes = p.source.attributes[m]
                pix, maj = [], []
                for a, y in attrs.items():
                    pix.append(metrics.ridge_probe(flat[:ntr], y[:ntr], flat[ntr:], y[ntr:], classes[a], e.ridge))
                    maj.append(metrics.majority_baseline(y[:ntr], y[ntr:]))
                    out[f"probe/pixel/{a}/{m}"], out[f"probe/majority/{a}/{m}"] = pix[-1], maj[-1]
                out[f"probe/pixel/mean/{m}"], out[f"probe/majority/mean/{m}"] = float(np.mean(pix)), float(np.mean(maj))
                if e.attentive_steps > 0:
                    accs = metrics.attentive_probe_multi(
                        raw[:ntr], {a: y[:ntr] for a, y in attrs.items()}, raw[ntr:],
                        {a: y[ntr:] for a, y in attrs.items()}, classes, steps=e.attentive_steps, seed=e.seed,
                    )
                    out.update({f"probe/pixel_attn/{a}/{m}": v for a, v in accs.items()})
                    out[f"probe/pixel_attn/mean/{m}"] = float(np.mean(list(accs.values())))
            self._pixels = _PIXEL_CACHE[key] = out
        return dict(self._pixels)
