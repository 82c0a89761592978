"""Sweeps end to end through the CLI: exact cells, resume after kill -9, bad files, PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from llmjepa import sweep as sw
from llmjepa import tracking

TINY = Path(__file__).parent / "data" / "tiny-sweep.yaml"
pytestmark = pytest.mark.slow


def cli(*args, cwd, timeout=600, check=False):
    r = subprocess.run([sys.executable, "-m", "llmjepa.cli", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def start_cli(*args, cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llmjepa.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stores(tmp_path: Path, pg: str | None = None) -> tuple[str, str]:
    if pg is None:
        return f"sqlite:///{tmp_path}/optuna.db", f"sqlite:///{tmp_path}/mlflow.db"
    return fresh_pg_database(pg, "optuna"), fresh_pg_database(pg, "mlflow")


def fresh_pg_database(url: str, kind: str) -> str:
    import psycopg2

    name = f"llmjepa_{kind}_{uuid.uuid4().hex[:8]}"
    dsn = url.removeprefix("postgresql+psycopg2://")
    conn = psycopg2.connect("postgresql://" + dsn)
    conn.autocommit = True
    conn.cursor().execute(f"CREATE DATABASE {name}")
    conn.close()
    return url.rsplit("/", 1)[0] + "/" + name


def study_of(budget: str, storage: str) -> optuna.Study:
    return sw.load_study(sw.plan(str(TINY), budget), storage)


def assert_complete_once(study: optuna.Study, plan: sw.Plan, uri: str):
    complete = Counter(sw.unit_of(t) for t in study.get_trials(states=(TrialState.COMPLETE,)))
    expected = {(sw.cell_key(c), s) for c, s in plan.units()}
    assert set(complete) == expected, f"cells: {sorted(complete)}"
    assert all(n == 1 for n in complete.values()), f"a cell ran twice: {complete}"
    exp = study.user_attrs["mlflow_experiment_id"]
    runs = tracking.find_runs(uri, exp)
    parents = runs[runs["tags.llmjepa.role"] == "parent"]
    children = runs[runs["tags.mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"]]
    assert len(parents) == 1
    finished = children[children["status"] == "FINISHED"]
    assert sorted(finished["tags.llmjepa.cell"] + " " + finished["tags.llmjepa.seed"]) == sorted(
        f"{c} {s}" for c, s in expected
    )
    return children


def test_two_workers_run_exactly_the_cells(tmp_path):
    storage, uri = stores(tmp_path)
    r = cli("sweep", str(TINY), "--workers", "2", "--storage", storage, "--tracking-uri", uri, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    plan = sw.plan(str(TINY), "quick")
    study = study_of("quick", storage)
    children = assert_complete_once(study, plan, uri)
    assert len(children) == len(plan.units())  # one child run per cell, nothing extra
    assert (tmp_path / "reports" / "tiny-sweep.pdf").stat().st_size > 10_000
    assert "verdict:" in r.stdout
    # running the same command again finds nothing to do and adds no run
    r2 = cli("sweep", str(TINY), "--workers", "2", "--storage", storage, "--tracking-uri", uri, "--no-report",
             cwd=tmp_path, check=True)
    assert f"done {len(plan.units())}/{len(plan.units())}" in r2.stdout
    assert len(tracking.find_runs(uri, study.user_attrs["mlflow_experiment_id"])) == len(children) + 1


def wait_for_running_trial(storage: str, timeout: float = 180) -> optuna.trial.FrozenTrial:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            study = study_of("slow", storage)
            for t in study.get_trials(states=(TrialState.RUNNING,)):
                if "mlflow_run_id" in t.user_attrs and "pid" in t.user_attrs:
                    return t
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError("no trial started")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_kill_worker_then_rerun_completes_every_cell_once(tmp_path, backend, pg_url):
    if backend == "postgres" and pg_url is None:
        pytest.skip("needs LLMJEPA_TEST_PG (a PostgreSQL server); .ci/run starts one")
    storage, uri = stores(tmp_path, pg_url if backend == "postgres" else None)
    args = ("sweep", str(TINY), "--budget", "slow", "--workers", "1", "--storage", storage, "--tracking-uri", uri,
            "--no-report")
    launcher = start_cli(*args, cwd=tmp_path)
    victim = wait_for_running_trial(storage)
    time.sleep(1.0)  # mid-trial
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and its worker: nothing cleans up
    os.kill(victim.user_attrs["pid"], signal.SIGKILL) if sw.pid_alive(victim.user_attrs["pid"]) else None
    launcher.wait(30)
    study = study_of("slow", storage)
    assert study.trials[victim.number].state == TrialState.RUNNING  # left behind by the dead worker
    finished_before = {t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}

    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    study = study_of("slow", storage)
    assert study.trials[victim.number].state == TrialState.FAIL
    assert tracking.get_run(uri, victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert finished_before <= {t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert_complete_once(study, sw.plan(str(TINY), "slow"), uri)


def test_launcher_requeues_the_cell_of_a_worker_killed_mid_trial(tmp_path):
    storage, uri = stores(tmp_path)
    launcher = start_cli("sweep", str(TINY), "--budget", "slow", "--workers", "2", "--storage", storage,
                         "--tracking-uri", uri, "--no-report", cwd=tmp_path)
    victim = wait_for_running_trial(storage)
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    out, _ = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, out
    study = study_of("slow", storage)
    assert tracking.get_run(uri, victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert_complete_once(study, sw.plan(str(TINY), "slow"), uri)


def test_invalid_sweep_file_exits_2_and_creates_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = TINY.read_text().replace("data.text_ratio: [0.0, 1.0]", "data.text_ratio: [0.0, 2.0]")
    text = text.replace("sampler", "sampler")  # keep the rest valid
    bad.write_text(text)
    r = cli("sweep", str(bad), cwd=tmp_path)
    assert r.returncode == 2
    assert "bad.yaml" in r.stderr and "data.text_ratio" in r.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text(TINY.read_text().replace("seeds: [0]", "seedz: [0]"))
    r = cli("sweep", str(typo), cwd=tmp_path)
    assert r.returncode == 2 and "typo.yaml:" in r.stderr and "seedz" in r.stderr
    line = next(i for i, l in enumerate(typo.read_text().splitlines(), 1) if l.startswith("seedz"))
    assert f"typo.yaml:{line}" in r.stderr
    r = cli("sweep", "no-such-question", cwd=tmp_path)
    assert r.returncode == 2 and "unknown sweep" in r.stderr and "collapse-vs-text-ratio" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_dry_run_status_and_sweeps_listing(tmp_path):
    r = cli("sweep", str(TINY), "--dry-run", cwd=tmp_path, check=True)
    assert "trials 4" in r.stdout and "estimated" in r.stdout
    assert not (tmp_path / "runs").exists()
    r = cli("sweeps", cwd=tmp_path, check=True)
    assert "collapse-vs-text-ratio" in r.stdout and "hypothesis" in r.stdout
    storage = f"sqlite:///{tmp_path}/optuna.db"
    r = cli("status", str(TINY), "--storage", storage, cwd=tmp_path)
    assert r.returncode == 2 and "no study" in r.stderr


def test_every_shipped_sweep_resolves_under_each_budget():
    for path, spec in sw.list_sweeps():
        for budget in spec.budgets:
            p = sw.plan(str(path), budget)
            assert p.trials > 0 and p.cells
            assert len({json.dumps(c, sort_keys=True) for c in p.cells}) == len(p.cells)


def test_sigterm_stops_cleanly_and_the_rerun_completes(tmp_path):
    storage, uri = stores(tmp_path)
    args = ("sweep", str(TINY), "--budget", "slow", "--workers", "1", "--storage", storage, "--tracking-uri", uri,
            "--no-report")
    launcher = start_cli(*args, cwd=tmp_path)
    victim = wait_for_running_trial(storage)
    launcher.send_signal(signal.SIGTERM)
    out, _ = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, out
    assert "run the same command to resume" in out
    study = study_of("slow", storage)
    t = study.trials[victim.number]
    assert t.state == TrialState.FAIL and t.user_attrs["reason"] == "interrupted"
    assert tracking.get_run(uri, victim.user_attrs["mlflow_run_id"]).info.status == "KILLED"
    assert not study.get_trials(states=(TrialState.RUNNING,)), "a worker outlived the launcher"
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert_complete_once(study_of("slow", storage), sw.plan(str(TINY), "slow"), uri)


def test_tpe_sweep_prunes_collapsed_trials(tmp_path):
    tpe = Path(__file__).parent / "data" / "tiny-tpe.yaml"
    storage, uri = stores(tmp_path)
    r = cli("sweep", str(tpe), "--workers", "1", "--storage", storage, "--tracking-uri", uri, "--no-report",
            cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    study = sw.load_study(sw.plan(str(tpe), "quick"), storage)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 3
    assert len({t.params["train.lr"] for t in study.trials}) == 3  # the sampler proposed each trial
    runs = tracking.find_runs(uri, study.user_attrs["mlflow_experiment_id"])
    children = runs[runs["tags.mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"]]
    assert sorted(children["status"]) == ["KILLED"] * 3
    assert all("collapsed at step" in reason for reason in children["tags.llmjepa.reason"])


def test_sweep_through_an_mlflow_server_with_a_postgresql_backend(tmp_path, pg_url):
    if pg_url is None:
        pytest.skip("needs LLMJEPA_TEST_PG (a PostgreSQL server); .ci/run starts one")
    import socket

    storage, backend = stores(tmp_path, pg_url)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--host", "127.0.0.1",
         "--port", str(port), "--artifacts-destination", str(tmp_path / "served-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                tracking.find_experiment(uri, "Default")
                break
            except Exception:
                time.sleep(1)
        r = cli("sweep", str(TINY), "--workers", "2", "--storage", storage, "--tracking-uri", uri, cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        study = study_of("quick", storage)
        assert_complete_once(study, sw.plan(str(TINY), "quick"), uri)
        assert any((tmp_path / "served-artifacts").rglob("tiny-sweep.pdf")), "the report went to the server"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


def test_diverged_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    storage, uri = stores(tmp_path)
    r = cli("sweep", str(TINY), "--budget", "diverge", "--storage", storage, "--tracking-uri", uri, "--no-report",
            cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "diverged 2" in r.stdout
    study = study_of("diverge", storage)
    assert [t.user_attrs["status"] for t in study.trials] == ["diverged", "diverged"]
    assert all("non-finite" in t.user_attrs["reason"] for t in study.trials)
    runs = tracking.find_runs(uri, study.user_attrs["mlflow_experiment_id"])
    children = runs[runs["tags.mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"]]
    assert sorted(children["status"]) == ["FAILED", "FAILED"]
    assert set(children["tags.llmjepa.status"]) == {"diverged"}
    r = cli("status", str(TINY), "--budget", "diverge", "--storage", storage, cwd=tmp_path, check=True)
    assert "done 2/2" in r.stdout and "diverged 2" in r.stdout


@pytest.mark.parametrize("name", ["audio-variant", "shared-positions", "context-schedule", "collapse-vs-text-ratio"])
def test_shipped_sweep_runs_end_to_end_on_a_tiny_budget_and_its_report_renders(tmp_path, name):
    """The real sweep file with its base, axes and verdict, shrunk to seconds per trial."""
    from conftest import require_tool

    require_tool("pdftoppm")
    import yaml

    src = sw.find_sweep(name)
    data = yaml.safe_load(src.read_text())
    if data.get("base"):
        data["base"] = str((src.parent / data["base"]).resolve())
    tiny = yaml.safe_load(TINY.read_text())["set"]  # sections merge into the base's
    tiny["model"]["depth"] = 4  # the sweeps' metrics name layer L4
    data["budgets"] = {"tiny": {"seeds": [0], "set": {**tiny, "train": {**tiny["train"], "steps": 4}}}}
    if name == "collapse-vs-text-ratio":  # a corner of its grid is enough here
        data["budgets"]["tiny"]["axes"] = {"data.text_ratio": [0.0, 1.0], "objective.target_mode": ["same_pass"],
                                           "objective.jepa_weight": [1.0]}
        data["budgets"]["tiny"]["extra_cells"] = []
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    storage, uri = stores(tmp_path)
    r = cli("sweep", str(path), "--budget", "tiny", "--workers", "2", "--storage", storage, "--tracking-uri", uri,
            cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict:" in r.stdout
    pdf = tmp_path / "reports" / f"{name}.pdf"
    pages = subprocess.run(["pdftoppm", "-png", "-r", "30", str(pdf), str(tmp_path / "page")], capture_output=True)
    assert pages.returncode == 0, pages.stderr
    assert len(list(tmp_path.glob("page*.png"))) >= 4
