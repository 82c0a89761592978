"""Reading a sweep back from MLflow: one table row per (cell, seed).

Owns finding a study's parent run, deduplicating re-run trials, turning the cell tags
into typed axis columns and metric last values into plain columns, and fetching curves.
Reads through ``llmjepa.tracking`` only; knows nothing about verdicts or pages.
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, field
from typing import Any, Iterable

import pandas as pd
import yaml

from llmjepa import tracking

FIXED_COLUMNS = [
    "run_id", "cell", "seed", "status", "mlflow_status", "trial", "reason", "start_time", "end_time",
]


@dataclass
class SweepData:
    """A study's parent run, its deduplicated trials, how many runs were seen, and the
    swept fields (``axes``, from the cells' JSON; each is a column of ``runs``)."""

    parent: dict[str, Any]
    runs: pd.DataFrame
    counts: dict[str, int]
    duplicates: int
    axes: list[str] = field(default_factory=list)


def _quote(value: str) -> str:
    return value.replace("'", "\\'")


def hashable(value: Any) -> Any:
    """Lists become tuples (recursively) so axis values can be grouped on and used as keys."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    return value


def _parse_param(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return hashable(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


def _cell_values(text: Any) -> dict[str, Any]:
    if not isinstance(text, str) or not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return {k: hashable(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _tag(row: pd.Series, key: str) -> Any:
    value = row.get(f"tags.{key}")
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def sort_key(value: Any) -> tuple:
    """Orders mixed axis values: numbers, then strings, then the rest; None last."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return (3, "", 0)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (0, "", float(value))
    if isinstance(value, str):
        return (1, value, 0)
    return (2, repr(value), 0)


def dedupe_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Keep one run per (cell, seed): the FINISHED one that ended last, else the latest started."""
    if runs.empty:
        return runs
    finished = runs["mlflow_status"].eq("FINISHED")
    ranked = runs.copy().assign(  # copy: one block, not the many columns added one by one
        _finished=finished,
        _end=pd.to_datetime(runs["end_time"], utc=True).where(finished),
        _start=pd.to_datetime(runs["start_time"], utc=True),
    ).sort_values(["_finished", "_end", "_start", "run_id"], na_position="first", kind="mergesort")
    kept = ranked.groupby(["cell", "seed"], dropna=False, sort=False).tail(1)
    return kept.drop(columns=["_finished", "_end", "_start"])


def _child_rows(frame: pd.DataFrame, extra_fields: Iterable[str]) -> tuple[pd.DataFrame, list[str]]:
    """Child runs as typed rows (fixed columns, field columns, metric last values) and the
    swept fields, in the order the cells name them."""
    axes: list[str] = []
    records = []
    for _, row in frame.iterrows():
        cell = _cell_values(_tag(row, "llmjepa.cell_json"))
        for name in cell:
            if name not in axes:
                axes.append(name)
        mlflow_status = str(row["status"])
        key = _tag(row, "llmjepa.cell")
        if key is None:
            key = " ".join(f"{k}={v}" for k, v in cell.items()) or "(no cell)"
        seed = _int_or_none(_tag(row, "llmjepa.seed"))
        if seed is None:
            seed = _int_or_none(_parse_param(row.get("params.train.seed")))
        record = {
            "run_id": row["run_id"],
            "cell": key,
            "seed": seed,
            "status": _tag(row, "llmjepa.status") or mlflow_status.lower(),
            "mlflow_status": mlflow_status,
            "trial": _int_or_none(_tag(row, "llmjepa.trial")),
            "reason": _tag(row, "llmjepa.reason") or "",
            "start_time": row.get("start_time"),
            "end_time": row.get("end_time"),
            "_cell": cell,
            "_params": {k[len("params."):]: v for k, v in row.items() if k.startswith("params.")},
        }
        for name, value in row.items():
            if name.startswith("metrics."):
                record[name[len("metrics."):]] = value
        records.append(record)
    columns = axes + [name for name in dict.fromkeys(extra_fields) if name not in axes]
    for record in records:
        cell, params = record.pop("_cell"), record.pop("_params")
        for name in columns:
            record[name] = cell[name] if name in cell else _parse_param(params.get(name))
    return pd.DataFrame(records), axes


def _ordered(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    metrics = sorted(c for c in runs.columns if c not in FIXED_COLUMNS and c not in axes)
    runs = runs[FIXED_COLUMNS + axes + metrics]
    keys = [runs[a].map(sort_key) for a in axes] + [runs["cell"], runs["seed"].map(sort_key)]
    order = sorted(range(len(runs)), key=lambda i: tuple(k.iloc[i] for k in keys))
    return runs.iloc[order].reset_index(drop=True)


def load_sweep_runs(uri: str, sweep_name: str, study_name: str, fields: Iterable[str] = ()) -> SweepData:
    """The study's parent run and its trials, one row per (cell, seed).

    ``fields`` names dotted spec fields to add as typed columns for every run, read from
    the cell when swept and from the run's params otherwise (e.g. the verdict's ``within``).
    """
    experiment_id = tracking.find_experiment(uri, sweep_name)
    if experiment_id is None:
        raise LookupError(f"no MLflow experiment named {sweep_name!r} (sweep {sweep_name}, study {study_name}) in {uri}")
    parents = tracking.find_runs(
        uri, experiment_id,
        f"tags.`llmjepa.role` = 'parent' and tags.`llmjepa.study` = '{_quote(study_name)}'",
    )
    if parents.empty:
        raise LookupError(f"sweep {sweep_name}: no parent run for study {study_name!r} in {uri}")
    parents = parents.sort_values(["start_time", "run_id"], kind="mergesort")
    first = parents.iloc[0]
    parent = {
        "run_id": first["run_id"],
        "run_ids": list(parents["run_id"]),
        "run_name": first["run_name"],
        "start_time": first["start_time"],
        "tags": {k[len("tags."):]: v for k, v in first.items() if k.startswith("tags.") and isinstance(v, str)},
    }
    children = [
        tracking.find_runs(uri, experiment_id, f"tags.`{tracking.PARENT_TAG}` = '{_quote(pid)}'")
        for pid in parent["run_ids"]
    ]
    children = [c for c in children if not c.empty]
    frame = pd.concat(children, ignore_index=True) if children else pd.DataFrame(columns=["run_id", "status"])
    counts = {s: int(n) for s, n in sorted(frame["status"].value_counts().items())}
    if frame.empty:
        runs = pd.DataFrame(columns=FIXED_COLUMNS + list(dict.fromkeys(fields)))
        return SweepData(parent, runs, counts, 0, [])
    rows, axes = _child_rows(frame, fields)
    rows = rows.astype({"seed": "Int64", "trial": "Int64"})
    field_columns = axes + [f for f in dict.fromkeys(fields) if f not in axes]
    runs = _ordered(dedupe_runs(rows), field_columns)
    return SweepData(parent, runs, counts, len(rows) - len(runs), axes)


def curves(uri: str, run_ids: Iterable[str], key: str) -> dict[str, list[tuple[int, float]]]:
    """Full history ``(step, value)`` of one metric per run; empty for runs without it."""
    return {run_id: tracking.metric_history(uri, run_id, key) for run_id in run_ids}
