"""One run: batch -> forward -> losses -> backward -> step -> EMA -> log -> eval, and its bookkeeping.

Owns the optimizer and schedule, divergence handling (a non-finite loss ends the run as
`diverged`, recorded, not raised), atomic checkpoints and their resumption. Talks to MLflow only
through a tracker and to a sweep only through `callback(step, metrics)`, which may raise
`Pruned` to stop the run early.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from llmjepa import objective
from llmjepa.data import tokenizer as tok
from llmjepa.data.layout import PAD
from llmjepa.data.stream import Stream
from llmjepa.evaluate import Evaluator
from llmjepa.model.ema import ema_update, make_ema, momentum_at
from llmjepa.model.predictor import Predictor
from llmjepa.model.transformer import Transformer, flops_per_step
from llmjepa.specs import ExperimentSpec, flatten, spec_hash
from llmjepa.tracking import NullTracker, Tracker


class Pruned(Exception):
    """Raised by a callback to stop a run early (a sweep's pruner)."""


@dataclass
class RunResult:
    status: str  # finished | diverged | pruned
    reason: str
    steps: int
    final: dict[str, float]  # the latest value of every evaluated metric
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # evaluations
    wall_seconds: float = 0.0
    eval_seconds: float = 0.0
    run_id: str | None = None


def build(spec: ExperimentSpec) -> tuple[Transformer, Predictor]:
    """The model and predictor, initialised from the spec's seed."""
    torch.manual_seed(spec.train.seed)
    model = Transformer(spec.model, tok.VOCAB_SIZE, spec.data)
    predictor = Predictor(spec.model.dim, spec.predictor)
    return model, predictor


def make_optimizer(spec: ExperimentSpec, modules: list[nn.Module]) -> torch.optim.AdamW:
    """AdamW with decay on matrices only: biases, norms and 1-D tokens are never decayed."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    t = spec.train
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.betas)


def lr_at(spec: ExperimentSpec, step: int) -> float:
    """Linear warm-up, then cosine from lr down to lr * min_lr_ratio."""
    t = spec.train
    if step < t.warmup:
        return t.lr * (step + 1) / t.warmup
    frac = (step - t.warmup) / max(t.steps - t.warmup, 1)
    return t.lr * (t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def grad_norm(grads) -> float:
    """Global L2 norm of a gradient list (None entries: parameters the term does not reach)."""
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads if g is not None))


def term_grad_norms(terms: dict[str, torch.Tensor], params: list[torch.Tensor]) -> dict[str, float]:
    """Gradient norm that each weighted loss term sends into the model's parameters."""
    out = {}
    for name, term in terms.items():
        if term.requires_grad:
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            out[f"grad/norm/{name}"] = grad_norm(grads)
    return out


def code_version() -> str:
    try:
        here = Path(__file__).resolve().parent
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True)
        if rev.returncode == 0:
            return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except OSError:
        pass
    from llmjepa import __version__

    return __version__


def resolve_device(spec: ExperimentSpec) -> torch.device:
    d = spec.train.device
    if d == "auto":
        d = "cuda" if torch.cuda.is_available() else "cpu"
    if d == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available")
    return torch.device(d)


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, step: int, modules: dict[str, nn.Module], opt) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    state = {name: m.state_dict() for name, m in modules.items()}
    state.update(step=torch.tensor(step), optimizer=opt.state_dict(), rng=torch.get_rng_state())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, modules: dict[str, nn.Module], opt) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    for name, m in modules.items():
        m.load_state_dict(state[name])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


# ----------------------------------------------------------------------------- the run


def run(
    spec: ExperimentSpec,
    tracker: Tracker | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    checkpoint: str | Path | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> RunResult:
    """Train one experiment. Resumes from `checkpoint` when that file exists."""
    tracker = tracker or NullTracker()
    t = spec.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = resolve_device(spec)
    t_start = time.perf_counter()

    model, predictor = build(spec)
    ema = make_ema(model) if spec.objective.target_mode == "ema" else None
    model.to(device), predictor.to(device)
    if ema is not None:
        ema.to(device)
    opt = make_optimizer(spec, [model, predictor])
    modules = {"model": model, "predictor": predictor} | ({"ema": ema} if ema is not None else {})
    stream = Stream(spec)
    evaluator = Evaluator(spec, device)
    model_params = [p for p in model.parameters() if p.requires_grad]

    tracker.log_params(flatten(spec))
    tracker.set_tags({
        "spec_hash": spec_hash(spec), "seed": t.seed, "code_version": code_version(),
        "llmjepa.target_mode": spec.objective.target_mode,
        "params/model": sum(p.numel() for p in model.parameters()),
        "params/predictor": sum(p.numel() for p in predictor.parameters()),
    })

    start = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        start = load_checkpoint(ckpt, modules, opt)  # restores the RNG state saved with it
    else:
        torch.manual_seed(t.seed * 1_000_003)  # SIGReg directions

    history: list[tuple[int, dict[str, float]]] = []
    latest: dict[str, float] = {}
    eval_seconds = 0.0

    def evaluate(step: int, full: bool) -> dict[str, float]:
        nonlocal eval_seconds
        t0 = time.perf_counter()
        m = evaluator.collapse(model)
        if full:
            m.update(evaluator.full(model))
        eval_seconds += time.perf_counter() - t0
        m["time/eval_fraction"] = eval_seconds / max(time.perf_counter() - t_start, 1e-9)
        history.append((step, m))
        latest.update(m)
        tracker.log_metrics(m, step)
        if callback is not None:
            callback(step, m)
        return m

    def finish(status: str, reason: str, step: int) -> RunResult:
        wall = time.perf_counter() - t_start
        tracker.set_tags({"llmjepa.status": status, "llmjepa.reason": reason})
        tracker.log_metrics({"time/wall_s": wall, "time/eval_fraction": eval_seconds / wall}, step)
        if ckpt is not None and status == "finished":
            save_checkpoint(ckpt, step, modules, opt)
        return RunResult(status, reason, step, dict(latest), history, wall, eval_seconds, tracker.run_id)

    step = start
    try:
        if start == 0:
            evaluate(0, full=True)
        for step in range(start, t.steps):
            t0 = time.perf_counter()
            batch = stream.batch(step).to(device)
            lr = lr_at(spec, step)
            for g in opt.param_groups:
                g["lr"] = lr

            losses = objective.compute(model, predictor, batch, spec.objective, ema)  # forward
            if not torch.isfinite(losses.total):
                return finish("diverged", f"non-finite loss at step {step}: {losses.stats}", step)
            log_now = (step + 1) % t.log_every == 0 or step == 0
            stats = dict(losses.stats)
            if t.grad_norm_every and (step % t.grad_norm_every == 0 or step + 1 == t.steps):
                stats.update(term_grad_norms(losses.terms, model_params))
                log_now = True
            opt.zero_grad(set_to_none=True)
            losses.total.backward()  # backward
            total_norm = torch.nn.utils.clip_grad_norm_(
                [p for g in opt.param_groups for p in g["params"]], t.grad_clip if t.grad_clip > 0 else float("inf")
            )
            if not torch.isfinite(total_norm):
                return finish("diverged", f"non-finite gradient norm at step {step}", step)
            opt.step()  # step
            if ema is not None:  # EMA
                ema_update(ema, model, momentum_at(step, t.steps, spec.objective.ema_momentum))

            dt = time.perf_counter() - t0
            if log_now:  # log
                n_tok = int((batch.role != PAD).sum())
                base = stats.get("loss/jepa_baseline/all")
                stats.update({
                    "train/lr": lr, "grad/norm/total": float(total_norm), "time/step_s": dt,
                    "time/tokens_per_s": n_tok / dt,
                    "time/gflops_per_s": flops_per_step(model, predictor, batch, ema is not None) / dt / 1e9,
                })
                if base:
                    stats["loss/jepa_over_baseline/all"] = stats["loss/jepa/all"] / base
                tracker.log_metrics(stats, step + 1)
                latest.update(stats)
            if progress is not None:
                progress(step + 1, stats)
            done = step + 1
            full = done % spec.eval.probe_every == 0 or done == t.steps
            if done % spec.eval.every == 0 or full:  # eval
                evaluate(done, full)
            if ckpt is not None and t.checkpoint_every and done % t.checkpoint_every == 0:
                save_checkpoint(ckpt, done, modules, opt)
        return finish("finished", "", t.steps)
    except Pruned as e:  # raised by the callback of the latest evaluation
        return finish("pruned", str(e) or "pruned by the sweep", history[-1][0] if history else step)
