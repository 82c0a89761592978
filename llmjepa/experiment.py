"""One tracked run: a tracker around `train.run`, the spec and curves as artifacts, a final status.

Used by `llmjepa train` and by every sweep worker, so a single run and a sweep trial are
recorded the same way. MLflow statuses: finished -> FINISHED, diverged -> FAILED (tag
`llmjepa.status=diverged` with the reason), pruned -> KILLED.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import yaml

from llmjepa import plots, tracking
from llmjepa.specs import ExperimentSpec
from llmjepa.train import RunResult, run

MLFLOW_STATUS = {"finished": "FINISHED", "diverged": "FAILED", "pruned": "KILLED"}


def open_tracker(
    spec: ExperimentSpec,
    experiment_id: str | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict | None = None,
):
    t = spec.tracking
    if not t.enabled:
        return tracking.NullTracker()
    uri = tracking.absolute_uri(t.uri)
    if experiment_id is None:
        experiment_id = tracking.prepare(uri, t.experiment, t.artifact_root)
    return tracking.MlflowTracker(
        uri, experiment_id, run_name=run_name or spec.name, parent_run_id=parent_run_id,
        flush_every=t.flush_every, tags=tags,
    )


def run_tracked(
    spec: ExperimentSpec,
    experiment_id: str | None = None,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    tags: dict | None = None,
    callback: Callable[[int, dict], None] | None = None,
    progress: Callable[[int, dict], None] | None = None,
    checkpoint: str | Path | None = None,
    on_start: Callable[[str | None], None] | None = None,
) -> RunResult:
    """Train `spec` inside a tracked run; any exception ends the run FAILED and propagates,
    KeyboardInterrupt ends it KILLED."""
    tracker = open_tracker(spec, experiment_id, parent_run_id, run_name, tags)
    if on_start is not None:
        on_start(tracker.run_id)
    try:
        tracker.log_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")
        result = run(spec, tracker, callback=callback, progress=progress, checkpoint=checkpoint)
        if result.history:
            fig = plots.training_curves(result.history, spec)
            tracker.log_figure(fig, "curves.png")
            plots.close(fig)
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end(MLFLOW_STATUS[result.status])
    return result
