"""Tests for llmjepa.specs: file:line errors, overrides, validators, hashing, flattening, descriptions."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmjepa.specs import ExperimentSpec, SpecError, describe, flatten, load_experiment, spec_hash

BAD = """\
name: bad
model:
  dim: 32
  depht: 2
train:
  steps: many
  lr: -1
"""

GOOD = """\
name: good
model:
  dim: 32
  depth: 2
  heads: 2
train:
  steps: 10
  lr: 0.002
tracking:
  uri: sqlite:///somewhere/mlflow.db
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def spec_error(*args) -> str:
    with pytest.raises(SpecError) as info:
        load_experiment(*args)
    return str(info.value)


# ----------------------------------------------------------------------------- file errors


def test_bad_yaml_names_file_line_and_field(tmp_path):
    path = write(tmp_path, "bad.yaml", BAD)
    msg = spec_error(path)
    lines = msg.splitlines()
    assert len(lines) == 3, msg
    assert f"{path}:4: model.depht:" in lines[0]  # misspelt
    assert f"{path}:6: train.steps:" in lines[1] and "integer" in lines[1]  # wrong type
    assert f"{path}:7: train.lr:" in lines[2] and "greater than 0" in lines[2]  # out of range


def test_cli_bad_spec_exits_2_with_file_line_and_writes_nothing(tmp_path):
    write(tmp_path, "bad.yaml", BAD)
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, "-m", "llmjepa.cli", "train", "bad.yaml"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    text = proc.stdout + proc.stderr
    for needle in ("bad.yaml:4: model.depht", "bad.yaml:6: train.steps", "bad.yaml:7: train.lr"):
        assert needle in text
    assert "Traceback" not in text
    assert not (tmp_path / "runs").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_invalid_yaml_reports_line(tmp_path):
    path = write(tmp_path, "syntax.yaml", "name: x\nmodel:\n  dim: 32\n depth: 2\n")
    msg = spec_error(path)
    assert msg.startswith(f"{path}:4:") and "not valid YAML" in msg


def test_spec_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "list.yaml", "- 1\n- 2\n")
    assert spec_error(path).startswith(f"{path}:1:")


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = spec_error(path)
    assert str(path) in msg and "no such" in msg


def test_cli_missing_file_exits_2(tmp_path):
    from typer.testing import CliRunner

    from llmjepa.cli import app

    result = CliRunner().invoke(app, ["show", str(tmp_path / "nope.yaml")], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "nope.yaml" in result.output


def test_good_file_with_overrides(tmp_path):
    path = write(tmp_path, "good.yaml", GOOD)
    spec = load_experiment(path, ["train.lr=0.01"])
    assert spec.name == "good" and spec.model.depth == 2 and spec.train.steps == 10
    assert spec.train.lr == 0.01  # the override wins over the file
    assert spec.objective.jepa_weight == ExperimentSpec().objective.jepa_weight  # untouched default


# ----------------------------------------------------------------------------- overrides


def test_set_overrides_nested_values_and_tuples():
    spec = load_experiment(None, [
        "objective.jepa_weight=0.1", "model.depth=2", "objective.target_mode=stopgrad",
        "masks.target_scale=[0.1,0.2]", "train.betas=[0.8, 0.9]", "name=run-a",
    ])
    assert spec.objective.jepa_weight == 0.1
    assert spec.model.depth == 2
    assert spec.objective.target_mode == "stopgrad"
    assert spec.masks.target_scale == (0.1, 0.2)
    assert spec.train.betas == (0.8, 0.9)
    assert spec.name == "run-a"


def test_bad_override_names_set_and_field(tmp_path):
    msg = spec_error(None, ["train.lr=-1"])
    assert msg.startswith("--set: train.lr:")
    msg = spec_error(None, ["train.lrr=1"])
    assert msg.startswith("--set: train.lrr:")
    msg = spec_error(None, ["masks.target_scale=[0.3,0.1]"])
    assert msg.startswith("--set: masks.target_scale:")
    # an element inside an overridden value is still the override's fault, not the file's
    path = write(tmp_path, "good.yaml", GOOD + "  betas: [0.9, 0.95]\n")
    msg = spec_error(path, ["train.betas=[0.9,x]"])
    assert msg.startswith("--set: train.betas.1:"), msg


def test_override_of_non_section_fails_clearly(tmp_path):
    msg = spec_error(write(tmp_path, "good.yaml", GOOD), ["name.x=1"])
    assert "name.x=1" in msg and "not a section" in msg
    msg = spec_error(None, ["model.dim.x=1"])  # dim is a leaf even among the defaults
    assert msg.startswith("--set: model.dim:"), msg
    msg = spec_error(None, ["name.x=1"])
    assert msg.startswith("--set: name:"), msg
    msg = spec_error(None, ["train=5"])
    assert msg.startswith("--set: train:"), msg


def test_override_without_equals():
    assert "key.path=value" in spec_error(None, ["train.lr"])


# ----------------------------------------------------------------------------- validators


def test_model_dim_must_divide_by_heads(tmp_path):
    msg = spec_error(None, ["model.dim=30", "model.heads=4"])
    assert "model" in msg and "not divisible by heads" in msg
    path = write(tmp_path, "heads.yaml", "name: x\nmodel:\n  dim: 30\n  heads: 4\n")
    assert spec_error(path).startswith(f"{path}:2: model:")  # the section's line
    assert "even for RoPE" in spec_error(None, ["model.dim=36", "model.heads=4"])
    assert "not divisible" in spec_error(None, ["predictor.dim=30", "predictor.heads=4"])


def test_target_layer_range():
    depth = 3
    for ok in (-depth - 1, -1, 0, depth):
        assert load_experiment(None, [f"model.depth={depth}", f"objective.target_layer={ok}"])
    for bad in (depth + 1, -depth - 2):
        msg = spec_error(None, [f"model.depth={depth}", f"objective.target_layer={bad}"])
        assert "objective.target_layer" in msg and "outside" in msg


def test_image_size_must_divide_by_patch_size():
    msg = spec_error(None, ["data.image_size=30", "data.patch_size=4"])
    assert "data" in msg and "not divisible by patch_size" in msg
    assert load_experiment(None, ["data.image_size=30", "data.patch_size=5"]).data.grid == 6
    assert "min_objects" in spec_error(None, ["data.min_objects=3", "data.max_objects=2"])


# ----------------------------------------------------------------------------- hash, flatten, describe


def test_spec_hash_stable_and_ignores_tracking(tmp_path):
    path = write(tmp_path, "good.yaml", GOOD)
    a, b = load_experiment(path), load_experiment(path)
    assert spec_hash(a) == spec_hash(b)
    assert len(spec_hash(a)) == 12
    assert spec_hash(load_experiment(path, ["train.lr=0.003"])) != spec_hash(a)
    assert spec_hash(load_experiment(path, ["train.seed=1"])) != spec_hash(a)
    same = load_experiment(path, ["tracking.uri=sqlite:///elsewhere.db", "tracking.enabled=false"])
    assert spec_hash(same) == spec_hash(a)


def test_flatten_has_a_dotted_key_per_leaf():
    spec = load_experiment(None, ["masks.target_scale=[0.1,0.2]"])
    flat = flatten(spec)
    assert flat["objective.jepa_weight"] == spec.objective.jepa_weight
    assert flat["model.dim"] == spec.model.dim
    assert flat["masks.target_scale"] == [0.1, 0.2]
    assert flat["name"] == spec.name
    assert not any(isinstance(v, dict) for v in flat.values())
    assert set(flat) == {key for key, _, _ in describe()}  # every leaf, nothing else


def test_describe_covers_every_field_with_a_description():
    rows = describe()
    keys = [k for k, _, _ in rows]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(flatten(ExperimentSpec()))
    empty = [k for k, _, desc in rows if not desc.strip()]
    assert not empty, f"fields without a description: {empty}"
    row = dict((k, (d, desc)) for k, d, desc in rows)
    assert row["objective.target_mode"][0] == repr("same_pass")
    assert "EMA" in row["objective.target_mode"][1]
