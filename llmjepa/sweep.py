"""Sweeps: a question's YAML becomes an Optuna study of trials, each trial an MLflow child run.

The only module that talks to Optuna. The launcher validates every cell, creates the MLflow
experiment and parent run and the study (named from the sweep, budget and spec hash) before any
worker starts, reaps trials of dead workers (failed in Optuna, KILLED in MLflow), enqueues
every missing (cell, seed) once, then runs long-lived worker processes and polls the storage.
Workers on other machines join with the same storage and tracking URIs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from llmjepa import specs, tracking
from llmjepa.specs import ExperimentSpec, SpecError, SweepSpec

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STORAGE = "sqlite:///runs/optuna.db"
HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
GRACE_PERIOD = 60  # a trial silent this long is stale (its worker is gone)
MAX_RETRIES = 2  # crashed attempts per cell before it is left failed
optuna.logging.set_verbosity(optuna.logging.WARNING)
# heartbeats are driven by our own worker loop (one trial at a time), not Study.optimize
warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used.*")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# ----------------------------------------------------------------------------- sweep files


def sweep_dirs() -> list[Path]:
    return [Path.cwd() / "sweeps", ROOT / "sweeps"]


def find_sweep(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise SpecError(f"{p}: no such sweep file")
        return p
    for d in sweep_dirs():
        if (d / f"{name}.yaml").is_file():
            return d / f"{name}.yaml"
    known = sorted({f.stem for d in sweep_dirs() if d.is_dir() for f in d.glob("*.yaml")})
    raise SpecError(f"unknown sweep {name!r}; known sweeps: {', '.join(known) or 'none'}")


def list_sweeps() -> list[tuple[Path, SweepSpec]]:
    seen, out = set(), []
    for d in sweep_dirs():
        for f in sorted(d.glob("*.yaml")) if d.is_dir() else []:
            if f.stem not in seen:
                seen.add(f.stem)
                out.append((f, load_sweep_file(f)))
    return out


def load_sweep_file(path: Path) -> SweepSpec:
    return read_sweep(path)[0]


def read_sweep(path: Path) -> tuple[SweepSpec, dict]:
    data, lines = specs.read_yaml(path)
    return specs.validate(SweepSpec, data, str(path), lines), data


def cell_key(cell: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in cell.items()) or "base"


@dataclass
class Plan:
    """A sweep resolved under one budget: the base experiment data, the cells and seeds."""

    sweep: SweepSpec
    path: Path
    budget: str
    base: dict  # experiment data (YAML mapping) every trial starts from
    cells: list[dict[str, Any]]
    seeds: list[int]
    trials: int  # TPE: number of trials; grid: cells x seeds
    raw: dict  # the sweep file's mapping as written

    @property
    def hash(self) -> str:
        """Of what the files say (sweep as written, resolved base, budget), so an edited sweep
        starts a new study while a new spec field with a default does not."""
        blob = json.dumps({"sweep": self.raw, "budget": self.budget, "base": self.base}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    @property
    def study_name(self) -> str:
        return f"{self.sweep.name}-{self.budget}-{self.hash}"

    def spec_for(self, cell: dict[str, Any], seed: int, tracking_uri: str | None = None) -> ExperimentSpec:
        overrides = [f"{k}={json.dumps(v)}" for k, v in cell.items()] + [f"train.seed={seed}"]
        data = specs.apply_overrides(self.base, overrides)
        data["name"] = f"{self.sweep.name}"
        if tracking_uri:
            data.setdefault("tracking", {})["uri"] = tracking_uri
        return specs.validate(ExperimentSpec, data, f"{self.path} (cell {cell_key(cell)}, seed {seed})")

    def units(self) -> list[tuple[dict, int]]:
        return [(c, s) for c in self.cells for s in self.seeds]


def plan(name: str, budget: str = "quick") -> Plan:
    """Resolve and validate a sweep under a budget; every cell's spec is built once, so a bad
    value fails here, before any study or run exists."""
    path = find_sweep(name)
    sweep, raw = read_sweep(path)
    if budget not in sweep.budgets and budget != "default":
        raise SpecError(f"{path}: budget {budget!r} not defined (have: {', '.join(sweep.budgets) or 'none'})")
    b = sweep.budgets.get(budget, specs.Budget())
    base_data: dict = {}
    if sweep.base:
        base_path = (path.parent / sweep.base) if not Path(sweep.base).is_absolute() else Path(sweep.base)
        if not base_path.is_file():
            base_path = ROOT / sweep.base if (ROOT / sweep.base).is_file() else base_path
        base_data, _ = specs.read_yaml(base_path)
    # nested sections merge field by field (`set: {data: {batch_size: 4}}` keeps the base's other data fields)
    merged = {**specs.flatten(sweep.set), **specs.flatten(b.set)}
    flat_set = [f"{k}={json.dumps(v)}" for k, v in merged.items()]
    base_data = specs.apply_overrides(base_data, flat_set)
    axes = b.axes if b.axes is not None else sweep.axes
    extra = b.extra_cells if b.extra_cells is not None else sweep.extra_cells
    seeds = b.seeds if b.seeds is not None else sweep.seeds
    if sweep.sampler == "grid":
        names = list(axes)
        cells = [dict(zip(names, values)) for values in itertools.product(*axes.values())] if names else []
        for c in extra:
            if c not in cells:
                cells.append(dict(c))
        trials = len(cells) * len(seeds)
    else:
        cells = [{}]
        trials = b.trials or 20
    p = Plan(sweep, path, budget, base_data, cells, seeds, trials, raw)
    keys = list(dict.fromkeys(k for c in cells for k in c))
    if any(set(c) != set(keys) for c in cells):  # name every swept field in every cell
        base = specs.flatten(p.spec_for({}, seeds[0]))
        for c in cells:
            for k in keys:
                if k not in c:
                    if k not in base:
                        raise SpecError(f"{path}: {k} is not a field of the experiment spec")
                    c[k] = base[k]
        p.cells = [{k: c[k] for k in keys} for c in cells]
    for cell in p.cells:  # validate every cell now, before any study or run exists
        p.spec_for(cell, seeds[0])
    return p


# ----------------------------------------------------------------------------- storage


def open_storage(url: str) -> optuna.storages.RDBStorage:
    if url.startswith("postgresql://"):
        raise SpecError("write postgresql+psycopg2://... (SQLAlchemy 2 reads postgresql:// as psycopg 3)")
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        url = "sqlite:///" + str(path.resolve())
        kwargs: dict = {"connect_args": {"timeout": 60}}
    else:
        kwargs = {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(
        url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD
    )


def sampler_for(p: Plan) -> optuna.samplers.BaseSampler:
    # the sampler is not stored with a study: every process builds the same one
    if p.sweep.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=p.seeds[0], multivariate=True)
    return optuna.samplers.RandomSampler(seed=0)  # grid trials are enqueued: nothing is sampled


def pruner_for(p: Plan) -> optuna.pruners.BasePruner:
    if p.sweep.pruner.kind == "median":
        return optuna.pruners.MedianPruner(n_warmup_steps=p.sweep.pruner.after)
    return optuna.pruners.NopPruner()


def load_study(p: Plan, storage_url: str, create: bool = False) -> optuna.Study:
    storage = open_storage(storage_url)
    kwargs = dict(study_name=p.study_name, storage=storage, sampler=sampler_for(p), pruner=pruner_for(p))
    if create:
        directions = [o.direction for o in p.sweep.objectives]
        return optuna.create_study(**kwargs, directions=directions, load_if_exists=True)
    try:
        return optuna.load_study(**kwargs)
    except KeyError:
        raise SpecError(f"no study {p.study_name} in {storage_url}: start it with `llmjepa sweep {p.sweep.name} "
                        f"--budget {p.budget}`") from None


def _done(t: optuna.trial.FrozenTrial) -> bool:
    """A unit is done when a trial of it completed, was pruned, or diverged."""
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        t.state == TrialState.FAIL and t.user_attrs.get("status") == "diverged"
    )


def unit_of(t: optuna.trial.FrozenTrial) -> tuple[str, int] | None:
    if "cell" not in t.user_attrs:
        return None
    return t.user_attrs["cell"], t.user_attrs["seed"]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child is dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def reap(study: optuna.Study, tracking_uri: str) -> list[int]:
    """Fail trials whose worker is gone: on this host by pid, elsewhere by stale heartbeat.
    Their MLflow runs end KILLED. Returns the failed trial numbers."""
    optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        mine = t.user_attrs.get("host") == host and "pid" in t.user_attrs
        orphan = "pid" not in t.user_attrs and t.datetime_start and (
            time.time() - t.datetime_start.timestamp() > GRACE_PERIOD
        )
        if (mine and not pid_alive(t.user_attrs["pid"])) or orphan:
            try:
                study._storage.set_trial_user_attr(t._trial_id, "reason", "worker died")
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id and t.user_attrs.get("status") != "diverged":
            try:
                if tracking.get_run(tracking_uri, run_id).info.status == "RUNNING":
                    tracking.set_run_status(tracking_uri, run_id, "KILLED")
                    failed.append(t.number)
            except Exception:  # the run may live in a store this process cannot reach
                pass
    return failed


def enqueue_missing(study: optuna.Study, p: Plan) -> int:
    """Enqueue each (cell, seed) that is neither done, waiting, running, nor out of retries."""
    if p.sweep.sampler != "grid":
        return 0
    trials = study.get_trials(deepcopy=False)
    busy = {unit_of(t) for t in trials if _done(t) or t.state in (TrialState.WAITING, TrialState.RUNNING)}
    crashes: dict = {}
    for t in trials:
        if t.state == TrialState.FAIL and not _done(t):
            crashes[unit_of(t)] = crashes.get(unit_of(t), 0) + 1
    n = 0
    for cell, seed in p.units():
        key = (cell_key(cell), seed)
        if key in busy or crashes.get(key, 0) > MAX_RETRIES:
            continue
        study.enqueue_trial({}, user_attrs={"cell": key[0], "cell_json": json.dumps(cell), "seed": seed})
        n += 1
    return n


@dataclass
class Counts:
    done: int
    running: int
    waiting: int
    failed: int
    diverged: int
    pruned: int
    total: int
    missing: list[str]


def counts(study: optuna.Study, p: Plan) -> Counts:
    trials = study.get_trials(deepcopy=False)
    by = lambda s: sum(t.state == s for t in trials)  # noqa: E731
    done_units = {unit_of(t) for t in trials if _done(t)}
    if p.sweep.sampler == "grid":
        missing = [f"{cell_key(c)} seed {s}" for c, s in p.units() if (cell_key(c), s) not in done_units]
        done = len(done_units & {(cell_key(c), s) for c, s in p.units()})
    else:
        done = sum(_done(t) for t in trials)
        missing = []
    diverged = sum(t.user_attrs.get("status") == "diverged" for t in trials)
    crashed = sum(t.state == TrialState.FAIL and unit_of(t) is not None for t in trials) - diverged
    return Counts(done, by(TrialState.RUNNING), by(TrialState.WAITING), crashed,
                  diverged, by(TrialState.PRUNED), p.trials, missing)


def failure_reasons(study: optuna.Study) -> dict[str, str]:
    """The latest recorded reason per (cell, seed) whose attempts failed (crashes, not divergence)."""
    out = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if unit_of(t) is not None and t.user_attrs.get("status") != "diverged":
            out[f"{t.user_attrs['cell']} seed {t.user_attrs['seed']}"] = t.user_attrs.get("reason", "no reason recorded")
    return out


# ----------------------------------------------------------------------------- launching


@dataclass
class Setup:
    study: optuna.Study
    experiment_id: str
    parent_run_id: str


def prepare(p: Plan, storage_url: str, tracking_uri: str, artifact_root: str, code_version: str) -> Setup:
    """Create (or find) the MLflow experiment and parent run and the study, then reap and enqueue."""
    tracking_uri = tracking.absolute_uri(tracking_uri)
    study = load_study(p, storage_url, create=True)
    experiment_id = study.user_attrs.get("mlflow_experiment_id") or tracking.prepare(
        tracking_uri, p.sweep.name, artifact_root
    )
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent is None:
        parent = tracking.start_parent(
            tracking_uri, experiment_id, p.study_name,
            tags={"llmjepa.role": "parent", "llmjepa.study": p.study_name, "llmjepa.sweep": p.sweep.name,
                  "llmjepa.budget": p.budget, "llmjepa.sweep_hash": p.hash, "code_version": code_version,
                  "llmjepa.question": p.sweep.question[:4000]},
        )
        tracker = tracking.MlflowTracker(tracking_uri, experiment_id, run_id=parent)
        resolved = p.sweep.model_dump(mode="json") | {"resolved_base": p.base, "resolved_cells": p.cells,
                                                       "resolved_seeds": p.seeds, "budget": p.budget}
        tracker.log_text(yaml.safe_dump(resolved, sort_keys=False), "sweep.yaml")
        tracker.flush()
        study.set_user_attr("mlflow_experiment_id", experiment_id)
        study.set_user_attr("mlflow_parent_run_id", parent)
        study.set_user_attr("tracking_uri", tracking_uri)
    reap(study, tracking_uri)
    enqueue_missing(study, p)
    return Setup(study, experiment_id, parent)


def worker_command(p: Plan, storage_url: str, tracking_uri: str, threads: int) -> list[str]:
    return [sys.executable, "-m", "llmjepa.cli", "worker", str(p.path), "--budget", p.budget,
            "--storage", storage_url, "--tracking-uri", tracking_uri, "--threads", str(threads)]


def start_workers(p: Plan, n: int, storage_url: str, tracking_uri: str, log_dir: Path) -> list[subprocess.Popen]:
    """Long-lived worker processes that split the cores between them."""
    threads = max(1, (os.cpu_count() or 1) // n)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = os.environ.copy()
    env.pop("MLFLOW_RUN_ID", None)  # it would override the parent run
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    procs = []
    for i in range(n):
        log = open(log_dir / f"worker-{i}.log", "a")
        procs.append(subprocess.Popen(worker_command(p, storage_url, tracking_uri, threads), stdout=log,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True))
    return procs


def stop_workers(procs: list[subprocess.Popen], timeout: float = 60) -> None:
    for pr in procs:
        if pr.poll() is None:
            pr.send_signal(signal.SIGTERM)
    deadline = time.time() + timeout
    for pr in procs:
        try:
            pr.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pr.kill()


# ----------------------------------------------------------------------------- the worker


class Stop(KeyboardInterrupt):
    """SIGTERM: finish nothing more, leave the study resumable (the run ends KILLED)."""


def _heartbeat(storage, trial_id: int, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_INTERVAL):
        try:
            storage.record_heartbeat(trial_id)
        except Exception:
            pass


def run_trial(study: optuna.Study, trial: optuna.Trial, p: Plan, tracking_uri: str, threads: int) -> str:
    """Run one trial end to end and tell Optuna its outcome; returns the outcome."""
    from llmjepa.experiment import run_tracked
    from llmjepa.train import Pruned, code_version

    storage = study._storage
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    storage.record_heartbeat(trial._trial_id)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(storage, trial._trial_id, stop), daemon=True)
    beat.start()
    try:
        if p.sweep.sampler == "grid":
            cell, seed = json.loads(trial.user_attrs["cell_json"]), trial.user_attrs["seed"]
        else:
            cell, seed = suggest(trial, p), p.seeds[0]
            trial.set_user_attr("cell", cell_key(cell))
            trial.set_user_attr("cell_json", json.dumps(cell))
            trial.set_user_attr("seed", seed)
        spec = p.spec_for(cell, seed, tracking_uri)
        if threads:
            spec = spec.model_copy(update={"train": spec.train.model_copy(update={"threads": threads})})
        pr = p.sweep.pruner

        def callback(step: int, m: dict) -> None:
            if pr.kind == "none" or step < pr.after:
                return
            if m.get("collapse/collapsed"):
                raise Pruned(f"collapsed at step {step}")
            key = p.sweep.objectives[0].metric
            if pr.kind == "median" and key in m and not math.isnan(m[key]):
                trial.report(m[key], step)
                if trial.should_prune():
                    raise Pruned(f"median rule at step {step}")

        tags = {"llmjepa.study": p.study_name, "llmjepa.sweep": p.sweep.name, "llmjepa.cell": cell_key(cell),
                "llmjepa.cell_json": json.dumps(cell), "llmjepa.seed": seed, "llmjepa.trial": trial.number,
                "code_version": code_version()}
        result = run_tracked(
            spec, study.user_attrs["mlflow_experiment_id"], study.user_attrs["mlflow_parent_run_id"],
            run_name=f"{cell_key(cell)} seed {seed}", tags=tags, callback=callback,
            on_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
        )
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("reason", result.reason[:1000])
        if result.status == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        elif result.status == "diverged":
            study.tell(trial, state=TrialState.FAIL)
        else:
            values = [result.final.get(o.metric, float("nan")) for o in p.sweep.objectives]
            if any(math.isnan(v) for v in values):
                missing = [o.metric for o, v in zip(p.sweep.objectives, values) if math.isnan(v)]
                trial.set_user_attr("reason", f"objective metric not recorded (or NaN): {', '.join(missing)}")
                study.tell(trial, state=TrialState.FAIL)
                return "failed"
            study.tell(trial, values)
        return result.status
    except (KeyboardInterrupt, Stop):
        trial.set_user_attr("reason", "interrupted")
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as e:
        trial.set_user_attr("reason", f"{type(e).__name__}: {e}"[:1000])
        study.tell(trial, state=TrialState.FAIL)
        return "failed"
    finally:
        stop.set()


def suggest(trial: optuna.Trial, p: Plan) -> dict[str, Any]:
    out = {}
    for name, d in p.sweep.search.items():
        if d.type == "float":
            out[name] = trial.suggest_float(name, d.low, d.high, log=d.log)
        elif d.type == "int":
            out[name] = trial.suggest_int(name, low=int(d.low), high=int(d.high), log=d.log)
        else:
            out[name] = trial.suggest_categorical(name, d.choices)
    return out


@contextlib.contextmanager
def claim_lock(storage_url: str):
    """Serialise taking a waiting trial among this machine's workers on a SQLite storage.

    Optuna pops a waiting trial by reading its state and then writing RUNNING; PostgreSQL locks the
    row (SELECT ... FOR UPDATE) but SQLite ignores that, and two workers were seen running one cell
    twice. A file lock beside the database makes look-and-take atomic (SQLite means one machine)."""
    if not storage_url.startswith("sqlite:///"):
        yield
        return
    path = Path(storage_url.removeprefix("sqlite:///")).resolve().with_suffix(".claim-lock")
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def work(p: Plan, storage_url: str, tracking_uri: str, threads: int = 0, max_trials: int | None = None) -> int:
    """The worker loop: take waiting trials (grid) or ask new ones (TPE) until none is left."""
    def on_term(signum, frame):
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)
    study = load_study(p, storage_url)
    tracking_uri = tracking.absolute_uri(tracking_uri)
    n = 0
    try:
        while max_trials is None or n < max_trials:
            with claim_lock(storage_url):
                if p.sweep.sampler == "grid":
                    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                        break
                elif len(study.get_trials(deepcopy=False)) >= p.trials:
                    break
                trial = study.ask()
            if p.sweep.sampler == "grid" and "cell_json" not in trial.user_attrs:
                # another machine's worker took the last waiting trial between our look and our ask
                trial.set_user_attr("reason", "no waiting trial left")
                study.tell(trial, state=TrialState.FAIL)
                break
            run_trial(study, trial, p, tracking_uri, threads)
            n += 1
    except Stop:
        return 143
    return 0


def launch(p: Plan, setup: Setup, workers: int, storage_url: str, tracking_uri: str, console) -> Counts:
    """Run workers and show progress polled from the storage (so it counts every machine's
    trials). A dead worker's trial is reaped and re-queued for the others. Ctrl-C stops the
    workers cleanly; the study stays resumable."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    study = setup.study
    tracking_uri = tracking.absolute_uri(tracking_uri)
    log_dir = Path("runs") / "logs" / p.study_name

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)  # SIGTERM stops as cleanly as Ctrl-C
    procs = start_workers(p, workers, storage_url, tracking_uri, log_dir)
    dead: set[int] = set()
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console) as bar:
            task = bar.add_task(p.study_name, total=p.trials, info="")
            while True:
                c = counts(study, p)
                bar.update(task, completed=c.done, info=f"running {c.running} waiting {c.waiting} "
                           f"diverged {c.diverged} pruned {c.pruned} failed {c.failed}")
                alive = [pr for pr in procs if pr.poll() is None]
                newly_dead = [pr for pr in procs if pr.poll() not in (None, 0) and pr.pid not in dead]
                if newly_dead:  # a worker died: fail its trial and queue the cell again
                    dead.update(pr.pid for pr in newly_dead)
                    reap(study, tracking_uri)
                    enqueue_missing(study, p)
                    if not alive and (c.waiting or c.missing):
                        procs += start_workers(p, 1, storage_url, tracking_uri, log_dir)
                        continue
                if not alive:
                    break
                time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping workers; run the same command to resume[/]")
        stop_workers(procs)
        reap(study, tracking_uri)
        raise
    return counts(study, p)
