"""The paper's figures for a table: curves (Fig. 5), error vs size (Fig. 7), paper-vs-measured bars.

Figures are built with the object-oriented API on an Agg canvas, never through
pyplot: no display is needed, nothing global is left open, and a notebook can
still show the returned figures inline. Each builder returns None when the sweep
holds no data for it, so the caller can say why the plot is absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from resnext_lab.files import write_atomic
from resnext_lab.report.collect import CellJobs, load_curves
from resnext_lab.report.stats import summarize

_DPI = 120


def metric_base(metric: str) -> str:
    """The metric without its split prefix: `test/top1_err` and `best/val/top1_err` -> `top1_err`."""
    return metric.rsplit("/", 1)[-1]


def metric_label(metric: str) -> str:
    """An axis label with units for an error metric, e.g. `top-1 error (%)`."""
    base = metric_base(metric)
    names = {"top1_err": "top-1 error (%)", "top5_err": "top-5 error (%)", "loss": "loss"}
    label = names.get(base, f"{base} (%)" if base.endswith("_err") else base)
    split = metric.rsplit("/", 1)[0] if "/" in metric else ""
    return f"{split} {label}".strip()


#: Series with at most this many points get markers (one epoch draws a line of length zero).
FEW_POINTS = 8
MARKERS = {"-": "o", "--": "s"}


def mean_curves(cell: CellJobs) -> pd.DataFrame:
    """Per-epoch mean over the cell's usable seeds of every logged column (empty when none logged)."""
    frames = [load_curves(job) for job in cell.usable]
    frames = [frame for frame in frames if not frame.empty]
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames).groupby(level=0).mean().sort_index()


def curves_figure(cells: Sequence[CellJobs], metric: str = "test/top1_err") -> Figure | None:
    """Training (dashed) and validation (solid) error per epoch, one colour per cell, mean over seeds.

    Like the paper's Fig. 5: a cell whose training error is lower as well as its
    validation error gains in representation, not in regularisation.
    """
    base = metric_base(metric)
    train_col, val_col = f"train/{base}", f"val/{base}"
    fig, ax = _new_figure((8, 5))
    drawn = 0
    for cell, colour in zip(cells, _colours(len(cells)), strict=True):
        curves = mean_curves(cell)
        labelled = False
        for col, style in ((val_col, "-"), (train_col, "--")):
            if col in curves.columns and curves[col].notna().any():
                series = curves[col].dropna()
                label = None if labelled else _cell_name(cell, cells)
                marker = MARKERS[style] if len(series) <= FEW_POINTS else None  # a lone point draws no line
                ax.plot(
                    series.index + 1,
                    series.to_numpy(),
                    style,
                    color=colour,
                    label=label,
                    marker=marker,
                    markerfacecolor="none" if style == "--" else colour,
                )
                labelled, drawn = True, drawn + 1
    if not drawn:
        return None
    # Colours name the cells; two black proxies explain the line styles.
    ax.plot([], [], "-", color="black", label="validation")
    ax.plot([], [], "--", color="black", label="training")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric_label(base))
    ax.set_title(f"Training curves: {metric_label(base)}, mean over seeds")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return fig


def size_figure(cells: Sequence[CellJobs], metric: str, x_axis: str = "params") -> Figure | None:
    """Final metric against model size (params or FLOPs), mean ± std over seeds, one series per row.

    Like the paper's Fig. 7; points are labelled with their cell so the
    cardinality-versus-width comparison reads off the plot.
    """
    if x_axis not in ("params", "flops"):
        raise ValueError(f"x_axis={x_axis!r}: must be params or flops")
    points = []
    for cell in cells:
        summary = summarize(cell.values)
        size = cell.first_model_value(x_axis)
        if summary.mean is not None and isinstance(size, int | float) and size > 0:
            points.append((cell, float(size), summary.mean, summary.std or 0.0))
    if not points:
        return None
    scale, unit = _size_unit(max(p[1] for p in points))
    fig, ax = _new_figure((8, 5))
    rows = list(dict.fromkeys(cell.row for cell, *_ in points))
    for row, colour in zip(rows, _colours(len(rows)), strict=True):
        series = sorted((p for p in points if p[0].row == row), key=lambda p: p[1])
        xs = [p[1] / scale for p in series]
        ax.errorbar(
            xs, [p[2] for p in series], yerr=[p[3] for p in series], fmt="o-", color=colour, capsize=4, label=row
        )
        for cell, x, y, _ in series:
            ax.annotate(cell.label, (x / scale, y), textcoords="offset points", xytext=(5, 5), fontsize="small")
    xs_all = [p[1] for p in points]
    if max(xs_all) / min(xs_all) > 10:
        ax.set_xscale("log")
    what = "parameters" if x_axis == "params" else "FLOPs (multiply-adds)"
    ax.set_xlabel(f"{what} ({unit})" if unit else what)
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric_label(metric)} vs model size (mean ± std over seeds)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def bars_figure(cells: Sequence[CellJobs], metric: str, title: str = "") -> Figure | None:
    """Paper value beside measured mean ± std for every cell; cells with no usable run are marked."""
    summaries = [summarize(cell.values) for cell in cells]
    if not any(s.mean is not None for s in summaries):
        return None
    fig, ax = _new_figure((max(6.0, 1.1 * len(cells) + 2), 5))
    x = np.arange(len(cells))
    width = 0.38
    paper = [np.nan if cell.paper is None else float(cell.paper) for cell in cells]
    means = [np.nan if s.mean is None else s.mean for s in summaries]
    stds = [0.0 if s.std is None else s.std for s in summaries]
    ax.bar(x - width / 2, paper, width, color="0.75", edgecolor="0.3", hatch="//", label="paper")
    ax.bar(x + width / 2, means, width, yerr=stds, capsize=4, color="tab:blue", label="measured (mean ± std)")
    top = np.nanmax([*paper, *(m + s for m, s in zip(means, stds, strict=True))])
    for i, (cell, s) in enumerate(zip(cells, summaries, strict=True)):
        if cell.paper is None:
            ax.text(
                x[i] - width / 2,
                0.02 * top,
                "no paper value",
                rotation=90,
                ha="center",
                va="bottom",
                fontsize="small",
                color="0.4",
            )
        if s.mean is None:
            ax.text(
                x[i] + width / 2,
                0.02 * top,
                _absent_text(cell),
                rotation=90,
                ha="center",
                va="bottom",
                fontsize="small",
                color="tab:red",
            )
        else:
            ax.text(x[i] + width / 2, s.mean + (s.std or 0.0), f"n={s.n}", ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks(x, [_cell_name(cell, cells, sep="\n") for cell in cells], fontsize="small")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(title or f"{metric_label(metric)}: paper vs measured")
    ax.set_ylim(0, top * 1.15)
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a figure as PNG atomically (temp file in the same folder, then os.replace)."""
    return write_atomic(path, lambda handle: fig.savefig(handle, format="png", dpi=_DPI, bbox_inches="tight"))


def _new_figure(size: tuple[float, float]) -> tuple[Figure, Axes]:
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _colours(n: int) -> list[tuple[float, ...]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _cell_name(cell: CellJobs, cells: Sequence[CellJobs], sep: str = " ") -> str:
    """The cell label, followed by its row when the table has several rows, then the network trained.

    The label and row are the paper's names ("ResNet-50", "50-layer"); a scale may train a smaller
    network (29 layers), which a plot must say as the table does.
    """
    name = f"{cell.label}{sep}({cell.row})" if len({c.row for c in cells}) > 1 else cell.label
    trained = cell.trained()
    return name if trained == "–" else f"{name}{',' if sep == ' ' else ''}{sep}trained: {trained}"


def _absent_text(cell: CellJobs) -> str:
    if not cell.counts:
        return "missing"
    return ", ".join(f"{n} {state}" for state, n in cell.counts.items())


def _size_unit(largest: float) -> tuple[float, str]:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if largest >= scale:
            return scale, unit
    return 1.0, ""


def ablation_figures(report: Mapping[str, Any]) -> dict[str, Figure]:
    """An ablation report's plots: its metric (test top-1 error unless asked; mean ± std over seeds) against the
    first swept setting, one series per value of the others, and against params (or FLOPs)."""
    metric = report.get("metric", "test/top1_err")
    rows = [r for r in report["rows"] if r.get(f"{metric} mean") is not None]
    keys = list(report["keys"])
    if not rows or not keys:
        return {}
    first, others = keys[0], keys[1:]
    series: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        series.setdefault(", ".join(f"{k}={r[k]}" for k in others), []).append(r)
    figures = {}
    numeric = all(_is_number(r[first]) for r in rows)
    size_key = report.get("match") or "params"
    for name, x_of, xlabel in (
        (f"error_vs_{_file_safe(first)}", lambda r: float(r[first]) if numeric else str(r[first]), first),
        (f"error_vs_{size_key}", lambda r: r[size_key], size_key),
    ):
        fig, ax = _new_figure((7, 4.5))
        for (label, members), colour in zip(series.items(), _colours(len(series)), strict=True):
            if any(x_of(r) is None for r in members):
                continue
            xs = [x_of(r) for r in members]
            ys = [r[f"{metric} mean"] for r in members]
            err = [r[f"{metric} std"] or 0.0 for r in members]
            ax.errorbar(xs, ys, yerr=err, fmt="-o", color=colour, capsize=3, label=label or None)
            if name.endswith(size_key):
                for x, y, r in zip(xs, ys, members, strict=True):
                    ax.annotate(str(r[first]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize="small")
        if numeric and name.endswith(_file_safe(first)):
            values = sorted({float(r[first]) for r in rows})
            if values[0] > 0 and values[-1] / values[0] >= 8:
                ax.set_xscale("log", base=2)
            ax.set_xticks(values, [f"{v:g}" for v in values])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric_label(metric)}, mean ± std over seeds")
        ax.set_title(f"{metric_label(metric).removesuffix(' (%)')} against {xlabel}")
        if others:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        figures[name] = fig
    return figures


def _is_number(text: Any) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _file_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
