"""The PDF report of one sweep study: setup, verdict, per-cell table and plots.

Owns page layout (text that flows onto further pages instead of overflowing, fixed-width
tables) and the figures; reads the data through ``results`` and decides through
``verdict``. The same data give a byte-identical file: no dates, fixed PDF metadata.
"""

from __future__ import annotations

import functools
import math
import numbers
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.textpath import text_to_path

from llmjepa import results, tracking
from llmjepa.metrics import mean_ci
from llmjepa.specs import SweepSpec
from llmjepa.verdict import (
    Verdict, cell_table, compute_verdict, fmt_num, fmt_p, fmt_value, image_use, matching, same_value, short_name,
)

PAGE_W, PAGE_H = 11.69, 8.27  # A4 landscape, inches
MARGIN = 0.6
TOP, BOTTOM = PAGE_H - 0.55, 0.75
TEXT_W = PAGE_W - 2 * MARGIN
MONO_ADVANCE = 0.602  # DejaVu Sans Mono advance width in em
MIN_MONO, MAX_MONO = 6.5, 9.0
PANELS_PER_PAGE = 6
CELL_WIDTH = 60  # widest cell label in the cell table before labels shorten and wrap
RANKME = "collapse/rankme/image/target"
ALIGN = [("image->text R@1 at the last step", "align/r1/image-text/L"),
         ("image-text mutual kNN at the last step", "align/mknn/image-text/L")]
STATUS_COLOURS = {"supported": "#1a7f37", "refuted": "#c62828", "inconclusive": "#b26a00", "no data": "#555555"}
RC = {
    "pdf.fonttype": 42, "svg.hashsalt": "llmjepa", "font.family": "DejaVu Sans", "font.size": 9,
    "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
}


@dataclass
class ReportResult:
    path: Path
    verdict: Verdict | None


# ----------------------------------------------------------------------------- page flow


class _Book:
    """Figures in page order; text is flowed top-down and continues on a new page when full."""

    def __init__(self) -> None:
        self.figures: list[Figure] = []

    def page(self) -> Figure:
        fig = Figure(figsize=(PAGE_W, PAGE_H))
        self.figures.append(fig)
        return fig

    def flow(self, title: str) -> "_Flow":
        return _Flow(self, title)

    def finish(self, footer: str) -> None:
        total = len(self.figures)
        for i, fig in enumerate(self.figures, 1):
            fig.text(MARGIN / PAGE_W, 0.3 / PAGE_H, _fit(footer, TEXT_W - 1.2, 7), fontsize=7, color="#666666")
            fig.text(1 - MARGIN / PAGE_W, 0.3 / PAGE_H, f"page {i} of {total}", fontsize=7, color="#666666",
                     ha="right")


class _Flow:
    def __init__(self, book: _Book, title: str):
        self.book, self.title = book, title
        self._new_page(continued=False)

    def _new_page(self, continued: bool) -> None:
        self.fig = self.book.page()
        self.y = TOP
        title = self.title + (" (continued)" if continued else "")
        self.line(_fit(title, TEXT_W, 15, "bold"), size=15, weight="bold")
        self.space(0.1)

    def _fits(self, height: float) -> bool:
        return self.y - height >= BOTTOM

    def _ensure(self, height: float) -> None:
        if not self._fits(height) and self.y < TOP - 0.6:
            self._new_page(continued=True)

    def space(self, inches: float) -> None:
        self.y -= inches

    def line(self, text: str, size: float = 10, x: float = 0.0, mono: bool = False, **kw) -> None:
        height = size * 1.3 / 72
        self._ensure(height)
        family = "DejaVu Sans Mono" if mono else "DejaVu Sans"
        self.fig.text((MARGIN + x) / PAGE_W, self.y / PAGE_H, text, fontsize=size, family=family, va="top", **kw)
        self.y -= height

    def paragraph(self, text: str, size: float = 10, label: str | None = None, indent: float = 0.0) -> None:
        first = f"{label}: " if label else ""
        for line in _wrap(first + text, TEXT_W - indent, size) or [""]:
            self.line(line, size=size, x=indent)

    def table(self, header: list[str], body: list[list[str]]) -> None:
        """Fixed-width rows of one or more lines; a row never splits across pages and the
        header repeats on every page the table reaches."""
        size = _mono_size(max(len(x) for x in header + [line for row in body for line in row]))
        fits = int(TEXT_W * 72 / (MONO_ADVANCE * size))
        header = [x if len(x) <= fits else x[: fits - 1] + "…" for x in header]
        body = [[x if len(x) <= fits else x[: fits - 1] + "…" for x in row] for row in body]
        height = size * 1.3 / 72
        self._ensure(height * (len(header) + sum(len(r) for r in body[:3])))
        for line in header:
            self.line(line, size=size, mono=True, weight="bold")
        for row in body:
            if not self._fits(height * len(row)):
                self._new_page(continued=True)
                for line in header:
                    self.line(line, size=size, mono=True, weight="bold")
            for line in row:
                self.line(line, size=size, mono=True)


@functools.lru_cache(maxsize=4096)
def _text_width(text: str, size: float, weight: str = "normal") -> float:
    """Width in inches of ``text`` set in DejaVu Sans at ``size`` points (FreeType layout)."""
    if not text:
        return 0.0
    prop = FontProperties(family="DejaVu Sans", weight=weight, size=size)
    width, _, _ = text_to_path.get_text_width_height_descent(text, prop, ismath=False)
    return width / 72


def _wrap(text: str, width: float, size: float) -> list[str]:
    """Greedy word wrap by measured width (inches); over-long words are cut."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}" if current else word
        if _text_width(trial, size) <= width:
            current = trial
            continue
        if current:
            lines.append(current)
        while _text_width(word, size) > width and len(word) > 1:
            cut = max(1, int(len(word) * width / _text_width(word, size)) - 1)
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    return lines + ([current] if current else [])


def _fit(text: str, width: float, size: float, weight: str = "normal") -> str:
    """``text`` shortened with an ellipsis to fit ``width`` inches."""
    if _text_width(text, size, weight) <= width:
        return text
    while len(text) > 1 and _text_width(text + "…", size, weight) > width:
        text = text[:-1]
    return text + "…"


def _mono_size(chars: int) -> float:
    """Largest fixed-width font (within limits) that fits ``chars`` on one line."""
    return max(MIN_MONO, min(MAX_MONO, TEXT_W * 72 / (MONO_ADVANCE * max(chars, 1))))


def _format_table(headers: list[str], rows: list[list[str]], right: list[bool],
                  max_width: dict[int, int] | None = None) -> tuple[list[str], list[list[str]]]:
    """Header lines and rows (each a list of lines) of a fixed-width table; headers may hold
    newlines, cells wider than ``max_width`` wrap with indented continuation lines."""
    max_width = max_width or {}

    def wrap(i: int, text: str) -> list[str]:
        if i not in max_width or len(text) <= max_width[i]:
            return [text]
        return textwrap.wrap(text, max_width[i], subsequent_indent="  ") or [""]

    wrapped = [[wrap(i, c) for i, c in enumerate(r)] for r in rows]
    head = [h.split("\n") for h in headers]
    widths = [max([len(x) for x in head[i]] + [len(x) for r in wrapped for x in r[i]]) for i in range(len(headers))]
    depth = max(len(h) for h in head)

    def join(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    header = [join([(h[k - depth + len(h)] if k >= depth - len(h) else "") for h in head]) for k in range(depth)]
    header.append("  ".join("-" * w for w in widths))
    body = [[join([c[k] if k < len(c) else "" for c in r]) for k in range(max(len(c) for c in r))]
            for r in wrapped]
    return header, body


def _decimals(values: list[float]) -> int:
    finite = [abs(v) for v in values if v is not None and not math.isnan(v) and v != 0]
    if not finite:
        return 2
    return int(min(4, max(0, 2 - math.floor(math.log10(max(finite))))))


def _mean_ci_text(mean: float, ci: float, decimals: int) -> str:
    if mean is None or math.isnan(mean):
        return "-"
    ci_text = "n/a" if ci is None or math.isnan(ci) else f"{ci:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {ci_text}"


def _short_cell(cell: str) -> str:
    """data.text_ratio=0.5 objective.target_mode=ema -> text_ratio=0.5 target_mode=ema"""
    return " ".join(f"{short_name(k)}={v}" if sep else k for k, sep, v in (p.partition("=") for p in cell.split(" ")))


def _wrap_name(name: str, width: int) -> str:
    """A metric name broken after '/' so no header line is wider than ``width``."""
    parts = re.findall(r"[^/]+/?", name)
    lines, current = [], ""
    for part in parts:
        if current and len(current) + len(part) > width:
            lines.append(current)
            current = ""
        current += part
    return "\n".join(lines + [current])


# ----------------------------------------------------------------------------- setup


def _budget_view(sweep: SweepSpec, budget: str) -> dict[str, Any]:
    b = sweep.budgets.get(budget)
    axes = dict(sweep.axes)
    if b is not None and b.axes:
        axes.update(b.axes)
    axes = {name: [results.hashable(v) for v in values] for name, values in axes.items()}
    return {
        "axes": axes,
        "seeds": b.seeds if b is not None and b.seeds is not None else sweep.seeds,
        "extra_cells": b.extra_cells if b is not None and b.extra_cells is not None else sweep.extra_cells,
        "trials": b.trials if b is not None else None,
        "set": {**sweep.set, **(b.set if b is not None else {})},
    }


def _plot_axis(sweep: SweepSpec, view: dict, axes: list[str]) -> str | None:
    """The verdict's axis, else the first swept field."""
    if sweep.verdict is not None:
        return sweep.verdict.axis
    names = list(view["axes"]) + axes
    return names[0] if names else None


def _order_runs(runs: pd.DataFrame, order: dict[str, list], axes: list[str]) -> pd.DataFrame:
    """Rows in the sweep's axis order (the values as listed in the YAML), then by seed."""
    if runs.empty:
        return runs
    names = list(order) + [a for a in axes if a not in order]
    names = [a for a in names if a in runs.columns]

    def key(name: str, value: Any) -> tuple:
        listed = order.get(name, [])
        for i, v in enumerate(listed):
            if same_value(value, v):
                return (0, i, results.sort_key(value))
        return (1, 0, results.sort_key(value))

    keys = [[key(a, v) for v in runs[a]] for a in names]
    seeds = [results.sort_key(v) for v in runs["seed"]]
    idx = sorted(range(len(runs)), key=lambda i: tuple(k[i] for k in keys) + (runs["cell"].iloc[i], seeds[i]))
    return runs.iloc[idx].reset_index(drop=True)


def _title_page(book: _Book, sweep: SweepSpec, budget: str, study: str, view: dict,
                data: results.SweepData, code_version: str) -> None:
    f = book.flow(sweep.name)
    f.paragraph(sweep.question, size=12, label="Question")
    f.space(0.05)
    f.paragraph(sweep.hypothesis, size=11, label="Hypothesis")
    f.space(0.15)
    f.line("Setup", size=12, weight="bold")
    f.paragraph(f"{sweep.base or '(defaults)'}", label="Base", indent=0.2)
    overrides = ", ".join(f"{k}={fmt_value(v)}" for k, v in view["set"].items()) or "none"
    f.paragraph(overrides, label="Overrides for every trial", indent=0.2)
    for name, values in view["axes"].items():
        f.paragraph(", ".join(fmt_value(v) for v in values), label=f"Axis {name}", indent=0.2)
    for cell in view["extra_cells"]:
        f.paragraph(" ".join(f"{k}={fmt_value(v)}" for k, v in cell.items()), label="Extra cell", indent=0.2)
    f.paragraph(", ".join(str(s) for s in view["seeds"]), label="Seeds", indent=0.2)
    sampler = sweep.sampler + (f", {view['trials']} trials" if view["trials"] else "")
    f.paragraph(f"{budget}; sampler {sampler}; pruner {sweep.pruner.kind}", label="Budget", indent=0.2)
    objectives = ", ".join(f"{o.metric} ({o.direction})" for o in sweep.objectives)
    f.paragraph(objectives, label="Objectives", indent=0.2)
    f.space(0.15)
    f.line("Trials", size=12, weight="bold")
    counts = ", ".join(f"{k} {v}" for k, v in data.counts.items()) or "none"
    f.paragraph(f"{counts} ({sum(data.counts.values())} runs)", label="MLflow status of all child runs", indent=0.2)
    kept = data.runs["status"].value_counts() if not data.runs.empty else pd.Series(dtype=int)
    kept_text = ", ".join(f"{k} {int(kept[k])}" for k in sorted(kept.index)) or "none"
    cells = data.runs["cell"].nunique() if not data.runs.empty else 0
    f.paragraph(f"{kept_text} ({len(data.runs)} runs in {cells} cells); duplicates removed: {data.duplicates}",
                label="Per cell and seed", indent=0.2)
    f.space(0.15)
    f.line("Provenance", size=12, weight="bold")
    tags = data.parent["tags"]
    f.paragraph(study, label="Study", indent=0.2)
    f.paragraph(tags.get("llmjepa.sweep_hash", "not recorded"), label="Sweep hash", indent=0.2)
    f.paragraph(code_version, label="Code version (report)", indent=0.2)
    if tags.get("code_version", code_version) != code_version:
        f.paragraph(tags["code_version"], label="Code version (sweep)", indent=0.2)
    f.paragraph(data.parent["run_id"], label="MLflow parent run", indent=0.2)


# ----------------------------------------------------------------------------- verdict


def _verdict_page(book: _Book, sweep: SweepSpec, runs: pd.DataFrame) -> Verdict | None:
    f = book.flow("Verdict")
    spec = sweep.verdict
    if spec is None:
        f.line("no verdict rule", size=28, weight="bold", color=STATUS_COLOURS["no data"])
        f.paragraph("The sweep spec states no verdict rule, so the report decides nothing.")
        return None
    verdict = compute_verdict(runs, spec)
    f.space(0.05)
    f.line(verdict.status, size=30, weight="bold", color=STATUS_COLOURS[verdict.status])
    f.space(0.2)
    f.paragraph(verdict.text, size=11)
    f.space(0.1)
    side = "" if spec.threshold is None else f"; good side: {spec.better} than {spec.threshold:g}"
    within = ", ".join(f"{k}={fmt_value(v)}" for k, v in spec.within.items()) or "all cells"
    rule = (f"{spec.metric} of finished runs ({within}) across {spec.axis}: claim values "
            f"{', '.join(fmt_value(v) for v in spec.claim)} against reference {fmt_value(spec.reference)}{side}; "
            f"{spec.better} is better; Welch t-test at alpha {spec.alpha:g}.")
    f.paragraph(rule, size=9, label="Rule (stated before the data)")
    f.space(0.15)
    if not verdict.table.empty:
        t = verdict.table
        dec = _decimals(list(t["mean"]) + list(t["ci"]))
        rows = [[fmt_value(r.value), r.role, str(r.n), _mean_ci_text(r.mean, r.ci, dec),
                 "-" if math.isnan(r.good) else f"{int(r.good)}/{r.n}", fmt_num(r.t), fmt_p(r.p), r.result,
                 str(r.excluded)] for r in t.itertuples()]
        headers = [short_name(spec.axis), "role", "n", "mean ± 95% CI", "good side", "Welch t", "p", "result",
                   "unfinished"]
        header, body = _format_table(headers, rows, [False, False, True, True, True, True, True, False, True])
        f.table(header, body)
        f.space(0.2)
    media = "audio" if "audio" in (spec.gap_metric or "") else "image" if "image" in (spec.gap_metric or "") else "media"
    f.line(f"Did the text use the {media}? ({spec.gap_metric or 'no gap metric'} >= {spec.gap_min:g})",
           size=11, weight="bold")
    use = image_use(runs, spec)
    if use.empty:
        f.paragraph("not recorded", size=9)
    else:
        rows = [[r.cell, str(r.n), fmt_num(r.gap), r.used] for r in use.itertuples()]
        header, body = _format_table(["cell", "n", "mean gap", f"text used the {media}"], rows,
                                     [False, True, True, False], {0: 100})
        f.table(header, body)
    return verdict


# ----------------------------------------------------------------------------- cell table


def _cell_pages(book: _Book, runs: pd.DataFrame, metrics: list[str]) -> None:
    f = book.flow("Every cell: mean ± 95% CI over finished seeds (t distribution)")
    table = cell_table(runs, metrics)
    if table.empty:
        f.paragraph("No runs.")
        return
    names = [str(c) for c in table["cell"]]
    shortened = max(len(c) for c in names) > CELL_WIDTH
    if shortened:
        names = [_short_cell(c) for c in names]
    cell_w = min(CELL_WIDTH, max(len(c) for c in names))
    columns = []
    for m in metrics:
        dec = _decimals(list(table[f"{m} mean"]) + list(table[f"{m} ci"]))
        texts = [_mean_ci_text(a, b, dec) for a, b in zip(table[f"{m} mean"], table[f"{m} ci"])]
        if all(t == "-" for t in texts):
            texts = ["not recorded"] * len(texts)
        width = max(14, max(len(t) for t in texts))
        header = _wrap_name(m, width)
        columns.append((header, texts, max(width, *(len(x) for x in header.split("\n")))))
    budget = int(TEXT_W * 72 / (MONO_ADVANCE * 7.0))  # characters per line at 7 pt
    groups, current, used = [], [], cell_w + 2 + 3 + 2 + 4
    for col in columns:
        if current and used + col[2] + 2 > budget:
            groups.append(current)
            current, used = [], cell_w + 2 + 3 + 2 + 4
        current.append(col)
        used += col[2] + 2
    groups.append(current)
    for k, group in enumerate(groups):
        headers = ["cell", "n", "runs"] + [c[0] for c in group]
        rows = [[names[i], str(table["n"].iloc[i]), str(table["runs"].iloc[i])]
                + [c[1][i] for c in group] for i in range(len(table))]
        header, body = _format_table(headers, rows, [False, True, True] + [True] * len(group), {0: cell_w})
        if k:
            f.space(0.25)
        f.table(header, body)
    f.space(0.15)
    f.paragraph("n: finished seeds the statistics use; runs: seeds run in the cell (diverged, pruned or killed "
                "ones count here only). CI n/a: fewer than two finished seeds; -: no finished seed of the cell "
                "recorded the metric." + (" Cells are named by the last part of each field." if shortened else ""),
                size=8)


# ----------------------------------------------------------------------------- plots


def _label(values: dict[str, Any]) -> str:
    return ", ".join(f"{short_name(k)}={fmt_value(v)}" for k, v in values.items())


def _not_recorded(ax) -> None:
    ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes, fontsize=10,
            color="#777777")
    ax.set_xticks([])
    ax.set_yticks([])


def _cells(runs: pd.DataFrame, axes: list[str]) -> pd.DataFrame:
    """One row per cell, in run order: the cell key and its axis values."""
    if runs.empty:
        return pd.DataFrame(columns=["cell"] + axes)
    return runs.groupby("cell", sort=False)[axes].first().reset_index() if axes else \
        pd.DataFrame({"cell": list(dict.fromkeys(runs["cell"]))})


class _Styles:
    """Few combinations of the other axes: colour by the plot axis value, marker and line style
    by the combination. More than markers can tell apart: one distinct style per cell."""

    LINES = ["-", "--", ":", "-."]
    MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]

    def __init__(self, cells: pd.DataFrame, x: str | None, others: list[str]):
        self.x, self.others = x, others
        self.cells = list(cells["cell"])
        self.xs = list(dict.fromkeys(cells[x])) if x in cells.columns else []
        self.combos = list(dict.fromkeys(tuple(r) for r in cells[others].itertuples(index=False))) or [()]
        self.distinct = len(self.combos) <= len(self.MARKERS)

    def combo(self, combo: tuple) -> dict:
        i = self.combos.index(combo) if combo in self.combos else 0
        return {"color": f"C{i % 10}", "linestyle": self.LINES[i % len(self.LINES)],
                "marker": self.MARKERS[i % len(self.MARKERS)]}

    def cell(self, row: pd.Series) -> dict:
        if self.distinct and self.xs:
            style = self.combo(tuple(row[o] for o in self.others))
            pos = next((i for i, v in enumerate(self.xs) if same_value(v, row[self.x])), 0)
            style["color"] = matplotlib.colormaps["viridis"](0.85 * pos / max(1, len(self.xs) - 1))
            return style
        i = self.cells.index(row["cell"])
        return {"color": matplotlib.colormaps["tab20"](i % 20), "linestyle": self.LINES[i // 20 % len(self.LINES)],
                "marker": self.MARKERS[i % len(self.MARKERS)]}


@dataclass
class _LegendLayout:
    where: str  # "bottom", "right" or "none"
    size: float = 8.0
    ncol: int = 1
    width: float = 0.0  # inches taken on the right
    height: float = 0.0  # inches taken at the bottom
    max_rows: int = 0
    text_width: float = 0.0  # inches for a label on the right


def _row_height(size: float) -> float:
    return 1.65 * size / 72


def _legend_layout(labels: list[str], top: float) -> _LegendLayout:
    """Bottom when the labels fit in four rows, else a column on the right."""
    if not labels:
        return _LegendLayout("none")
    size = 8.0
    entry = max(_text_width(s, size) for s in labels) + 4.8 * size / 72  # handle, pad, column gap
    ncol = max(1, min(len(labels), int(TEXT_W // entry)))
    rows = math.ceil(len(labels) / ncol)
    if rows <= 4:
        return _LegendLayout("bottom", size, ncol, height=rows * _row_height(size) + 0.15)
    size = 7.0
    text_width = min(0.4 * TEXT_W - 2.8 * size / 72, max(_text_width(s, size) for s in labels))
    max_rows = int((top - BOTTOM) / _row_height(size))
    return _LegendLayout("right", size, 1, width=text_width + 2.8 * size / 72, text_width=text_width,
                         max_rows=max_rows)


def _plot_page(book: _Book, title: str, n: int, labels: list[str]):
    """A page with ``n`` panels arranged for a landscape-friendly aspect and room for the legend."""
    fig = book.page()
    fig.text(MARGIN / PAGE_W, TOP / PAGE_H, title, fontsize=13, fontweight="bold", va="top")
    top = PAGE_H - 1.05
    legend = _legend_layout(labels, top)
    left, right = 0.85, PAGE_W - MARGIN - (legend.width + 0.3 if legend.where == "right" else 0.0)
    bottom = BOTTOM + 0.5 + legend.height
    n = max(1, n)
    col_gap, row_gap = 0.8, 1.0  # inches: tick labels, axis label and the next panel's title
    best = None
    for cols in range(1, min(n, 3) + 1):
        rows = math.ceil(n / cols)
        w = (right - left - (cols - 1) * col_gap) / cols
        h = (top - bottom - (rows - 1) * row_gap) / rows
        score = (abs(math.log(w / h / 1.45)), rows)
        best = min(best or (score, rows, cols, w, h), (score, rows, cols, w, h))
    _, rows, cols, w, h = best
    grid = fig.add_gridspec(rows, cols, left=left / PAGE_W, right=right / PAGE_W, top=top / PAGE_H,
                            bottom=bottom / PAGE_H, wspace=col_gap / w, hspace=row_gap / h)
    panels = [fig.add_subplot(grid[i // cols, i % cols]) for i in range(n)]
    return fig, panels, legend


def _place_legend(fig: Figure, layout: _LegendLayout, handles: dict[str, Any]) -> None:
    if layout.where == "none" or not handles:
        return
    labels, items = list(handles), list(handles.values())
    if layout.where == "bottom":
        fig.legend(items, labels, loc="lower center", ncol=layout.ncol, fontsize=layout.size, frameon=False,
                   bbox_to_anchor=(0.5, BOTTOM / PAGE_H))
        return
    labels = [_fit(s, layout.text_width, layout.size) for s in labels]
    if len(labels) > layout.max_rows:
        keep = layout.max_rows - 1
        more = len(labels) - keep
        labels = labels[:keep] + [f"… and {more} more (see the cell table)"]
        items = items[:keep] + [Line2D([], [], linestyle="none")]
    x = (PAGE_W - MARGIN - layout.width) / PAGE_W
    fig.legend(items, labels, loc="upper left", fontsize=layout.size, frameon=False, borderaxespad=0,
               bbox_to_anchor=(x, (PAGE_H - 1.05) / PAGE_H))


def _finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"].eq("finished")] if not runs.empty else runs


def _metric_plots(book: _Book, runs: pd.DataFrame, metrics: list[str], x: str | None, axes: list[str],
                  order: dict, threshold: tuple[str, float] | None) -> None:
    done = _finished_runs(runs)
    others = [a for a in axes if a != x]
    cells = _cells(runs, axes)
    styles = _Styles(cells, x, others)
    combos = styles.combos
    labels = [_label(dict(zip(others, c))) or "all cells" for c in combos]
    values = list(dict.fromkeys(list(order.get(x, [])) + (list(cells[x]) if x in cells.columns else [])))
    numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)
    pages = [metrics[i:i + PANELS_PER_PAGE] for i in range(0, len(metrics), PANELS_PER_PAGE)] or [[]]
    title = (f"Report metrics against {x}" if x else "Report metrics") + " (mean ± 95% CI over finished seeds)"
    for page_metrics in pages:
        fig, panels, legend = _plot_page(book, title, len(page_metrics), labels if len(combos) > 1 else [])
        handles: dict[str, Any] = {}
        for ax, metric in zip(panels, page_metrics):
            ax.set_title(metric)
            if x not in done.columns or metric not in done.columns or done[metric].isna().all():
                _not_recorded(ax)
                continue
            for combo, label in zip(combos, labels):
                sel = done
                for o, c in zip(others, combo):
                    sel = matching(sel, o, c)
                pts = []
                for i, value in enumerate(values):
                    vals = pd.to_numeric(matching(sel, x, value)[metric], errors="coerce").dropna()
                    if len(vals):
                        mean, ci = mean_ci(list(vals))
                        pts.append((float(value) if numeric else i, mean, 0.0 if math.isnan(ci) else ci))
                if pts:
                    p, m, e = zip(*pts)
                    handles.setdefault(label, ax.errorbar(p, m, yerr=e, capsize=3, ms=4, lw=1.2,
                                                          **styles.combo(combo)))
            if not numeric:
                ax.set_xticks(range(len(values)))
                ax.set_xticklabels([fmt_value(v) for v in values], rotation=20)
            if threshold and threshold[0] == metric:
                ax.axhline(threshold[1], color="#c62828", lw=0.8, ls="--")
            ax.set_xlabel(short_name(x))
            ax.grid(alpha=0.3)
        _place_legend(fig, legend, handles if len(combos) > 1 else {})


def _mean_curve(histories: list[list[tuple[int, float]]]) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = {}
    for history in histories:
        for step, value in history:
            if value is not None and not math.isnan(value):
                by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return steps, [float(np.mean(by_step[s])) for s in steps]


def _cell_labels(cells: pd.DataFrame, axes: list[str]) -> list[str]:
    return [_label({a: r[a] for a in axes}) or r["cell"] for _, r in cells.iterrows()]


def _curve_page(book: _Book, uri: str, runs: pd.DataFrame, keys: list[str], x: str | None, axes: list[str],
                threshold: tuple[str, float] | None) -> None:
    done = _finished_runs(runs)
    cells = _cells(done, axes)
    styles = _Styles(cells, x if x in axes else None, [a for a in axes if a != x])
    labels = _cell_labels(cells, axes)
    fig, panels, legend = _plot_page(book, "Over training: mean over finished seeds per cell", len(keys), labels)
    handles: dict[str, Any] = {}
    for ax, key in zip(panels, keys):
        ax.set_title(key)
        histories = results.curves(uri, list(done["run_id"]), key) if not done.empty else {}
        drawn = False
        for (_, row), label in zip(cells.iterrows(), labels):
            ids = done.loc[done["cell"] == row["cell"], "run_id"]
            steps, values = _mean_curve([histories.get(i, []) for i in ids])
            if steps:
                (line,) = ax.plot(steps, values, lw=1.2, ms=3, **styles.cell(row))
                handles.setdefault(label, line)
                drawn = True
        if not drawn:
            _not_recorded(ax)
            continue
        if threshold and threshold[0] == key:
            ax.axhline(threshold[1], color="#c62828", lw=0.8, ls="--")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    _place_legend(fig, legend, handles)


def _alignment_page(book: _Book, runs: pd.DataFrame, x: str | None, axes: list[str]) -> None:
    done = _finished_runs(runs)
    cells = _cells(done, axes)
    styles = _Styles(cells, x if x in axes else None, [a for a in axes if a != x])
    labels = _cell_labels(cells, axes)
    fig, panels, legend = _plot_page(book, "Alignment per layer (mean ± 95% CI over finished seeds)",
                                     len(ALIGN), labels)
    handles: dict[str, Any] = {}
    for ax, (title, prefix) in zip(panels, ALIGN):
        ax.set_title(title)
        layers = sorted(int(c[len(prefix):]) for c in done.columns
                        if c.startswith(prefix) and c[len(prefix):].isdigit())
        drawn = False
        for (_, row), label in zip(cells.iterrows(), labels):
            sel = done[done["cell"] == row["cell"]]
            pts = []
            for layer in layers:
                vals = pd.to_numeric(sel[f"{prefix}{layer}"], errors="coerce").dropna()
                if len(vals):
                    mean, ci = mean_ci(list(vals))
                    pts.append((layer, mean, 0.0 if math.isnan(ci) else ci))
            if pts:
                p, m, e = zip(*pts)
                handles.setdefault(label, ax.errorbar(p, m, yerr=e, capsize=3, ms=4, lw=1.2, **styles.cell(row)))
                drawn = True
        if not drawn:
            _not_recorded(ax)
            continue
        ax.set_xticks(layers)
        ax.set_xticklabels([f"L{k}" for k in layers])
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    _place_legend(fig, legend, handles)


# ----------------------------------------------------------------------------- entry point


def write_report(sweep: SweepSpec, budget: str, study_name: str, uri: str, out: Path,
                 code_version: str) -> ReportResult:
    """Write the study's report to ``out`` (PDF) and attach it to the study's parent run."""
    out = Path(out)
    view = _budget_view(sweep, budget)
    fields = list(view["axes"]) + [k for c in view["extra_cells"] for k in c] + ["data.text_ratio"]
    if sweep.verdict is not None:
        fields += [sweep.verdict.axis] + list(sweep.verdict.within)
    data = results.load_sweep_runs(uri, sweep.name, study_name, fields=list(dict.fromkeys(fields)))
    swept = data.axes or [a for a in view["axes"] if a in data.runs.columns]
    runs = _order_runs(data.runs, view["axes"], swept)
    x = _plot_axis(sweep, view, swept)
    threshold = None
    if sweep.verdict is not None and sweep.verdict.threshold is not None:
        threshold = (sweep.verdict.metric, sweep.verdict.threshold)
    curve_keys = list(dict.fromkeys(([sweep.verdict.metric] if sweep.verdict else []) + [RANKME]))

    out.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context(RC):
        book = _Book()
        _title_page(book, sweep, budget, study_name, view, data, code_version)
        verdict = _verdict_page(book, sweep, runs)
        _cell_pages(book, runs, list(sweep.report_metrics))
        _metric_plots(book, runs, list(sweep.report_metrics), x, swept, view["axes"], threshold)
        _curve_page(book, uri, runs, curve_keys, x, swept, threshold)
        _alignment_page(book, runs, x, swept)
        book.finish(f"{sweep.name} · {study_name} · code {code_version}")
        with PdfPages(out, metadata={"CreationDate": None, "ModDate": None}) as pdf:
            for fig in book.figures:
                pdf.savefig(fig)
    tracking.log_artifact(uri, data.parent["run_id"], out, "report")
    return ReportResult(out, verdict)
