"""Typed experiment specs: every default lives here, with a description per field.

Owns loading from YAML (errors name the file, the line and the field), dotted overrides
(`--set objective.jepa_weight=0.1`), flattening for tracking and a stable spec hash.
Does not know about models, data or tracking backends.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class SpecError(ValueError):
    """A spec that cannot be used: names the file, the line, the field and the reason."""


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(Spec):
    dim: int = Field(96, gt=0, description="Width D of the transformer.")
    depth: int = Field(4, gt=0, description="Number of transformer blocks L.")
    heads: int = Field(4, gt=0, description="Attention heads; dim must divide by it.")
    mlp_ratio: float = Field(4.0, gt=0, description="Hidden width of the MLP as a multiple of dim.")
    rope_base: float = Field(10000.0, gt=0, description="RoPE base over the logical 1-D positions.")
    attention: Literal["sdpa", "flex"] = Field(
        "sdpa", description="sdpa: dense boolean mask (CPU and GPU); flex: FlexAttention mask_mod (GPU only)."
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelSpec":
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if (self.dim // self.heads) % 2:
            raise ValueError("dim / heads must be even for RoPE")
        return self


class PredictorSpec(Spec):
    dim: int = Field(64, gt=0, description="Width of the narrow predictor g_phi.")
    depth: int = Field(2, gt=0, description="Transformer blocks in the predictor.")
    heads: int = Field(4, gt=0, description="Attention heads in the predictor.")

    @model_validator(mode="after")
    def _heads_divide(self) -> "PredictorSpec":
        if self.dim % self.heads:
            raise ValueError(f"predictor dim {self.dim} is not divisible by heads {self.heads}")
        return self


class DataSpec(Spec):
    source: Literal["shapes", "digits"] = Field(
        "shapes", description="shapes: the generated world; digits: scikit-learn's bundled 8x8 digits upscaled."
    )
    image_size: int = Field(32, gt=0, description="Side of a square image in pixels.")
    patch_size: int = Field(4, gt=0, description="Side of a square image patch in pixels.")
    min_objects: int = Field(1, ge=1, le=3, description="Fewest objects in a scene.")
    max_objects: int = Field(2, ge=1, le=3, description="Most objects in a scene.")
    background_noise: float = Field(
        0.15, ge=0, le=1, description="Amplitude of the textured nuisance background (JEPA should ignore it)."
    )
    text_ratio: float = Field(
        1.0, ge=0, le=1, description="Fraction of examples whose images come with text (0: images only)."
    )
    text_relevance: Literal["related", "unrelated"] = Field(
        "related", description="related: text about the image; unrelated: text about nothing in it (control)."
    )
    text_kind: Literal["caption", "qa", "mixed"] = Field(
        "mixed", description="caption: a description; qa: a question and its answer; mixed: either."
    )
    pair_ratio: float = Field(
        0.0, ge=0, le=1, description="Fraction of examples holding two images and text comparing them."
    )
    batch_size: int = Field(16, gt=0, description="Examples per training batch.")
    modality: Literal["image", "video", "audio_video"] = Field(
        "image", description="image; video (clips as tubelets of 2 frames); audio_video (clips with their sound)."
    )
    frames: int = Field(8, ge=2, description="Video frames per clip (even: tubelets span 2 frames).")
    n_mels: int = Field(16, gt=0, description="Mel bands of the audio log-mel spectrogram.")
    mel_patch: int = Field(4, gt=0, description="Mel bands per audio patch.")
    spec_per_frame: int = Field(
        2, gt=0, description="Spectrogram frames per video frame (the hop aligns them); an audio patch spans "
        "one tubelet in time (2 video frames)."
    )
    av_variant: Literal[1, 2] = Field(
        1, description="1: [vid ctx][vid tgt][aud ctx][aud tgt], the audio context sees the video target; "
        "2: [vid ctx][aud ctx][vid tgt][aud tgt] with cross-modal pairs."
    )
    within_pairs: bool = Field(
        True, description="Variant 2 also predicts video from video and audio from audio (the cross pairs always)."
    )
    av_positions: Literal["shared_time", "separate"] = Field(
        "separate", description="shared_time: audio at time t takes the video's 1-D positions of time t; "
        "separate: audio's positions follow the video's."
    )

    @model_validator(mode="after")
    def _checks(self) -> "DataSpec":
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.min_objects > self.max_objects:
            raise ValueError("min_objects exceeds max_objects")
        if self.frames % 2:
            raise ValueError(f"frames must be even (tubelets of 2 frames), got {self.frames}")
        if self.n_mels % self.mel_patch:
            raise ValueError(f"n_mels {self.n_mels} is not divisible by mel_patch {self.mel_patch}")
        if self.modality != "image" and self.pair_ratio > 0:
            raise ValueError("pair_ratio (comparison text) exists for images only")
        return self

    @property
    def audio_grid(self) -> tuple[int, int]:
        """(time patches, mel patches) of a clip's spectrogram: one time patch per tubelet."""
        return self.frames // 2, self.n_mels // self.mel_patch

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


class MaskSpec(Spec):
    num_targets: int = Field(2, ge=1, description="Target blocks per media item (I-JEPA uses 4 on 14x14 grids).")
    target_scale: tuple[float, float] = Field((0.15, 0.2), description="Area of one target block as a fraction.")
    target_aspect: tuple[float, float] = Field((0.75, 1.5), description="Aspect ratio h/w of a target block.")
    context_scale: tuple[float, float] = Field(
        (0.85, 1.0), description="Area of the context block before targets are cut out of it."
    )
    context_schedule: Literal["constant", "linear_up", "linear_down", "cosine", "random"] = Field(
        "constant",
        description="How the context scale moves over training: constant (context_scale), linear_up, "
        "linear_down, cosine (one cycle large-small-large) or random per batch, within schedule_span.",
    )
    schedule_span: tuple[float, float] = Field(
        (0.3, 1.0), description="Smallest and largest context scale a non-constant schedule visits."
    )
    min_context: int = Field(4, ge=1, description="Fewest context patches; resampled below it.")
    num_contexts: int = Field(1, ge=1, description="Context copies of one item in a row (one target copy).")
    share_positions: bool = Field(
        True, description="Context tokens reuse the 1-D positions of the patches they copy (the article's rule)."
    )

    @field_validator("target_scale", "target_aspect", "context_scale", "schedule_span")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi:
            raise ValueError(f"range must satisfy 0 < low <= high, got {v}")
        return v


class ObjectiveSpec(Spec):
    ce_weight: float = Field(1.0, ge=0, description="Weight of next-token cross-entropy on text.")
    jepa_weight: float = Field(1.0, ge=0, description="Weight of the JEPA latent prediction loss.")
    distance: Literal["l1", "cosine", "smooth_l1"] = Field("l1", description="D in the JEPA loss.")
    target_norm: Literal["layernorm", "none"] = Field(
        "layernorm", description="T on target states: LayerNorm without affine, or none."
    )
    target_mode: Literal["same_pass", "stopgrad", "ema"] = Field(
        "same_pass",
        description="same_pass: gradients through both copies (the article); stopgrad: targets detached; "
        "ema: targets from an EMA copy of the model (I-JEPA baseline).",
    )
    target_layer: int = Field(-1, description="Block whose output is the target (-1: last; 0: embeddings).")
    ema_momentum: tuple[float, float] = Field((0.996, 1.0), description="EMA momentum ramp, start to end.")
    sigreg_weight: float = Field(0.0, ge=0, description="Weight of the SIGReg regulariser (LeJEPA); 0 is off.")
    sigreg_slices: int = Field(64, gt=0, description="Random 1-D projections per SIGReg evaluation.")


class TrainSpec(Spec):
    steps: int = Field(300, ge=0, description="Optimizer steps.")
    lr: float = Field(1e-3, gt=0, description="Peak AdamW learning rate.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final learning rate as a fraction of the peak.")
    warmup: int = Field(20, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW decay on matrices (never on 1-D parameters).")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    grad_clip: float = Field(1.0, ge=0, description="Global gradient-norm clip; 0 is off.")
    seed: int = Field(0, description="Seed for data, masks and initialisation.")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's choice.")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="Where the run trains.")
    checkpoint_every: int = Field(0, ge=0, description="Steps between checkpoints; 0 writes only the last.")
    log_every: int = Field(10, gt=0, description="Steps between logged training metrics.")
    grad_norm_every: int = Field(
        50, ge=0, description="Steps between per-term gradient norms (an extra backward per term); 0 is off."
    )


class EvalSpec(Spec):
    every: int = Field(50, gt=0, description="Steps between collapse-metric evaluations (step 0 and last always).")
    probe_every: int = Field(
        300, gt=0, description="Steps between probe/alignment evaluations (step 0 and last always; each costs "
        "about 4 s here, so a short run keeps evaluation near 15 % of its wall time)."
    )
    collapse_size: int = Field(256, gt=1, description="Held-out images used for collapse metrics.")
    probe_train: int = Field(512, gt=1, description="Held-out images the probes are fitted on.")
    probe_test: int = Field(384, gt=1, description="Held-out images the probes are scored on (+-0.025 at 384).")
    text_size: int = Field(
        256, gt=1, description="Test images (a prefix of the probe test set) scored for caption CE, "
        "the image-use gap and retrieval."
    )
    ridge: float = Field(1e-2, gt=0, description="Ridge penalty of the linear probe (on standardised features).")
    attentive_steps: int = Field(100, ge=0, description="Adam steps of the attentive probe; 0 is off.")
    knn: int = Field(10, gt=0, description="k of the mutual-kNN alignment.")
    batch_size: int = Field(128, gt=0, description="Evaluation batch size.")
    seed: int = Field(12345, description="Seed of the held-out probe set (fixed across runs).")
    partial: list[float] = Field(
        default_factory=list,
        description="Fractions of each item shown at evaluation (e.g. [0.25, 0.5]): probe accuracy and text CE "
        "on partial items, the inference side of dynamic compute. Empty: off.",
    )

    resolutions: list[float] = Field(
        default_factory=list,
        description="Image resolutions shown at evaluation as a fraction of the side (e.g. [0.5]: 2x2 average "
        "pooling, a quarter of the tokens, coordinates kept on the full grid): probes and text CE. Empty: off.",
    )

    @field_validator("partial", "resolutions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in v):
            raise ValueError(f"fractions must lie in (0, 1], got {v}")
        return v


class CollapseSpec(Spec):
    rankme_min: float = Field(
        2.0, gt=0, description="Collapsed if the uncentred RankMe of pooled target states falls below this."
    )
    ln_std_min: float = Field(
        0.05, ge=0, description="Collapsed if the mean per-dimension std after LayerNorm falls below this."
    )


class TrackingSpec(Spec):
    enabled: bool = Field(True, description="Record the run in MLflow; off uses a null tracker.")
    uri: str = Field("sqlite:///runs/mlflow.db", description="MLflow tracking URI.")
    experiment: str = Field("llmjepa", description="MLflow experiment for single runs.")
    artifact_root: str = Field("runs/artifacts", description="Artifact folder for experiments this tool creates.")
    flush_every: int = Field(100, gt=0, description="Buffered metric values sent per MLflow batch.")


class ExperimentSpec(Spec):
    name: str = Field("default", description="Name of the experiment.")
    model: ModelSpec = Field(default_factory=ModelSpec)
    predictor: PredictorSpec = Field(default_factory=PredictorSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    masks: MaskSpec = Field(default_factory=MaskSpec)
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    collapse: CollapseSpec = Field(default_factory=CollapseSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)

    @model_validator(mode="after")
    def _layer(self) -> "ExperimentSpec":
        L = self.model.depth
        if not -L - 1 <= self.objective.target_layer <= L:
            raise ValueError(f"objective.target_layer {self.objective.target_layer} outside [-{L + 1}, {L}]")
        return self


# ----------------------------------------------------------------------------- loading


def _line_index(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map each key path in a composed YAML document to its 1-based line."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            p = path + (key.value,)
            out[p] = key.start_mark.line + 1
            _line_index(value, p, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            out[path + (i,)] = value.start_mark.line + 1
            _line_index(value, path + (i,), out)
    return out


def read_yaml(path: str | Path) -> tuple[dict, dict[tuple, int]]:
    """Read a YAML mapping and its key-to-line index; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise SpecError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}:1: the spec must be a mapping of fields, got {type(data).__name__}")
    return data, _line_index(node) if node is not None else {}


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise SpecError(f"override {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...] | None) -> dict:
    """Return a copy of `data` with dotted `key=value` overrides applied (values parsed as YAML)."""
    data = json.loads(json.dumps(data))
    for item in overrides or ():
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise SpecError(f"override {item!r}: {k} is not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def format_errors(err: ValidationError, source: str, lines: dict[tuple, int], overrides=()) -> str:
    parts = []
    overridden = {tuple(parse_override(o)[0]) for o in overrides or ()}
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-after")))
        field = ".".join(str(x) for x in loc) or "(spec)"
        parts.append(f"{_origin(loc, source, lines, overridden)}: {field}: {e['msg']}")
    return "\n".join(parts)


def _origin(loc: tuple, source: str, lines: dict[tuple, int], overridden: set[tuple]) -> str:
    """Where the bad value came from: --set, the file's line of the field (or its section), or the source."""
    if any(loc[: len(o)] == o for o in overridden):  # set by an override, or inside an overridden value
        return "--set"
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return f"{source}:{lines[loc[:n]]}"
    if loc and any(o[: len(loc)] == loc for o in overridden):  # an override made this field a section
        return "--set"
    return source


def validate(cls: type[Spec], data: dict, source: str, lines: dict | None = None, overrides=()) -> Spec:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise SpecError(format_errors(e, source, lines or {}, overrides)) from None


def load_experiment(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentSpec:
    """Load an experiment spec from YAML (or the defaults when path is None) with overrides."""
    data, lines = read_yaml(path) if path is not None else ({}, {})
    data = apply_overrides(data, overrides)
    return validate(ExperimentSpec, data, str(path or "<defaults>"), lines, overrides)


def flatten(spec: Spec | dict, prefix: str = "") -> dict[str, Any]:
    """Flatten a spec to dotted keys (`objective.jepa_weight`) for params and tables."""
    data = spec.model_dump(mode="json") if isinstance(spec, BaseModel) else spec
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def spec_hash(spec: Spec, length: int = 12) -> str:
    """Stable hash of the spec's content, independent of tracking settings."""
    data = spec.model_dump(mode="json")
    data.pop("tracking", None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def describe(cls: type[Spec] = ExperimentSpec, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted field, default, description) for every field, for `llmjepa show` and docs."""
    rows = []
    for name, f in cls.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, Spec):
            rows += describe(ann, f"{prefix}{name}.")
        else:
            default = f.get_default(call_default_factory=True)
            rows.append((f"{prefix}{name}", repr(default), f.description or ""))
    return rows


# ----------------------------------------------------------------------------- sweeps


class Distribution(Spec):
    """An Optuna distribution for a tuned field."""

    type: Literal["float", "int", "categorical"] = Field(description="Kind of distribution.")
    low: float | None = Field(None, description="Lower bound (float, int).")
    high: float | None = Field(None, description="Upper bound (float, int).")
    log: bool = Field(False, description="Sample on a log scale.")
    choices: list[Any] | None = Field(None, description="Values of a categorical.")

    @model_validator(mode="after")
    def _complete(self) -> "Distribution":
        if self.type == "categorical" and not self.choices:
            raise ValueError("a categorical needs choices")
        if self.type != "categorical" and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError(f"a {self.type} distribution needs low <= high")
        return self


class Objective(Spec):
    metric: str = Field(description="Metric key of the trial's final evaluation, e.g. probe/acc/mean/image/L4.")
    direction: Literal["maximize", "minimize"] = Field("maximize", description="Which way is better.")


class PrunerSpec(Spec):
    kind: Literal["none", "collapse", "median"] = Field(
        "none", description="none; collapse: stop collapsed trials; median: collapse plus Optuna's median rule."
    )
    after: int = Field(50, ge=0, description="No pruning before this step.")


class Budget(Spec):
    seeds: list[int] | None = Field(None, description="Seeds for this budget (replaces the sweep's).")
    axes: dict[str, list[Any]] | None = Field(None, description="Axis values for this budget (replace the sweep's).")
    extra_cells: list[dict[str, Any]] | None = Field(None, description="Extra cells for this budget.")
    trials: int | None = Field(None, gt=0, description="Trials for a TPE sweep.")
    set: dict[str, Any] = Field(default_factory=dict, description="Overrides for every trial under this budget.")


class VerdictSpec(Spec):
    """How the report decides the hypothesis from the data, stated before the data exist."""

    metric: str = Field(description="The metric the hypothesis is about.")
    axis: str = Field(description="The swept field whose effect is tested.")
    reference: Any = Field(description="The axis value every other value is tested against.")
    claim: list[Any] = Field(description="Axis values the hypothesis says are on the good side.")
    threshold: float | None = Field(None, description="Good side boundary of the metric (e.g. the collapse line).")
    better: Literal["higher", "lower"] = Field("higher", description="Which side of the threshold is good.")
    reference_bad: bool = Field(
        True, description="The hypothesis also says the reference is on the bad side of the threshold (e.g. "
        "collapses); if most reference runs are on the good side the verdict cannot be 'supported'."
    )
    within: dict[str, Any] = Field(default_factory=dict, description="Only cells with these values count.")
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of the Welch t-tests.")
    gap_metric: str | None = Field(
        "text/image_use_gap", description="Metric telling whether text used the image (per cell in the report)."
    )
    gap_min: float = Field(0.02, description="Smallest gap (nats per byte) that counts as the text using the image.")


class SweepSpec(Spec):
    name: str = Field(description="Short name; also the study and MLflow experiment name.")
    question: str = Field(description="The open question, in a sentence.")
    hypothesis: str = Field(description="What the sweep expects to find, stated before it runs.")
    base: str | None = Field(None, description="Experiment YAML the trials start from (relative to the sweep file).")
    set: dict[str, Any] = Field(default_factory=dict, description="Overrides of the base for every trial.")
    sampler: Literal["grid", "tpe"] = Field("grid", description="grid: every cell x seed once; tpe: tuning.")
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="Grid axes: dotted field -> values.")
    extra_cells: list[dict[str, Any]] = Field(
        default_factory=list, description="Cells beyond the full grid (controls), as dotted field -> value."
    )
    search: dict[str, Distribution] = Field(default_factory=dict, description="TPE search space.")
    seeds: list[int] = Field(default_factory=lambda: [0], description="Seeds per cell.")
    objectives: list[Objective] = Field(min_length=1, description="Metrics Optuna records, with directions.")
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    budgets: dict[str, Budget] = Field(default_factory=dict, description="Named budgets, e.g. quick and full.")
    verdict: VerdictSpec | None = Field(None, description="How the report turns the data into a verdict.")
    report_metrics: list[str] = Field(
        default_factory=lambda: [
            "collapse/rankme/image/target", "collapse/erank/image/target", "collapse/ln_std_mean/image/target",
            "collapse/rms/image/target", "probe/acc/mean/image/L4", "text/image_use_gap",
        ],
        description="Metrics tabulated per cell in the report.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "SweepSpec":
        if self.sampler == "grid" and not self.axes and not self.extra_cells:
            raise ValueError("a grid sweep needs axes or extra_cells")
        if self.sampler == "tpe" and not self.search:
            raise ValueError("a tpe sweep needs a search space")
        for name, values in self.axes.items():
            if not values:
                raise ValueError(f"axis {name} has no values")
        return self
