"""Tests for llmjepa.train, llmjepa.experiment and the `train`/`show` commands, on tiny specs.

MLflow: one store is migrated per session; each tracked test copies the migrated file (the
store holds no `llmjepa` experiment, so each test's experiment gets its own artifact root).
"""

import math
import re
import shutil
import sqlite3

import pytest
import torch
from typer.testing import CliRunner

from llmjepa import experiment, objective, tracking, train
from llmjepa.cli import app
from llmjepa.specs import spec_hash

from helpers import TINY, tiny_spec

WIDE = {"COLUMNS": "250"}  # no wrapping of rich output


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-template")
    db = root / "mlflow.db"
    tracking.prepare(f"sqlite:///{db}", "template", root / "artifacts")  # migrations, WAL
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return db


@pytest.fixture
def store(mlflow_template, tmp_path):
    """A migrated SQLite store of this test's own, and an artifact root beside it."""
    db = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, db)
    return {"uri": f"sqlite:///{db}", "artifacts": tmp_path / "artifacts"}


def tracked_overrides(store) -> list[str]:
    return ["tracking.enabled=true", f"tracking.uri={store['uri']}", f"tracking.artifact_root={store['artifacts']}"]


def only_run(store):
    exp = tracking.find_experiment(store["uri"], "llmjepa")
    assert exp is not None
    runs = tracking.find_runs(store["uri"], exp)
    assert len(runs) == 1
    return runs.iloc[0]


def comparable(metrics: dict) -> dict:
    """Metrics without wall-clock timings, NaN made comparable."""
    return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v)
            for k, v in metrics.items() if not k.startswith("time/")}


def nan_at_step(monkeypatch, bad_step: int) -> None:
    """Make the objective's total loss NaN at one training step (one call per step)."""
    real = objective.compute
    calls = {"n": 0}

    def compute(*args, **kwargs):
        losses = real(*args, **kwargs)
        if calls["n"] == bad_step:
            losses.total = losses.total * float("nan")
        calls["n"] += 1
        return losses

    monkeypatch.setattr(objective, "compute", compute)


# ----------------------------------------------------------------------------- the CLI


REQUIRED_METRICS = [
    "collapse/rankme/image/target", "collapse/erank/image/target", "collapse/ln_std_mean/image/target",
    "collapse/rms/image/target", "collapse/cos/image/L2", "probe/acc/mean/image/L2", "probe/attn/mean/image/L2",
    "align/r1/image-text/L2", "align/mknn/image-text/L2", "text/image_use_gap",
    "loss/jepa/all", "loss/jepa_baseline/all", "loss/ce/text", "grad/norm/ce", "grad/norm/jepa",
    "time/tokens_per_s", "time/eval_fraction",
]


def test_cli_train_records_one_finished_run(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = TINY + tracked_overrides(store) + ["train.steps=30", "eval.every=15", "eval.probe_every=30"]
    args = ["train"] + [a for o in overrides for a in ("--set", o)]
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    assert "finished after 30 steps" in result.output

    row = only_run(store)
    assert row["status"] == "FINISHED"
    missing = [k for k in REQUIRED_METRICS if f"metrics.{k}" not in row]
    assert not missing, missing
    # the raw-pixel probe baseline; per-modality keys name the modality
    assert 0 <= row["metrics.probe/pixel/mean/image"] <= 1
    for k in REQUIRED_METRICS:
        assert math.isfinite(row[f"metrics.{k}"]), k
    assert 0 < row["metrics.time/eval_fraction"] < 1
    # evaluations at step 0, every 15 steps and the last; training metrics logged along the way
    assert [s for s, _ in tracking.metric_history(store["uri"], row["run_id"], "collapse/rankme/image/target")] == [0, 15, 30]
    assert [s for s, _ in tracking.metric_history(store["uri"], row["run_id"], "probe/acc/mean/image/L2")] == [0, 30]
    assert len(tracking.metric_history(store["uri"], row["run_id"], "loss/ce/text")) >= 10

    spec = tiny_spec(*overrides[len(TINY):])
    assert row["params.objective.jepa_weight"] == str(spec.objective.jepa_weight)
    assert row["params.train.steps"] == "30"
    assert row["tags.spec_hash"] == spec_hash(spec)
    assert row["tags.seed"] == "0"
    assert row["tags.code_version"]
    assert row["tags.llmjepa.status"] == "finished"

    files = {p.name: p for p in store["artifacts"].rglob("*") if p.is_file()}
    assert {"spec.yaml", "curves.png"} <= set(files)
    assert row["run_id"] in str(files["spec.yaml"])
    assert "jepa_weight" in files["spec.yaml"].read_text()
    assert files["curves.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "runs").exists()  # nothing written to the default locations


def test_cli_show_prints_hash_lengths_params_and_flops():
    args = ["show"] + [a for o in TINY for a in ("--set", o)]
    result = CliRunner().invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    spec = tiny_spec()
    model, predictor = train.build(spec)
    out = result.output
    assert re.search(rf"spec hash\s+{spec_hash(spec)}\b", out)
    assert re.search(r"sequence length\s+min \d+, mean [\d.]+, max \d+ tokens \(batch of 4", out)
    n_model = sum(p.numel() for p in model.parameters())
    n_pred = sum(p.numel() for p in predictor.parameters())
    assert f"model {n_model:,}, predictor {n_pred:,}" in out
    flops = re.search(r"FLOPs per step\s+([\d.]+) GFLOP", out)
    assert flops and float(flops.group(1)) > 0


def test_cli_show_fields_lists_descriptions():
    result = CliRunner().invoke(app, ["show", "--fields"], env=WIDE)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("objective.target_mode = 'same_pass'"))
    assert "same_pass: gradients through both copies" in lines[i + 1]


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_history_other_seed_differs():
    overrides = ["train.steps=4", "eval.every=2", "eval.probe_every=4"]
    a = train.run(tiny_spec(*overrides))
    b = train.run(tiny_spec(*overrides))
    assert a.status == b.status == "finished"
    assert [s for s, _ in a.history] == [s for s, _ in b.history] == [0, 2, 4]
    assert [(s, comparable(m)) for s, m in a.history] == [(s, comparable(m)) for s, m in b.history]
    assert comparable(a.final) == comparable(b.final)

    c = train.run(tiny_spec(*overrides, "train.seed=1"))
    for key in ("collapse/rankme/image/target", "collapse/rms/image/L2", "loss/ce/text", "loss/jepa/all"):
        assert c.final[key] != a.final[key], key
    assert c.history[0][1]["collapse/rankme/image/target"] != a.history[0][1]["collapse/rankme/image/target"]


# ----------------------------------------------------------------------------- divergence and pruning


def test_absurd_learning_rate_diverges_without_raising():
    result = train.run(tiny_spec("train.lr=1e6", "train.grad_clip=0", "train.warmup=0"))
    assert result.status == "diverged"
    m = re.search(r"non-finite (?:loss|gradient norm) at step (\d+)", result.reason)
    assert m, result.reason
    assert result.steps == int(m.group(1)) < 6


def test_nan_loss_ends_tracked_run_failed(store, monkeypatch):
    nan_at_step(monkeypatch, 3)
    spec = tiny_spec(*tracked_overrides(store))
    result = experiment.run_tracked(spec)
    assert result.status == "diverged"
    assert "step 3" in result.reason and result.steps == 3
    assert [s for s, _ in result.history] == [0, 3]  # evaluated up to the last good step
    row = only_run(store)
    assert row["run_id"] == result.run_id
    assert row["status"] == "FAILED"
    assert row["tags.llmjepa.status"] == "diverged"
    assert "step 3" in row["tags.llmjepa.reason"]


def test_pruned_run_is_killed(store):
    def prune(step, metrics):
        if step > 0:
            raise train.Pruned(f"collapsed at step {step}")

    spec = tiny_spec(*tracked_overrides(store))
    result = experiment.run_tracked(spec, callback=prune)
    assert result.status == "pruned"
    assert result.reason == "collapsed at step 3"
    assert result.steps == 3  # the first evaluation after step 0 (eval.every=3)
    assert [s for s, _ in result.history] == [0, 3]
    row = only_run(store)
    assert row["status"] == "KILLED"
    assert row["tags.llmjepa.status"] == "pruned"


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "ck" / "run.pt"
    result = train.run(tiny_spec("train.steps=2", "eval.every=100", "eval.probe_every=100"), checkpoint=path)
    assert result.status == "finished"
    assert [p.name for p in path.parent.iterdir()] == ["run.pt"]  # no .tmp left behind
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert int(state["step"]) == 2
    assert {"model", "predictor", "optimizer", "rng"} <= set(state)

    # a crash while writing the next checkpoint leaves this one intact
    model, predictor = train.build(tiny_spec())
    opt = train.make_optimizer(tiny_spec(), [model, predictor])

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        train.save_checkpoint(path, 5, {"model": model, "predictor": predictor}, opt)
    assert int(torch.load(path, map_location="cpu", weights_only=True)["step"]) == 2


def test_interrupted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
    # SIGReg draws random directions every step, so the RNG state must survive the resume too
    spec = tiny_spec(
        "train.steps=9", "train.checkpoint_every=3", "eval.every=9", "eval.probe_every=9",
        "eval.attentive_steps=0", "objective.sigreg_weight=0.5", "objective.sigreg_slices=8",
    )
    reference = train.run(spec)
    assert reference.status == "finished"

    path = tmp_path / "run.pt"

    def interrupt(step, stats):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.run(spec, checkpoint=path, progress=interrupt)
    assert int(torch.load(path, weights_only=True)["step"]) == 3  # steps 4 and 5 are lost
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]

    loads = []
    real_load = torch.load

    def spy_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    resumed = train.run(spec, checkpoint=path)
    assert loads == [True]
    assert resumed.status == "finished" and resumed.steps == 9
    assert [s for s, _ in resumed.history] == [9]  # no step-0 evaluation on resume
    assert "loss/sigreg/all" in resumed.final
    assert comparable(resumed.final) == comparable(reference.final)
    assert comparable(resumed.history[-1][1]) == comparable(reference.history[-1][1])
