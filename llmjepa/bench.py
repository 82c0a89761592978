"""`llmjepa bench`: speed and memory of the parts that set a sweep's cost, written to a JSON file.

Every comparison is a ratio measured in one process (the machine's speed drifts by 2x within
an hour): training step time and throughput per thread count and target mode, batch generation,
masked SDPA against causal SDPA, evaluation cost, buffered against per-value MLflow logging, and
peak memory. Medians over repeats after a warm-up.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from llmjepa import objective
from llmjepa.data.layout import PAD
from llmjepa.data.stream import Stream
from llmjepa.evaluate import Evaluator
from llmjepa.model.attention import dense_mask
from llmjepa.model.ema import make_ema
from llmjepa.model.transformer import flops_per_step
from llmjepa.specs import ExperimentSpec, load_experiment
from llmjepa.train import build, make_optimizer


def _median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_step_stats(spec: ExperimentSpec, threads: int, steps: int) -> dict:
    torch.set_num_threads(threads)
    model, predictor = build(spec)
    ema = make_ema(model) if spec.objective.target_mode == "ema" else None
    opt = make_optimizer(spec, [model, predictor])
    stream = Stream(spec)
    batches = [stream.batch(i) for i in range(4)]
    i = [0]

    def step():
        b = batches[i[0] % len(batches)]
        i[0] += 1
        losses = objective.compute(model, predictor, b, spec.objective, ema)
        opt.zero_grad(set_to_none=True)
        losses.total.backward()
        opt.step()

    dt = _median_time(step, steps)
    b = batches[0]
    tokens = int((b.role != PAD).sum())
    flops = flops_per_step(model, predictor, b, ema is not None)
    return {"threads": threads, "target_mode": spec.objective.target_mode, "step_ms": dt * 1e3,
            "tokens_per_s": tokens / dt, "gflops_per_s": flops / dt / 1e9, "gflop_per_step": flops / 1e9}


def attention_ratio(spec: ExperimentSpec, repeats: int) -> dict:
    """SDPA with the segment mask against SDPA with is_causal, same shapes."""
    b = Stream(spec).batch(0)
    B, L = b.shape
    H, D = spec.model.heads, spec.model.dim
    q, k, v = (torch.randn(B, H, L, D // H, requires_grad=True) for _ in range(3))
    mask = dense_mask(b.segment, b.role, b.modality)

    def run(**kw):
        F.scaled_dot_product_attention(q, k, v, **kw).sum().backward()

    masked = _median_time(lambda: run(attn_mask=mask), repeats)
    causal = _median_time(lambda: run(is_causal=True), repeats)
    return {"seq_len": L, "masked_ms": masked * 1e3, "causal_ms": causal * 1e3, "masked_over_causal": masked / causal}


def eval_stats(spec: ExperimentSpec) -> dict:
    model, _ = build(spec)
    ev = Evaluator(spec)
    t0 = time.perf_counter()
    ev.pixel_baselines()
    pixels = time.perf_counter() - t0
    collapse = _median_time(lambda: ev.collapse(model), 3, warmup=1)
    full = _median_time(lambda: ev.full(model), 1, warmup=0)
    return {"pixel_baselines_s": pixels, "collapse_s": collapse, "full_s": full}


def logging_stats(values: int = 300) -> dict:
    from llmjepa import tracking

    with tempfile.TemporaryDirectory() as d:
        uri = f"sqlite:///{d}/mlflow.db"
        exp = tracking.prepare(uri, "bench", f"{d}/artifacts")
        out = {}
        for flush in (1, 100):
            tr = tracking.MlflowTracker(uri, exp, flush_every=flush)
            t0 = time.perf_counter()
            for s in range(values):
                tr.log_metrics({"x": float(s)}, s)
            tr.end()
            out[f"flush_every_{flush}_ms_per_value"] = (time.perf_counter() - t0) / values * 1e3
        out["buffered_speedup"] = out["flush_every_1_ms_per_value"] / out["flush_every_100_ms_per_value"]
        return out


def run_bench(out: Path, steps: int = 10, overrides: list[str] | None = None, log=print) -> dict:
    spec = load_experiment(None, overrides or [])
    threads_before = torch.get_num_threads()
    res: dict = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch": torch.__version__, "overrides": overrides or [],
        "model": {"dim": spec.model.dim, "depth": spec.model.depth, "batch_size": spec.data.batch_size},
    }
    log("training steps ...")
    res["train"] = [train_step_stats(spec, t, steps) for t in sorted({1, min(2, os.cpu_count() or 1)})]
    ema_spec = spec.model_copy(update={"objective": spec.objective.model_copy(update={"target_mode": "ema"})})
    res["train"].append(train_step_stats(ema_spec, min(2, os.cpu_count() or 1), steps))
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    log("batch generation ...")
    stream = Stream(spec)
    res["data_batch_ms"] = _median_time(lambda: stream.batch(0), 10) * 1e3
    log("attention ...")
    res["attention"] = attention_ratio(spec, steps)
    log("evaluation ...")
    res["eval"] = eval_stats(spec)
    step_s = res["train"][-2]["step_ms"] / 1e3  # same_pass at 2 threads
    n_collapse = spec.train.steps // spec.eval.every + 1
    n_full = spec.train.steps // spec.eval.probe_every + 1
    eval_s = n_collapse * res["eval"]["collapse_s"] + n_full * res["eval"]["full_s"] + res["eval"]["pixel_baselines_s"]
    res["eval"]["projected_eval_fraction"] = eval_s / (eval_s + spec.train.steps * step_s)
    log("MLflow logging ...")
    res["logging"] = logging_stats()
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.set_num_threads(threads_before)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    return res
