"""The `llmjepa` command: train, show, sweep, worker, sweeps, status, report, ui, bench.

Thin: parses arguments, turns spec errors into exit code 2 with the file, line and field, and
hands work to the modules that own it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from llmjepa.specs import SpecError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="JEPA inside a multimodal LM, as experiments.")
console = Console(stderr=True)
out = Console()

ROOT = Path(__file__).resolve().parent.parent
SetOpt = typer.Option(None, "--set", "-s", help="Dotted override, e.g. --set objective.jepa_weight=0.1 (repeatable).")


def fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def resolve_config(spec: Optional[str]) -> Optional[Path]:
    """A path, or a name under configs/ (`default` -> configs/default.yaml); None: defaults."""
    if spec is None:
        return None
    p = Path(spec)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    for base in (Path.cwd() / "configs", ROOT / "configs"):
        if (base / f"{spec}.yaml").exists():
            return base / f"{spec}.yaml"
    return p


def load(spec: Optional[str], overrides: Optional[list[str]]):
    from llmjepa.specs import load_experiment

    try:
        return load_experiment(resolve_config(spec), overrides or [])
    except SpecError as e:
        fail(str(e))


@app.command()
def train(
    spec: Optional[str] = typer.Argument(None, help="Experiment YAML (path or name under configs/); defaults if omitted."),
    set_: Optional[list[str]] = SetOpt,
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint file: resumed from when it exists, written at the end."),
):
    """Train one experiment and record it in MLflow."""
    s = load(spec, set_)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from llmjepa.experiment import run_tracked

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
    ) as bar:
        task = bar.add_task(s.name, total=s.train.steps, info="")

        def progress(step, stats):
            info = " ".join(f"{k.split('/')[1]} {stats[k]:.3f}" for k in ("loss/ce/text", "loss/jepa/all") if k in stats)
            bar.update(task, completed=step, info=info)

        result = run_tracked(s, progress=progress, checkpoint=checkpoint)
    f = result.final
    keys = ["collapse/rankme/image/target", "collapse/erank/image/target", "collapse/ln_std_mean/image/target",
            f"probe/acc/mean/image/L{s.model.depth}", "text/image_use_gap", "time/eval_fraction"]
    summary = ", ".join(f"{k} = {f[k]:.4g}" for k in keys if k in f)
    out.print(f"{result.status} after {result.steps} steps in {result.wall_seconds:.1f} s; {summary}")
    if result.run_id:
        out.print(f"MLflow run {result.run_id} in {s.tracking.uri}")
    if result.status == "diverged":
        console.print(f"[yellow]diverged:[/] {result.reason}")
        raise typer.Exit(3)


@app.command()
def show(
    spec: Optional[str] = typer.Argument(None, help="Experiment YAML (path or name); defaults if omitted."),
    set_: Optional[list[str]] = SetOpt,
    fields: bool = typer.Option(False, "--fields", help="List every field with its default and description."),
):
    """Print the resolved spec, sequence lengths, parameters and FLOPs per step."""
    import yaml

    s = load(spec, set_)
    if fields:
        from llmjepa.specs import describe

        for key, default, desc in describe():
            out.print(f"[bold]{key}[/] = {default}\n    {desc}", highlight=False)
        return
    from llmjepa.data.layout import PAD
    from llmjepa.data.stream import Stream
    from llmjepa.model.transformer import flops_per_step
    from llmjepa.specs import spec_hash
    from llmjepa.train import build

    out.print(yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False), highlight=False)
    model, predictor = build(s)
    batch = Stream(s).batch(0)
    lengths = (batch.role != PAD).sum(1)
    n_model = sum(p.numel() for p in model.parameters())
    n_pred = sum(p.numel() for p in predictor.parameters())
    flops = flops_per_step(model, predictor, batch, s.objective.target_mode == "ema")
    out.print(f"spec hash            {spec_hash(s)}")
    out.print(f"sequence length      min {int(lengths.min())}, mean {float(lengths.float().mean()):.1f}, "
              f"max {int(lengths.max())} tokens (batch of {s.data.batch_size}, padded to {batch.shape[1]})")
    out.print(f"prediction pairs     {batch.pair_ctx.shape[0]} per batch, context up to {batch.pair_ctx.shape[1]} "
              f"patches, target up to {batch.pair_tgt.shape[1]}")
    out.print(f"parameters           model {n_model:,}, predictor {n_pred:,}")
    out.print(f"FLOPs per step       {flops / 1e9:.2f} GFLOP (forward + backward)")


StorageOpt = typer.Option("sqlite:///runs/optuna.db", "--storage", help="Optuna storage URL (SQLite file or postgresql+psycopg2://...).")
TrackingOpt = typer.Option("sqlite:///runs/mlflow.db", "--tracking-uri", help="MLflow tracking URI (SQLite store or http://server).")
BudgetOpt = typer.Option("quick", "--budget", "-b", help="Budget preset of the sweep file (quick, full, ...).")


def load_plan(name: str, budget: str):
    from llmjepa import sweep as sw

    try:
        return sw.plan(name, budget)
    except SpecError as e:
        fail(str(e))


@app.command()
def sweep(
    name: str = typer.Argument(..., help="Sweep name under sweeps/ or a path to a sweep YAML."),
    budget: str = BudgetOpt,
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Worker processes on this machine (they split the cores)."),
    storage: str = StorageOpt,
    tracking_uri: str = TrackingOpt,
    artifact_root: str = typer.Option("runs/artifacts", help="Artifact folder for a new MLflow experiment."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the cells, trial count and an estimated time, then exit."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write the PDF report when the sweep is complete."),
):
    """Run a sweep: one Optuna trial per (cell, seed), one MLflow child run per trial. Rerun to resume."""
    from llmjepa import sweep as sw

    p = load_plan(name, budget)
    if dry_run:
        _dry_run(p, workers)
        return
    from llmjepa.train import code_version

    try:
        setup = sw.prepare(p, storage, tracking_uri, artifact_root, code_version())
    except SpecError as e:
        fail(str(e))
    out.print(f"study {p.study_name}: {p.trials} trials, {workers} worker(s); storage {storage}; MLflow {tracking_uri}")
    try:
        c = sw.launch(p, setup, workers, storage, tracking_uri, console)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    out.print(f"done {c.done}/{c.total}: diverged {c.diverged}, pruned {c.pruned}, failed attempts {c.failed}")
    if c.missing:
        out.print(f"[yellow]{len(c.missing)} cell(s) incomplete[/]; run the same command again to resume:")
        reasons = sw.failure_reasons(setup.study)
        for m in c.missing[:20]:
            out.print(f"  {m}" + (f": {reasons[m]}" if m in reasons else ""), highlight=False)
        raise typer.Exit(1)
    if report:
        _report(p, tracking_uri, None)


def _dry_run(p, workers: int) -> None:
    from rich.table import Table

    from llmjepa.bench import train_step_stats

    table = Table(title=f"{p.sweep.name} ({p.budget}): {len(p.cells)} cells x {len(p.seeds)} seeds")
    keys = list(p.cells[0]) if p.cells else []
    for k in keys:
        table.add_column(k)
    for c in p.cells:
        table.add_row(*[str(c.get(k, "")) for k in keys])
    if keys:
        out.print(table)
    spec = p.spec_for(p.cells[0], p.seeds[0])
    threads = max(1, (os.cpu_count() or 1) // workers)
    step_s = train_step_stats(spec, threads, steps=3)["step_ms"] / 1e3  # the first cell's step, timed here
    per_trial = spec.train.steps * step_s / 0.85  # evaluation kept near 15 % of a run
    total = per_trial * p.trials / workers
    out.print(f"trials {p.trials} (sampler {p.sweep.sampler}); {spec.train.steps} steps each at ~{step_s * 1e3:.0f} ms "
              f"({threads} thread(s)); estimated {per_trial / 60:.1f} min per trial, ~{total / 60:.0f} min with "
              f"{workers} worker(s)")
    out.print(f"study name {p.study_name}")


@app.command()
def worker(
    name: str = typer.Argument(..., help="Sweep name or path (the same file as the launcher's)."),
    budget: str = BudgetOpt,
    storage: str = StorageOpt,
    tracking_uri: str = TrackingOpt,
    threads: int = typer.Option(0, help="torch threads per trial; 0 keeps torch's choice."),
):
    """Join a running sweep (from this or another machine) and run trials until none is left."""
    from llmjepa import sweep as sw

    p = load_plan(name, budget)
    try:
        code = sw.work(p, storage, tracking_uri, threads)
    except SpecError as e:
        fail(str(e))
    raise typer.Exit(code)


@app.command()
def sweeps():
    """List the questions (sweep files) with their hypotheses."""
    from llmjepa import sweep as sw

    try:
        found = sw.list_sweeps()
    except SpecError as e:
        fail(str(e))
    for path, s in found:
        budgets = ", ".join(s.budgets) or "default"
        out.print(f"[bold]{s.name}[/] ({s.sampler}; budgets {budgets})  {path}", highlight=False)
        out.print(f"  question:   {s.question}", highlight=False)
        out.print(f"  hypothesis: {s.hypothesis}", highlight=False)


@app.command()
def status(
    name: str = typer.Argument(..., help="Sweep name or path."),
    budget: str = BudgetOpt,
    storage: str = StorageOpt,
):
    """Trial counts per state and the cells still missing."""
    from llmjepa import sweep as sw

    p = load_plan(name, budget)
    try:
        study = sw.load_study(p, storage)
    except SpecError as e:
        fail(str(e))
    c = sw.counts(study, p)
    out.print(f"{p.study_name}: done {c.done}/{c.total}, running {c.running}, waiting {c.waiting}, "
              f"diverged {c.diverged}, pruned {c.pruned}, failed attempts {c.failed}")
    reasons = sw.failure_reasons(study)
    for m in c.missing:
        out.print(f"  missing: {m}" + (f" (last failure: {reasons[m]})" if m in reasons else ""), highlight=False)


@app.command()
def report(
    name: str = typer.Argument(..., help="Sweep name or path."),
    budget: str = BudgetOpt,
    tracking_uri: str = TrackingOpt,
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="PDF path (default reports/NAME.pdf)."),
):
    """Write the sweep's PDF report from what MLflow holds, with a verdict computed from the data."""
    p = load_plan(name, budget)
    _report(p, tracking_uri, output)


def _report(p, tracking_uri: str, output: Optional[Path]) -> None:
    from llmjepa.report import write_report
    from llmjepa.train import code_version

    from llmjepa.tracking import absolute_uri

    path = output or Path("reports") / f"{p.sweep.name}.pdf"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        res = write_report(p.sweep, p.budget, p.study_name, absolute_uri(tracking_uri), path, code_version())
    except LookupError as e:
        fail(str(e))
    if res.verdict is not None:
        out.print(f"verdict: {res.verdict.status}: {res.verdict.text}", highlight=False)
    out.print(f"report written to {res.path}")


@app.command()
def ui(
    tracking_uri: str = TrackingOpt,
    port: int = typer.Option(5000, help="Port on 127.0.0.1."),
):
    """Start the MLflow UI on 127.0.0.1 with the project's store."""
    from llmjepa.tracking import absolute_uri

    uri = absolute_uri(tracking_uri)
    out.print(f"MLflow UI for {uri} at http://127.0.0.1:{port} (Ctrl-C stops it)")
    os.execvp(sys.executable, [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                                "--host", "127.0.0.1", "--port", str(port)])


@app.command()
def bench(
    output: Path = typer.Option(Path("bench/results.json"), "-o", "--output", help="JSON file for the numbers."),
    steps: int = typer.Option(10, help="Timed repeats per measurement (after a warm-up)."),
    set_: Optional[list[str]] = SetOpt,
):
    """Measure step time, throughput, GFLOP/s, evaluation and logging cost; write them to a file."""
    from llmjepa.bench import run_bench

    try:
        res = run_bench(output, steps, set_ or [], log=lambda m: console.print(m))
    except SpecError as e:
        fail(str(e))
    for t in res["train"]:
        out.print(f"train {t['target_mode']:9s} {t['threads']} thread(s): {t['step_ms']:7.1f} ms/step  "
                  f"{t['tokens_per_s']:8.0f} tokens/s  {t['gflops_per_s']:5.1f} GFLOP/s")
    a, e, lg = res["attention"], res["eval"], res["logging"]
    out.print(f"batch generation {res['data_batch_ms']:.1f} ms; SDPA segment mask / causal at L={a['seq_len']}: "
              f"{a['masked_over_causal']:.2f}x")
    out.print(f"eval: collapse {e['collapse_s']:.2f} s, full {e['full_s']:.2f} s, pixel baselines "
              f"{e['pixel_baselines_s']:.2f} s; projected eval fraction of a default run {e['projected_eval_fraction']:.1%}")
    out.print(f"MLflow: {lg['flush_every_1_ms_per_value']:.2f} ms per value unbuffered, "
              f"{lg['flush_every_100_ms_per_value']:.3f} ms buffered ({lg['buffered_speedup']:.0f}x)")
    out.print(f"peak RSS {res['peak_rss_mb']:.0f} MB; written to {output}")


def main() -> None:  # pragma: no cover
    try:
        app()
    except SpecError as e:
        console.print(f"[bold red]error:[/] {e}")
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover
    main()
