"""Turning a sweep's runs into a verdict on its hypothesis, and the per-cell tables.

Pure functions: a runs DataFrame (one row per cell and seed, as ``results`` builds it)
and a ``VerdictSpec`` in, a ``Verdict`` or a DataFrame out. The decision rule is the one
stated in the spec before the data existed; every number it used is in the table.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from llmjepa.metrics import mean_ci, welch_t
from llmjepa.specs import VerdictSpec

STATUSES = ("supported", "refuted", "inconclusive", "no data")
TABLE_COLUMNS = ["value", "role", "n", "mean", "ci", "good", "t", "p", "result", "excluded"]


@dataclass
class Verdict:
    status: str
    text: str
    table: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TABLE_COLUMNS))


@dataclass
class _Group:
    value: Any
    values: np.ndarray
    excluded: int

    @property
    def n(self) -> int:
        return int(self.values.size)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def fmt_value(value: Any) -> str:
    """An axis value as people write it: 0.25, 1, same_pass."""
    if _is_number(value):
        value = float(value)
        return "nan" if math.isnan(value) else f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    return str(value)


def fmt_num(value: Any, digits: int = 3) -> str:
    """A measured number with ``digits`` significant digits; '-' when missing."""
    if value is None or not _is_number(value) or math.isnan(float(value)):
        return "-"
    return f"{float(value):.{digits}g}"


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "-"
    return "< 0.0001" if p < 1e-4 else f"{p:.2g}"


def short_name(field_name: str) -> str:
    """Last part of a dotted field: data.text_ratio -> text_ratio."""
    return field_name.rsplit(".", 1)[-1]


def same_value(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return a == b


def matching(runs: pd.DataFrame, column: str, value: Any) -> pd.DataFrame:
    """Rows whose ``column`` equals ``value`` (numbers compared as numbers)."""
    mask = np.array([same_value(v, value) for v in runs[column]], dtype=bool)
    return runs.loc[mask]


def select_within(runs: pd.DataFrame, within: dict[str, Any]) -> pd.DataFrame:
    """Rows whose fields equal every ``within`` value; none if a field is not a column."""
    for name, value in within.items():
        if name not in runs.columns:
            return runs.iloc[0:0]
        runs = matching(runs, name, value)
    return runs


def _finished(runs: pd.DataFrame) -> pd.Series:
    return runs["status"].eq("finished")


def _group(runs: pd.DataFrame, axis: str, value: Any, metric: str) -> _Group:
    rows = matching(runs, axis, value)
    done = rows[_finished(rows)]
    values = pd.to_numeric(done[metric], errors="coerce").dropna().to_numpy(dtype=np.float64)
    return _Group(value, values, int(len(rows) - len(done)))


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _no_data(text: str) -> Verdict:
    return Verdict("no data", text)


def _within_text(spec: VerdictSpec) -> str:
    if not spec.within:
        return ""
    return "with " + ", ".join(f"{short_name(k)}={fmt_value(v)}" for k, v in spec.within.items()) + ", "


def compute_verdict(runs: pd.DataFrame, spec: VerdictSpec) -> Verdict:
    """Decide the hypothesis from finished runs inside ``spec.within``, by the spec's rule."""
    metric, axis, thr = spec.metric, spec.axis, spec.threshold
    if runs.empty:
        return _no_data("No runs.")
    for name, what in ((axis, "axis"), (metric, "metric")):
        if name not in runs.columns:
            return _no_data(f"No run records the {what} {name}.")
    scope = select_within(runs, spec.within)
    if scope.empty:
        return _no_data(f"No runs {_within_text(spec).rstrip(', ')}.")
    sign = 1.0 if spec.better == "higher" else -1.0

    def good(x: np.ndarray) -> np.ndarray:
        return x >= thr if spec.better == "higher" else x <= thr

    ref = _group(scope, axis, spec.reference, metric)
    claims = [_group(scope, axis, v, metric) for v in spec.claim]
    if all(g.n == 0 for g in claims):
        claimed = ", ".join(fmt_value(v) for v in spec.claim)
        return _no_data(_cap(f"{_within_text(spec)}no finished run at {short_name(axis)} in {{{claimed}}} records {metric}."))
    ref_good = int(good(ref.values).sum()) if thr is not None else None
    ref_all_good = thr is not None and ref.n > 0 and ref_good == ref.n
    ref_all_bad = thr is not None and ref.n > 0 and ref_good == 0

    rows = [_row(ref, "reference", ref_good, math.nan, math.nan, "reference")]
    results = []
    for g in claims:
        result, t, p = _judge(g, ref, spec, good, sign, ref_all_good, ref_all_bad)
        results.append((g, result, p))
        rows.append(_row(g, "claim", int(good(g.values).sum()) if thr is not None else None, t, p, result))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)

    outcomes = [r for _, r, _ in results]
    if "bad" in outcomes:
        status = "refuted"
    elif all(r == "good" for r in outcomes):
        status = "supported"
    else:
        status = "inconclusive"
    text = _sentences(spec, ref, results, good, ref_all_good)
    if status == "supported" and spec.reference_bad and thr is not None and ref.n and ref_good * 2 > ref.n:
        status = "inconclusive"
        text += (f" But {ref_good}/{ref.n} reference runs are on the good side as well, so these runs cannot show "
                 f"that {short_name(axis)} is what keeps {metric} there.")
    return Verdict(status, text, table)


def _judge(g, ref, spec, good, sign, ref_all_good, ref_all_bad) -> tuple[str, float, float]:
    """'good', 'bad', 'unclear' or 'no data' for one claim value, with Welch t and p."""
    if g.n == 0:
        return "no data", math.nan, math.nan
    t, p = welch_t(g.values, ref.values)
    testable = not math.isnan(p)
    delta = sign * (float(g.values.mean()) - float(ref.values.mean())) if ref.n else math.nan
    better = testable and p < spec.alpha and delta > 0
    worse = testable and p < spec.alpha and delta < 0
    if spec.threshold is not None:
        n_good = int(good(g.values).sum())
        if g.n - n_good > g.n / 2:
            return "bad", t, p
        if n_good == g.n and (ref_all_good or better or (not testable and ref_all_bad)):
            return "good", t, p
        return "unclear", t, p
    if worse:
        return "bad", t, p
    return ("good" if better else "unclear"), t, p


def _row(g: _Group, role: str, n_good, t: float, p: float, result: str) -> dict:
    mean, ci = mean_ci(g.values) if g.n else (math.nan, math.nan)
    return {
        "value": g.value, "role": role, "n": g.n, "mean": mean, "ci": ci,
        "good": math.nan if n_good is None else n_good, "t": t, "p": p, "result": result, "excluded": g.excluded,
    }


def _sentences(spec: VerdictSpec, ref: _Group, results, good, ref_all_good) -> str:
    ax = short_name(spec.axis)
    present = [(g, r, p) for g, r, p in results if g.n]
    missing = [g for g, _, _ in results if not g.n]
    values = "{" + ", ".join(fmt_value(g.value) for g, _, _ in present) + "}"
    excluded = sum(g.excluded for g, _, _ in results) + ref.excluded
    if spec.threshold is not None:
        side = ">=" if spec.better == "higher" else "<="
        n_good = sum(int(good(g.values).sum()) for g, _, _ in present)
        n_all = sum(g.n for g, _, _ in present)
        ref_good = int(good(ref.values).sum())
        first = (f"{_within_text(spec)}{ax} in {values} has {spec.metric} {side} {spec.threshold:g} "
                 f"in {n_good}/{n_all} finished runs, against {ref_good}/{ref.n} at {ax} {fmt_value(spec.reference)}")
    else:
        means = ", ".join(f"{fmt_num(g.values.mean())} ({fmt_value(g.value)})" for g, _, _ in present)
        ref_mean = fmt_num(ref.values.mean()) if ref.n else "no runs"
        first = (f"{_within_text(spec)}mean {spec.metric} ({spec.better} is better) is {means}, "
                 f"against {ref_mean} at {ax} {fmt_value(spec.reference)}")
    if missing:
        first += f"; no finished runs at {ax} " + ", ".join(fmt_value(g.value) for g in missing)
    if excluded:
        first += f"; {excluded} unfinished run{'s' if excluded != 1 else ''} left out"
    first = _cap(first) + "."

    if ref_all_good:
        second = "No t-test needed: every reference run is on the good side too."
    elif ref.n == 0:
        second = f"No reference runs at {ax} {fmt_value(spec.reference)}, so no t-test."
    else:
        tested = [f"{fmt_p(p)} ({fmt_value(g.value)})" for g, _, p in present if not math.isnan(p)]
        untested = [fmt_value(g.value) for g, _, p in present if math.isnan(p)]
        by_threshold = any(math.isnan(p) and r == "good" for _, r, p in present)
        parts = []
        if tested:
            parts.append(f"Welch t-test vs {ax} {fmt_value(spec.reference)} (alpha {spec.alpha:g}): p = "
                         + ", ".join(tested))
        if untested:
            parts.append(f"no t-test for {', '.join(untested)} (n < 2 in a group)"
                         + ("; there the threshold alone decides, as every reference run is on the bad side"
                            if by_threshold else ""))
        second = "; ".join(parts)
        second = _cap(second) + "."
    return f"{first} {second}"


def image_use(runs: pd.DataFrame, spec: VerdictSpec) -> pd.DataFrame:
    """Per cell: finished seeds, mean ``gap_metric`` and whether text used the image."""
    columns = ["cell", "n", "gap", "used"]
    if spec.gap_metric is None or runs.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for cell, group in runs.groupby("cell", sort=False):
        done = group[_finished(group)]
        gaps = (pd.to_numeric(done[spec.gap_metric], errors="coerce").dropna()
                if spec.gap_metric in done.columns else pd.Series(dtype=float))
        ratio = group["data.text_ratio"].iloc[0] if "data.text_ratio" in group.columns else None
        if _is_number(ratio) and float(ratio) == 0.0:
            used = "no text"
        elif gaps.empty:
            used = "not recorded"
        else:
            used = "yes" if gaps.mean() >= spec.gap_min else "no"
        rows.append({"cell": cell, "n": len(done), "gap": gaps.mean() if len(gaps) else math.nan, "used": used})
    return pd.DataFrame(rows, columns=columns)


def cell_table(runs: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per cell (in row order): finished seeds ``n``, all runs, and each metric's mean and
    95% CI half-width over finished seeds, as columns ``<metric> mean`` and ``<metric> ci``."""
    columns = ["cell", "n", "runs"] + [f"{m} {s}" for m in metrics for s in ("mean", "ci")]
    rows = []
    if runs.empty:
        return pd.DataFrame(columns=columns)
    for cell, group in runs.groupby("cell", sort=False):
        done = group[_finished(group)]
        row = {"cell": cell, "n": len(done), "runs": len(group)}
        for m in metrics:
            values = pd.to_numeric(done[m], errors="coerce").dropna() if m in done.columns else []
            row[f"{m} mean"], row[f"{m} ci"] = mean_ci(list(values))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)
