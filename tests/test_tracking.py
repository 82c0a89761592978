"""Tests for llmjepa.tracking against a real SQLite MLflow store.

The store is migrated once per session; tests needing isolation copy the
migrated database file instead of migrating again.
"""

import math
import multiprocessing as mp
import shutil
import sqlite3

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from llmjepa import tracking  # noqa: E402

EXPERIMENT = "tracking-tests"


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'db' / 'mlflow.db'}"
    experiment_id = tracking.prepare(uri, EXPERIMENT, root / "artifacts")
    db_file = root / "db" / "mlflow.db"
    con = sqlite3.connect(db_file)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    template = root / "template.db"
    shutil.copy(db_file, template)
    return {"uri": uri, "experiment_id": experiment_id, "root": root, "template": template}


@pytest.fixture
def fresh_store(store, tmp_path):
    db_file = tmp_path / "mlflow.db"
    shutil.copy(store["template"], db_file)
    return {**store, "uri": f"sqlite:///{db_file}"}


def test_prepare_is_idempotent(store):
    again = tracking.prepare(store["uri"], EXPERIMENT, store["root"] / "artifacts")
    assert again == store["experiment_id"]


def test_flatten_params():
    flat = tracking.flatten_params(
        {"model.dim": 64, "data": {"sets": ["a", "b"], "note": "x" * 900}, "lr": 1e-3}
    )
    assert flat["model.dim"] == "64"
    assert flat["data.sets"] == '["a", "b"]'
    assert len(flat["data.note"]) == 500
    assert flat["lr"] == "0.001"


def test_params_and_tags_land(store):
    params = {f"p{i}": i for i in range(150)}  # more than one params batch
    params["optim.betas"] = [0.9, 0.95]
    with tracking.MlflowTracker(store["uri"], store["experiment_id"], run_name="pt") as t:
        t.log_params(params)
        t.set_tags({"stage": "smoke", "seed": 3})
    run = tracking.get_run(store["uri"], t.run_id)
    assert run.data.params["p149"] == "149"
    assert run.data.params["optim.betas"] == "[0.9, 0.95]"
    assert run.data.tags["stage"] == "smoke" and run.data.tags["seed"] == "3"
    assert run.info.run_name == "pt" and run.info.status == "FINISHED"


def test_buffered_metrics_history(store):
    t = tracking.MlflowTracker(store["uri"], store["experiment_id"], flush_every=100)
    for step in range(250):
        t.log_metrics({"loss": 1.0 / (step + 1), "skipped": None}, step=step)
    assert len(t._buffer) == 50  # two batches sent, the rest still buffered
    t.end()
    history = tracking.metric_history(store["uri"], t.run_id, "loss")
    assert [s for s, _ in history] == list(range(250))
    assert history[9][1] == pytest.approx(0.1)
    assert "skipped" not in tracking.get_run(store["uri"], t.run_id).data.metrics


def test_non_finite_metrics_are_kept_and_tagged(store):
    with tracking.MlflowTracker(store["uri"], store["experiment_id"]) as t:
        t.log_metrics({"a": float("nan"), "b": float("inf"), "c": 1.0}, step=0)
    history = dict(tracking.metric_history(store["uri"], t.run_id, "a"))
    assert math.isnan(history[0])
    assert tracking.metric_history(store["uri"], t.run_id, "b")[0][1] > 1e300
    assert tracking.get_run(store["uri"], t.run_id).data.tags["nonfinite_metrics"] == "a,b"


def test_parent_and_child(fresh_store):
    uri, eid = fresh_store["uri"], fresh_store["experiment_id"]
    parent = tracking.start_parent(uri, eid, "sweep", {"kind": "sweep"}, params={"trials": 4})
    with tracking.MlflowTracker(uri, eid, run_name="trial-0", parent_run_id=parent) as child:
        child.log_metrics({"x": 1}, step=0)
    assert tracking.get_run(uri, parent).info.status == "RUNNING"
    assert tracking.get_run(uri, child.run_id).data.tags["mlflow.parentRunId"] == parent
    runs = tracking.find_runs(uri, eid, f"tags.`mlflow.parentRunId` = '{parent}'")
    assert list(runs["run_id"]) == [child.run_id]
    assert runs.loc[0, "metrics.x"] == 1.0
    everything = tracking.find_runs(uri, eid)
    assert set(everything["run_id"]) == {parent, child.run_id}
    assert everything.set_index("run_id").loc[parent, "params.trials"] == "4"


def test_attach_to_existing_run(store):
    first = tracking.MlflowTracker(store["uri"], store["experiment_id"])
    first.end()
    with tracking.MlflowTracker(store["uri"], store["experiment_id"], run_id=first.run_id) as t:
        t.log_metrics({"late": 2.0}, step=5)
    run = tracking.get_run(store["uri"], first.run_id)
    assert run.data.metrics["late"] == 2.0 and run.info.status == "FINISHED"


def test_context_manager_marks_failed(store):
    with pytest.raises(RuntimeError):
        with tracking.MlflowTracker(store["uri"], store["experiment_id"]) as t:
            t.log_metrics({"loss": 3.0}, step=1)
            raise RuntimeError("boom")
    run = tracking.get_run(store["uri"], t.run_id)
    assert run.info.status == "FAILED"
    assert run.data.metrics["loss"] == 3.0  # flushed before terminating


def test_explicit_killed_survives_exception(store):
    with pytest.raises(RuntimeError):
        with tracking.MlflowTracker(store["uri"], store["experiment_id"]) as t:
            t.end("KILLED")
            raise RuntimeError("stopped")
    assert tracking.get_run(store["uri"], t.run_id).info.status == "KILLED"


def test_set_run_status_killed(store):
    run_id = tracking.MlflowTracker(store["uri"], store["experiment_id"]).run_id
    tracking.set_run_status(store["uri"], run_id, "KILLED")
    info = tracking.get_run(store["uri"], run_id).info
    assert info.status == "KILLED" and info.end_time is not None
    with pytest.raises(ValueError):
        tracking.set_run_status(store["uri"], run_id, "DONE")


def test_null_tracker_accepts_everything(tmp_path):
    note = tmp_path / "n.txt"
    note.write_text("x")
    fig = plt.figure()
    with tracking.NullTracker() as t:
        assert t.run_id is None
        t.log_params({"a": 1})
        t.set_tags({"b": 2})
        t.log_metrics({"c": 3.0}, step=0)
        t.log_artifact(note)
        t.log_text("hi", "a.txt")
        t.log_figure(fig, "f.png")
        t.flush()
        t.end("KILLED")
    plt.close(fig)
    assert isinstance(t, tracking.Tracker)


def test_artifacts_land_on_disk(store, tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    note = tmp_path / "config.yaml"
    note.write_text("a: 1\n")
    with tracking.MlflowTracker(store["uri"], store["experiment_id"]) as t:
        t.log_figure(fig, "plots/loss.png")
        t.log_text("hello", "notes/readme.txt")
        t.log_artifact(note, "spec")
    plt.close(fig)
    artifacts = store["root"] / "artifacts" / EXPERIMENT / t.run_id / "artifacts"
    assert (artifacts / "plots" / "loss.png").stat().st_size > 0
    assert (artifacts / "notes" / "readme.txt").read_text() == "hello"
    assert (artifacts / "spec" / "config.yaml").exists()


def _worker(uri, experiment_id, index, barrier, results):
    barrier.wait()
    with tracking.MlflowTracker(uri, experiment_id, run_name=f"w{index}", flush_every=10) as t:
        t.log_params({"index": index})
        for step in range(200):
            t.log_metrics({"loss": float(step), "acc": 0.5}, step=step)
    results.put(t.run_id)


def test_two_processes_log_at_once(fresh_store):
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    uri, eid = fresh_store["uri"], fresh_store["experiment_id"]
    procs = [ctx.Process(target=_worker, args=(uri, eid, i, barrier, results)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    run_ids = [results.get(timeout=5) for _ in procs]
    for run_id in run_ids:
        assert tracking.get_run(uri, run_id).info.status == "FINISHED"
        assert len(tracking.metric_history(uri, run_id, "loss")) == 200
