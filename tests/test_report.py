"""Tests for reading a sweep back (results), the verdict rule and the PDF report.

One SQLite MLflow store per session holds a small fake sweep written to the runner's
contract: a 3-value axis x 2 modes x 2 seeds, a killed duplicate and a diverged trial.
"""

import json
import math
import subprocess

import numpy as np
import pandas as pd
import pytest
from pypdf import PdfReader

from llmjepa import results, tracking
from llmjepa.metrics import mean_ci
from llmjepa.report import write_report
from llmjepa.specs import SweepSpec, VerdictSpec, flatten, load_experiment
from llmjepa.verdict import cell_table, compute_verdict, image_use

SWEEP = "collapse-vs-text-ratio"
STUDY = f"{SWEEP}-quick-1a2b3c4d"
EMPTY_STUDY = f"{SWEEP}-full-9f9f9f9f"
RATIOS = [0, 0.5, 1.0]
MODES = ["same_pass", "ema"]
SEEDS = [0, 1]
EVAL_STEPS = [0, 50, 100]
QUESTION = "Does interleaved text keep same-pass JEPA targets from collapsing?"

VERDICT = {
    "metric": "collapse/rankme/image/target", "axis": "data.text_ratio", "reference": 0, "claim": [0.5, 1.0],
    "threshold": 2.0, "within": {"objective.target_mode": "same_pass"},
}


def sweep_spec() -> SweepSpec:
    return SweepSpec(
        name=SWEEP,
        question=QUESTION,
        hypothesis="With text in at least half of the examples, same-pass targets keep RankMe above the "
        "collapse line, while image-only training collapses; EMA targets never collapse.",
        set={"train.steps": 100},
        axes={"data.text_ratio": RATIOS, "objective.target_mode": MODES},
        seeds=SEEDS,
        objectives=[{"metric": "collapse/rankme/image/target"}],
        budgets={"quick": {"set": {"eval.every": 50}}},
        verdict=VERDICT,
    )


def final_rankme(ratio: float, mode: str, seed: int) -> float:
    if mode == "ema":
        return 8.0 + ratio + 0.1 * seed
    return {0: 1.2, 0.5: 5.0, 1.0: 6.0}[ratio] + 0.1 * seed


def cell_key(ratio, mode) -> str:
    return f"data.text_ratio={ratio} objective.target_mode={mode}"


def log_child(uri, eid, parent_id, ratio, mode, seed, trial, status="finished", steps=EVAL_STEPS):
    spec = load_experiment(None, [f"data.text_ratio={ratio}", f"objective.target_mode={mode}",
                                  f"train.seed={seed}", "train.steps=100"])
    tags = {
        "llmjepa.study": STUDY, "llmjepa.cell": cell_key(ratio, mode),
        "llmjepa.cell_json": json.dumps({"data.text_ratio": ratio, "objective.target_mode": mode}),
        "llmjepa.seed": seed, "llmjepa.trial": trial, "spec_hash": "abc", "code_version": "test",
    }
    if status != "killed":
        tags.update({"llmjepa.status": status, "llmjepa.reason": "" if status == "finished" else "nan loss"})
    t = tracking.MlflowTracker(uri, eid, run_name=f"t{trial}", parent_run_id=parent_id, tags=tags)
    t.log_params(flatten(spec))
    final = final_rankme(ratio, mode, seed) if status == "finished" else 0.5
    for step in range(0, steps[-1] + 1, 10):
        t.log_metrics({"loss/jepa/all": 1.0 / (step + 1), "loss/jepa_baseline/all": 1.0, "loss/ce/text": 2.0}, step)
    for i, step in enumerate(steps):
        frac = i / max(1, len(steps) - 1)
        rank = 10.0 + (final - 10.0) * frac
        m = {
            "collapse/rankme/image/target": rank, "collapse/rankme/image/L2": rank + 1,
            "collapse/erank/image/target": rank / 2, "collapse/ln_std_mean/image/target": 0.1 * rank,
            "collapse/rms/image/target": 1.0, "collapse/collapsed": float(rank < 2.0),
            "probe/acc/mean/image/L4": 0.3 + 0.05 * rank, "probe/pixel/mean": 0.4, "probe/majority/mean": 0.2,
            "time/wall_s": 10.0 * step,
        }
        for layer in range(1, 5):
            m[f"align/r1/image-text/L{layer}"] = 0.1 * layer * ratio + 0.01 * seed
            m[f"align/mknn/image-text/L{layer}"] = 0.05 * layer * ratio
        if ratio:
            m["text/image_use_gap"] = 0.05 * ratio if mode == "same_pass" else 0.01
            m["text/ce/caption"] = 1.5
        t.log_metrics(m, step)
    t.end({"finished": "FINISHED", "diverged": "FAILED", "killed": "KILLED"}[status])
    return t.run_id


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    eid = tracking.prepare(uri, SWEEP, root / "artifacts")
    parent_tags = {"llmjepa.role": "parent", "llmjepa.sweep": SWEEP, "llmjepa.budget": "quick",
                   "llmjepa.sweep_hash": "feedc0ffee12", "code_version": "test"}
    parent = tracking.start_parent(uri, eid, STUDY, {**parent_tags, "llmjepa.study": STUDY})
    tracking.start_parent(uri, eid, EMPTY_STUDY, {**parent_tags, "llmjepa.study": EMPTY_STUDY})
    killed = log_child(uri, eid, parent, 0.5, "same_pass", 0, trial=99, status="killed", steps=[0])
    ids, trial = {}, 0
    for ratio in RATIOS:
        for mode in MODES:
            for seed in SEEDS:
                status = "diverged" if (ratio, mode, seed) == (0, "ema", 1) else "finished"
                ids[(ratio, mode, seed)] = log_child(uri, eid, parent, ratio, mode, seed, trial, status)
                trial += 1
    return {"uri": uri, "eid": eid, "parent": parent, "ids": ids, "killed": killed, "root": root}


@pytest.fixture(scope="session")
def reports(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    first = write_report(sweep_spec(), "quick", STUDY, store["uri"], out / "a" / "report.pdf", "test")
    second = write_report(sweep_spec(), "quick", STUDY, store["uri"], out / "b" / "report.pdf", "test")
    return first, second


# ----------------------------------------------------------------------------- tracking helpers


def test_find_experiment_and_artifacts(store, tmp_path):
    assert tracking.find_experiment(store["uri"], SWEEP) == store["eid"]
    assert tracking.find_experiment(store["uri"], "no-such-sweep") is None
    note = tmp_path / "note.txt"
    note.write_text("hello")
    tracking.log_artifact(store["uri"], store["killed"], note, "extra")
    assert tracking.list_artifacts(store["uri"], store["killed"]) == ["extra/note.txt"]
    assert tracking.get_run(store["uri"], store["killed"]).info.status == "KILLED"


# ----------------------------------------------------------------------------- results


def test_load_sweep_runs_dedupes(store):
    data = results.load_sweep_runs(store["uri"], SWEEP, STUDY, fields=["train.steps"])
    runs = data.runs
    assert data.parent["run_id"] == store["parent"]
    assert data.parent["tags"]["llmjepa.budget"] == "quick"
    assert data.counts == {"FAILED": 1, "FINISHED": 11, "KILLED": 1}
    assert data.duplicates == 1 and len(runs) == 12
    assert data.axes == ["data.text_ratio", "objective.target_mode"]
    assert store["killed"] not in set(runs["run_id"])
    kept = runs[(runs["cell"] == cell_key(0.5, "same_pass")) & (runs["seed"] == 0)]
    assert list(kept["run_id"]) == [store["ids"][(0.5, "same_pass", 0)]]
    assert kept["collapse/rankme/image/target"].iloc[0] == pytest.approx(5.0)
    diverged = runs[runs["run_id"] == store["ids"][(0, "ema", 1)]]
    assert diverged["status"].iloc[0] == "diverged" and diverged["mlflow_status"].iloc[0] == "FAILED"
    assert set(runs["data.text_ratio"]) == {0, 0.5, 1.0}
    assert runs["train.steps"].iloc[0] == 100  # typed, from the params
    assert list(runs["data.text_ratio"])[:4] == [0, 0, 0, 0]  # sorted by axis values
    assert "metrics.time/wall_s" not in runs.columns and "time/wall_s" in runs.columns


def test_load_sweep_runs_missing(store):
    with pytest.raises(LookupError, match="no-such-sweep"):
        results.load_sweep_runs(store["uri"], "no-such-sweep", STUDY)
    with pytest.raises(LookupError, match=f"{SWEEP}.*no-such-study"):
        results.load_sweep_runs(store["uri"], SWEEP, "no-such-study")
    empty = results.load_sweep_runs(store["uri"], SWEEP, EMPTY_STUDY)
    assert empty.runs.empty and empty.duplicates == 0 and empty.counts == {}


def test_curves(store):
    rid = store["ids"][(1.0, "same_pass", 0)]
    got = results.curves(store["uri"], [rid], "collapse/rankme/image/target")[rid]
    assert [s for s, _ in got] == EVAL_STEPS and got[-1][1] == pytest.approx(6.0)
    assert results.curves(store["uri"], [rid], "not/a/metric") == {rid: []}


def test_dedupe_rules():
    t = pd.Timestamp("2024-01-01", tz="UTC")
    m = pd.Timedelta(minutes=1)
    rows = pd.DataFrame([
        # a finished run beats a later killed one
        ("a", "c1", 0, "FINISHED", t, t + m), ("b", "c1", 0, "KILLED", t + 2 * m, t + 3 * m),
        # of two finished runs the one that ended last wins
        ("c", "c2", 0, "FINISHED", t, t + 5 * m), ("d", "c2", 0, "FINISHED", t + m, t + 2 * m),
        # no finished run: the latest started wins
        ("e", "c3", 0, "KILLED", t, t + m), ("f", "c3", 0, "FAILED", t + m, None),
        ("g", "c3", 1, "KILLED", t, None),
    ], columns=["run_id", "cell", "seed", "mlflow_status", "start_time", "end_time"])
    assert sorted(results.dedupe_runs(rows)["run_id"]) == ["a", "c", "f", "g"]


# ----------------------------------------------------------------------------- verdict


def frame(groups: dict, metric="m", status="finished", extra=None) -> pd.DataFrame:
    rows = []
    for value, values in groups.items():
        for seed, v in enumerate(values):
            rows.append({"cell": f"x={value}", "seed": seed, "status": status, "x": value, "mode": "a", metric: v})
    for row in extra or []:
        rows.append(row)
    return pd.DataFrame(rows)


def spec(**kw) -> VerdictSpec:
    base = {"metric": "m", "axis": "x", "reference": 0, "claim": [0.5, 1.0], "threshold": 2.0}
    return VerdictSpec(**{**base, **kw})


def test_verdict_supported():
    v = compute_verdict(frame({0: [1.0, 1.1, 1.2], 0.5: [5.0, 5.2, 5.1], 1.0: [6.0, 6.1, 6.3]}), spec())
    assert v.status == "supported"
    assert "6/6" in v.text and "Welch" in v.text and "p = " in v.text
    assert list(v.table["role"]) == ["reference", "claim", "claim"]
    row = v.table.iloc[1]
    assert row["n"] == 3 and row["good"] == 3 and row["p"] < 0.05 and row["result"] == "good"
    assert row["mean"] == pytest.approx(5.1) and row["ci"] == pytest.approx(mean_ci([5.0, 5.2, 5.1])[1])


def test_verdict_reference_on_good_side_needs_no_test():
    data = frame({0: [3.0, 3.1], 0.5: [5.0, 5.2], 1.0: [6.0, 6.1]})
    v = compute_verdict(data, spec(reference_bad=False))
    assert v.status == "supported" and "No t-test needed" in v.text
    # a hypothesis that says the reference collapses is not supported when it did not
    v = compute_verdict(data, spec())
    assert v.status == "inconclusive" and "2/2 reference runs are on the good side" in v.text


def test_verdict_refuted_by_majority_on_bad_side():
    v = compute_verdict(frame({0: [1.0, 1.1, 1.2], 0.5: [1.0, 1.1, 5.0], 1.0: [6.0, 6.1, 6.3]}), spec())
    assert v.status == "refuted"
    assert v.table.set_index("value").loc[0.5, "result"] == "bad"


def test_verdict_refuted_without_threshold_when_significantly_worse():
    data = frame({0: [5.0, 5.1, 5.2], 0.5: [1.0, 1.1, 1.2], 1.0: [5.5, 5.6, 5.7]})
    assert compute_verdict(data, spec(threshold=None)).status == "refuted"
    assert compute_verdict(data, spec(threshold=None, claim=[1.0])).status == "supported"
    lower = compute_verdict(data, spec(threshold=None, claim=[0.5], better="lower"))
    assert lower.status == "supported" and "lower is better" in lower.text


def test_verdict_inconclusive_when_not_significant():
    v = compute_verdict(frame({0: [1.5, 2.5, 1.0], 0.5: [2.1, 2.2, 2.6], 1.0: [2.1, 2.3, 2.5]}), spec())
    assert v.status == "inconclusive"
    assert (v.table["result"].iloc[1:] == "unclear").all()


def test_verdict_small_groups():
    # n < 2: no test; unanimous threshold split with the reference all on the bad side decides
    v = compute_verdict(frame({0: [1.0], 0.5: [5.0], 1.0: [6.0]}), spec())
    assert v.status == "supported" and "n < 2" in v.text and "threshold alone decides" in v.text
    # n < 2 and the reference is mixed: cannot be decided
    v = compute_verdict(frame({0: [1.0, 3.0], 0.5: [5.0], 1.0: [6.0, 6.5]}), spec())
    assert v.status == "inconclusive" and "no t-test for 0.5" in v.text
    assert math.isnan(v.table.iloc[1]["p"])
    # a missing claim value keeps it inconclusive
    v = compute_verdict(frame({0: [1.0, 1.1], 0.5: [5.0, 5.1]}), spec())
    assert v.status == "inconclusive" and "no finished runs at x 1" in v.text


def test_verdict_no_data_and_filters():
    assert compute_verdict(pd.DataFrame(), spec()).status == "no data"
    data = frame({0: [1.0, 1.1], 0.5: [5.0, 5.1], 1.0: [6.0, 6.1]})
    assert compute_verdict(data, spec(metric="other")).status == "no data"
    assert compute_verdict(data, spec(within={"mode": "b"})).status == "no data"
    assert compute_verdict(data, spec(within={"missing.field": 1})).status == "no data"
    assert compute_verdict(data, spec(within={"mode": "a"})).status == "supported"
    diverged = frame({0.5: [0.1, 0.1], 1.0: [0.1, 0.1]}, status="diverged")
    v = compute_verdict(pd.concat([frame({0: [1.0, 1.1]}), diverged], ignore_index=True), spec())
    assert v.status == "no data"
    # unfinished runs are left out and counted
    mixed = pd.concat([data, frame({0.5: [0.1]}, status="diverged")], ignore_index=True)
    v = compute_verdict(mixed, spec())
    assert v.status == "supported" and "1 unfinished run left out" in v.text
    assert v.table.set_index("value").loc[0.5, "excluded"] == 1


def test_image_use_and_cell_table():
    rows = []
    for ratio, gap in [(0, None), (0.5, 0.05), (1.0, 0.001)]:
        for seed in (0, 1):
            row = {"cell": f"r={ratio}", "seed": seed, "status": "finished", "data.text_ratio": ratio, "m": seed + ratio}
            if gap is not None:
                row["text/image_use_gap"] = gap
            rows.append(row)
    rows.append({"cell": "r=2", "seed": 0, "status": "diverged", "data.text_ratio": 0.7, "m": 1.0})
    runs = pd.DataFrame(rows)
    use = image_use(runs, spec())
    assert list(use["used"]) == ["no text", "yes", "no", "not recorded"]
    assert use["gap"].iloc[1] == pytest.approx(0.05)
    table = cell_table(runs, ["m", "absent"])
    assert list(table["cell"]) == ["r=0", "r=0.5", "r=1.0", "r=2"]
    assert list(table["n"]) == [2, 2, 2, 0] and list(table["runs"]) == [2, 2, 2, 1]
    mean, ci = mean_ci([0.5, 1.5])
    assert table["m mean"].iloc[1] == pytest.approx(mean) and table["m ci"].iloc[1] == pytest.approx(ci)
    assert np.isnan(table["absent mean"]).all() and np.isnan(table["m mean"].iloc[3])


# ----------------------------------------------------------------------------- report


EXPECTED_PAGES = 6  # title, verdict, cell table, report metrics (6 panels), curves, alignment


def test_report_pdf(reports, store):
    result, _ = reports
    assert result.path.exists() and result.verdict.status == "supported"
    reader = PdfReader(result.path)
    assert len(reader.pages) == EXPECTED_PAGES
    text = subprocess.run(["pdftotext", "-layout", str(result.path), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert QUESTION in " ".join(text.split())
    assert "supported" in text
    assert cell_key(0.5, "same_pass") in text
    assert "duplicates removed: 1" in text
    assert "no text" in text and "yes" in text  # the image-use table


def test_report_renders_every_page(reports, tmp_path):
    result, _ = reports
    done = subprocess.run(["pdftoppm", "-png", "-r", "40", str(result.path), str(tmp_path / "page")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(list(tmp_path.glob("page*.png"))) == EXPECTED_PAGES


def test_report_is_byte_identical(reports):
    first, second = reports
    assert first.path.read_bytes() == second.path.read_bytes()


def test_report_logged_to_parent(reports, store):
    assert "report/report.pdf" in tracking.list_artifacts(store["uri"], store["parent"])
    assert tracking.get_run(store["uri"], store["parent"]).info.status == "RUNNING"


def test_report_without_runs(store, tmp_path):
    result = write_report(sweep_spec(), "full", EMPTY_STUDY, store["uri"], tmp_path / "empty.pdf", "test")
    assert result.verdict.status == "no data"
    assert len(PdfReader(result.path).pages) == EXPECTED_PAGES
    text = subprocess.run(["pdftotext", str(result.path), "-"], capture_output=True, text=True).stdout
    assert "not recorded" in text and "no data" in text
