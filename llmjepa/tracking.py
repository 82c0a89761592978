"""Experiment tracking: the one place that talks to MLflow.

Owns store preparation (SQLite store, WAL, experiment with a fixed artifact
location), run trackers with buffered metric logging (``MlflowTracker``, and the
do-nothing ``NullTracker``), and the few read/repair helpers used by launchers
and reports.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

DEFAULT_URI = "sqlite:///runs/mlflow.db"
STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")
PARENT_TAG = "mlflow.parentRunId"
NONFINITE_TAG = "nonfinite_metrics"

MAX_PARAM_CHARS = 500  # our own cap for spec strings; MLflow allows 6000
MAX_TAG_CHARS = 5000  # MLflow allows 8000
METRICS_PER_BATCH = 1000
PARAMS_PER_BATCH = 100


def _now_ms() -> int:
    return int(time.time() * 1000)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sqlite_path(uri: str) -> Path | None:
    """File path of a ``sqlite:///`` store, or None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def absolute_uri(uri: str) -> str:
    """Make a relative SQLite store path absolute so workers in other folders agree."""
    path = _sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    return "sqlite:///" + str(path.resolve())


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Params as MLflow strings: nested dicts get dotted keys, lists become JSON,
    strings over 500 characters are truncated."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, prefix=f"{name}."))
            continue
        if isinstance(value, (list, tuple)):
            text = json.dumps(list(value), default=str)
        else:
            text = str(value)
        flat[name] = _clip(text, MAX_PARAM_CHARS)
    return flat


def _str_tags(tags: dict[str, Any] | None) -> dict[str, str]:
    return {str(k): _clip(str(v), MAX_TAG_CHARS) for k, v in (tags or {}).items()}


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@runtime_checkable
class Tracker(Protocol):
    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_figure(self, fig: Any, artifact_file: str) -> None: ...
    def flush(self) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class _EndOnExit:
    """Context manager: FINISHED on normal exit, KILLED on Ctrl-C, FAILED on other
    exceptions. A run the caller already ended keeps its status."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")
        return False


class NullTracker(_EndOnExit):
    """Tracker used when tracking is off: accepts everything, records nothing."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker(_EndOnExit):
    """One MLflow run addressed by explicit id (no fluent global run state).

    Creates a run (nested under ``parent_run_id`` if given) unless ``run_id`` names an
    existing run to attach to. Metrics are buffered and sent with ``log_batch``.
    NaN is stored as NaN; MLflow stores +-inf as +-1.797e308. Either way the key is
    listed in the ``nonfinite_metrics`` tag.
    """

    def __init__(
        self,
        uri: str,
        experiment_id: str,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
        flush_every: int = 100,
        tags: dict | None = None,
    ):
        self.client = MlflowClient(tracking_uri=uri)
        self.flush_every = max(1, int(flush_every))
        self._buffer: list[Metric] = []
        self._nonfinite: set[str] = set()
        self._ended = False
        if run_id is None:
            run_tags = _str_tags(tags)
            if parent_run_id:
                run_tags[PARENT_TAG] = parent_run_id
            run = self.client.create_run(experiment_id, tags=run_tags, run_name=run_name)
            self.run_id = run.info.run_id
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING", name=run_name)
            extra = dict(tags or {})
            if parent_run_id:
                extra[PARENT_TAG] = parent_run_id
            if extra:
                self.set_tags(extra)

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, v) for k, v in flatten_params(params).items()]
        for chunk in _chunks(items, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk, synchronous=True)

    def set_tags(self, tags: dict[str, Any]) -> None:
        items = [RunTag(k, v) for k, v in _str_tags(tags).items()]
        for chunk in _chunks(items, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk, synchronous=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        stamp = _now_ms()
        fresh_nonfinite = []
        for key, value in metrics.items():
            if value is None:
                continue
            value = float(value)
            if not math.isfinite(value) and key not in self._nonfinite:
                self._nonfinite.add(key)
                fresh_nonfinite.append(key)
            self._buffer.append(Metric(key, value, stamp, int(step)))
        if fresh_nonfinite:
            self.set_tags({NONFINITE_TAG: ",".join(sorted(self._nonfinite))})
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        pending, self._buffer = self._buffer, []
        for chunk in _chunks(pending, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, fig: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, fig, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        if self._ended:
            return
        self._ended = True
        try:
            self.flush()
        finally:
            self.client.set_terminated(self.run_id, status=_check_status(status))


def _check_status(status: str) -> str:
    status = status.upper()
    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}; expected one of {STATUSES}")
    return status


def _enable_wal(db_file: Path) -> None:
    con = sqlite3.connect(db_file, timeout=30)
    try:
        con.execute("PRAGMA journal_mode=WAL")
    finally:
        con.close()


def prepare(uri: str, experiment_name: str, artifact_root: str | Path) -> str:
    """Create the store (migrations), switch SQLite to WAL, and get-or-create the
    experiment with artifacts under ``artifact_root/<experiment_name>`` (a tracking server
    keeps its own artifact store instead).

    Call once from the launcher before any worker starts; returns the experiment id.
    """
    db_file = _sqlite_path(uri)
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)  # runs migrations if fresh
    if db_file is not None:
        _enable_wal(db_file)
    if experiment is None:
        location = None
        if not uri.startswith(("http://", "https://")):  # a server stores artifacts where it was told to
            path = (Path(artifact_root) / experiment_name).resolve()
            path.mkdir(parents=True, exist_ok=True)
            location = path.as_uri()
        try:
            return client.create_experiment(experiment_name, artifact_location=location)
        except MlflowException:  # created meanwhile by someone else
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def start_parent(
    uri: str,
    experiment_id: str,
    name: str,
    tags: dict[str, Any] | None,
    params: dict[str, Any] | None = None,
) -> str:
    """Create a parent run (e.g. a sweep), leave it RUNNING, return its id."""
    tracker = MlflowTracker(uri, experiment_id, run_name=name, tags=tags)
    if params:
        tracker.log_params(params)
    return tracker.run_id


def set_run_status(uri: str, run_id: str, status: str) -> None:
    """Set a run's status; terminal statuses also stamp the end time."""
    status = _check_status(status)
    client = MlflowClient(tracking_uri=uri)
    if status == "RUNNING":
        client.update_run(run_id, status=status)
    else:
        client.set_terminated(run_id, status=status)


def get_run(uri: str, run_id: str):
    """The mlflow ``Run`` (info + data) for ``run_id``."""
    return MlflowClient(tracking_uri=uri).get_run(run_id)


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """All logged values of one metric as ``(step, value)``, in step order."""
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)
    history = sorted(history, key=lambda m: (m.step, m.timestamp))
    return [(m.step, m.value) for m in history]


def find_runs(uri: str, experiment_id: str, filter_string: str = "") -> pd.DataFrame:
    """Runs matching an MLflow filter, one row each, with ``metrics.*``, ``params.*``
    and ``tags.*`` columns (latest metric values)."""
    client = MlflowClient(tracking_uri=uri)
    rows, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, page_token=token)
        for run in page:
            info, data = run.info, run.data
            row = {
                "run_id": info.run_id,
                "run_name": info.run_name,
                "experiment_id": info.experiment_id,
                "status": info.status,
                "start_time": pd.to_datetime(info.start_time, unit="ms", utc=True),
                "end_time": pd.to_datetime(info.end_time, unit="ms", utc=True),
                "artifact_uri": info.artifact_uri,
            }
            row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
            row.update({f"params.{k}": v for k, v in data.params.items()})
            row.update({f"tags.{k}": v for k, v in data.tags.items()})
            rows.append(row)
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "status"])


def find_experiment(uri: str, name: str) -> str | None:
    """Id of the live experiment called ``name``, or None (deleted ones count as absent)."""
    experiment = MlflowClient(tracking_uri=uri).get_experiment_by_name(name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        return None
    return experiment.experiment_id


def log_artifact(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Attach a local file to an existing run without touching the run's status."""
    MlflowClient(tracking_uri=uri).log_artifact(run_id, str(path), artifact_path)


def list_artifacts(uri: str, run_id: str, path: str | None = None) -> list[str]:
    """Artifact paths of a run under ``path`` (folders are walked), sorted."""
    client = MlflowClient(tracking_uri=uri)
    found, pending = [], [path]
    while pending:
        for item in client.list_artifacts(run_id, pending.pop()):
            (pending if item.is_dir else found).append(item.path)
    return sorted(found)
