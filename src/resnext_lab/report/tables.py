"""A paper table rebuilt from a sweep: paper value, measured seeds, difference to baseline, verdict.

The layout follows the paper's tables (rows of cells, e.g. 50-layer: 1x64d ...
32x4d) with one line per cell. Nothing is dropped: a cell with no job reads
"missing", failed and diverged jobs are counted in the line, unreadable result
files are listed under the table.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resnext_lab.errors import ConfigError, DataError, first_line
from resnext_lab.files import write_text_atomic
from resnext_lab.report import plots
from resnext_lab.report.collect import UNREADABLE, CellJobs, group_cells, load_results, matches
from resnext_lab.report.stats import BASELINE, Difference, difference, summarize, verdict

X_AXES = ("params", "flops")
COLUMNS = (
    "Row",
    "Cell",
    "Paper",
    "Measured mean ± std (n)",
    "Δ vs baseline [95% CI]",
    "Paper ordering",
    "Params",
    "FLOPs",
)


def validate_table(table_def: Mapping[str, Any]) -> dict[str, Any]:
    """Check a `report:` node and return it as a plain dict; a ConfigError names the bad field.

    Accepts an OmegaConf node as well as a dict. `title` defaults to the metric,
    `paired_by` and `x_axis` to None and "params".
    """
    if isinstance(table_def, DictConfig):
        table_def = OmegaConf.to_container(table_def, resolve=True)  # type: ignore[assignment]
    if not isinstance(table_def, Mapping):
        raise ConfigError(f"report: must be a mapping with metric and rows, got {type(table_def).__name__}")
    metric = table_def.get("metric")
    if not isinstance(metric, str) or not metric:
        raise ConfigError(f"report.metric={metric!r}: must name a key of results.json metrics, e.g. test/top1_err")
    rows = table_def.get("rows")
    if not isinstance(rows, Sequence) or isinstance(rows, str) or not rows:
        raise ConfigError("report.rows: must be a non-empty list of {label, baseline, cells}")
    paired_by = table_def.get("paired_by")
    if paired_by is not None and (not isinstance(paired_by, str) or not paired_by):
        raise ConfigError(f"report.paired_by={paired_by!r}: must be a results.json key such as seed, or null")
    x_axis = table_def.get("x_axis") or "params"
    if x_axis not in X_AXES:
        raise ConfigError(f"report.x_axis={x_axis!r}: must be one of {', '.join(X_AXES)}")
    clean_rows = [_validate_row(i, row) for i, row in enumerate(rows)]
    return {
        "title": str(table_def.get("title") or metric),
        "metric": metric,
        "rows": clean_rows,
        "paired_by": paired_by,
        "x_axis": x_axis,
        "omitted": _validate_omitted(table_def.get("omitted")),
    }


def _validate_omitted(omitted: Any) -> list[dict[str, Any]]:
    """`report.omitted`: cells a scale leaves out on purpose, `[{match: {...}, why: "..."}]`."""
    if omitted is None:
        return []
    if not isinstance(omitted, Sequence) or isinstance(omitted, str):
        raise ConfigError("report.omitted: must be a list of {match, why}")
    clean = []
    for i, entry in enumerate(omitted):
        match = entry.get("match") if isinstance(entry, Mapping) else None
        why = entry.get("why") if isinstance(entry, Mapping) else None
        if not isinstance(match, Mapping) or not match or not isinstance(why, str) or not why:
            raise ConfigError(f"report.omitted[{i}]: must be a mapping with a non-empty match and a why")
        clean.append({"match": dict(match), "why": why})
    return clean


def _omitted_why(cell: CellJobs, table: dict[str, Any]) -> str | None:
    """Why a cell with no jobs was left out at this scale (`report.omitted`), or None."""
    if cell.jobs:
        return None
    for entry in table.get("omitted", []):
        if all(str(cell.match.get(key)) == str(value) for key, value in entry["match"].items()):
            return entry["why"]
    return None


def _validate_row(i: int, row: Any) -> dict[str, Any]:
    where = f"report.rows[{i}]"
    if not isinstance(row, Mapping):
        raise ConfigError(f"{where}: must be a mapping with label, baseline and cells")
    cells = row.get("cells")
    if not isinstance(cells, Sequence) or isinstance(cells, str) or not cells:
        raise ConfigError(f"{where}.cells: must be a non-empty list of {{label, match, paper}}")
    clean_cells = []
    for j, cell in enumerate(cells):
        cwhere = f"{where}.cells[{j}]"
        if not isinstance(cell, Mapping) or cell.get("label") in (None, ""):
            raise ConfigError(f"{cwhere}: must be a mapping with a label")
        match = cell.get("match")
        if not isinstance(match, Mapping) or not match:
            raise ConfigError(f"{cwhere}.match: must be a non-empty mapping of results.json keys to values")
        paper = cell.get("paper")
        if paper is not None and (isinstance(paper, bool) or not isinstance(paper, int | float)):
            raise ConfigError(f"{cwhere}.paper={paper!r}: must be a number or null")
        clean_cells.append(
            {"label": str(cell["label"]), "match": dict(match), "paper": None if paper is None else float(paper)}
        )
    labels = [c["label"] for c in clean_cells]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}.cells: labels must be unique, got {labels}")
    baseline = row.get("baseline")
    if baseline is not None and str(baseline) not in labels:
        raise ConfigError(f"{where}.baseline={baseline!r}: not one of the row's cell labels {labels}")
    return {
        "label": str(row.get("label") or f"row {i + 1}"),
        "baseline": None if baseline is None else str(baseline),
        "cells": clean_cells,
    }


#: Where `--experiment NAME` looks for NAME.yaml: the working directory's experiments/, then the checkout's.
EXPERIMENT_DIRS = (Path("experiments"), Path(__file__).resolve().parents[3] / "experiments")


def load_table_def(path: str | Path) -> dict[str, Any]:
    """The `report:` node of a YAML file (an experiment config or a standalone table) as a plain dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"table file {path} does not exist")
    try:
        cfg = OmegaConf.load(path)
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"{path}: cannot read YAML ({first_line(exc)})") from exc
    node = cfg.get("report") if isinstance(cfg, DictConfig) else None
    if node is None:
        raise ConfigError(f"{path}: has no top-level report: node")
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: report: must be a mapping with metric and rows")
    try:
        table = OmegaConf.to_container(node, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: cannot resolve report: ({first_line(exc)})") from exc
    return table  # type: ignore[return-value]


def experiment_file(name: str) -> Path:
    """The YAML file of an experiment name, searched in EXPERIMENT_DIRS."""
    for folder in EXPERIMENT_DIRS:
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(folder) for folder in EXPERIMENT_DIRS)
    raise ConfigError(f"--experiment {name}: no {name}.yaml in {looked} (or pass --table FILE.yaml)")


def render(results: Sequence[Mapping[str, Any]], table_def: Mapping[str, Any]) -> tuple[str, pd.DataFrame]:
    """The table as markdown and as a DataFrame (one row per cell, raw numbers, for table.csv)."""
    return _render(results, validate_table(table_def), notes=[])


def _render(results: Sequence[Mapping[str, Any]], table: dict[str, Any], notes: list[str]) -> tuple[str, pd.DataFrame]:
    cells = group_cells(results, table)
    frame = pd.DataFrame([_cell_record(cell, cells, table) for cell in cells])
    for col in ("n", "ci_n", "params", "flops", "jobs"):
        with contextlib.suppress(TypeError, ValueError):  # non-integer sizes stay as written
            frame[col] = pd.to_numeric(frame[col]).astype("Int64")
    lines = [f"## {table['title']}", ""]
    unit = "%, " if plots.metric_base(table["metric"]).endswith("_err") else ""
    interval = (
        f"paired t-interval over shared `{table['paired_by']}` values when at least 2 exist, else Welch's t-interval"
        if table["paired_by"]
        else "Welch's t-interval over seeds"
    )
    paired_note = f" (mean of per-{table['paired_by']} differences when paired)" if table["paired_by"] else ""
    lines.append(
        f"Metric: `{table['metric']}` ({unit}lower is better). Δ = cell − row baseline{paired_note}; 95% CI: "
        f"{interval}. Paper ordering: whether the CI excludes 0 on the side the paper's numbers predict."
    )
    lines.append("")
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join(["---"] * 2 + ["---:"] * 3 + ["---"] + ["---:"] * 2) + "|")
    previous_row = None
    for record in frame.to_dict("records"):
        row_label = record["row"] if record["row"] != previous_row else ""
        previous_row = record["row"]
        values = [
            row_label,
            record["cell"],
            _num(record["paper"]),
            record["measured"],
            record["delta_text"],
            record["verdict"],
            _human(record["params"]),
            _human(record["flops"]),
        ]
        lines.append("| " + " | ".join(_md_escape(str(v)) for v in values) + " |")
    notes = [*_job_notes(results, table), *notes]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n", frame.drop(columns=["measured", "delta_text"])


def _cell_record(cell: CellJobs, cells: Sequence[CellJobs], table: dict[str, Any]) -> dict[str, Any]:
    summary = summarize(cell.values)
    base = _baseline_of(cell, cells)
    diff: Difference | None = None
    if base is not None and not cell.is_baseline and cell.values and base.values:
        paired = table["paired_by"] is not None
        diff = difference(
            cell.values,
            base.values,
            cell.keys if paired else None,
            base.keys if paired else None,
        )
    if base is None and not cell.is_baseline:
        delta_text, state = "no baseline", "no baseline"
    else:
        state = verdict(diff, cell.paper, base.paper if base else None, is_baseline=cell.is_baseline)
        delta_text = _delta_text(diff, state)
    excluded = ", ".join(f"{n} {status}" for status, n in cell.counts.items())
    why = _omitted_why(cell, table)
    if why is not None:
        excluded, state, delta_text = f"not run: {why}", "not run", "n/a"
    return {
        "row": cell.row,
        "cell": cell.label,
        "paper": cell.paper,
        "mean": summary.mean,
        "std": summary.std,
        "n": summary.n,
        "delta": diff.delta if diff else None,
        "ci_low": diff.low if diff else None,
        "ci_high": diff.high if diff else None,
        "ci_method": diff.method if diff and diff.has_interval else None,
        "ci_n": diff.n if diff else None,
        "verdict": state,
        "params": cell.first_model_value("params"),
        "flops": cell.first_model_value("flops"),
        "jobs": len(cell.jobs),
        "excluded": excluded,
        "measured": _measured_text(summary.mean, summary.std, summary.n, excluded),
        "delta_text": delta_text,
    }


def _baseline_of(cell: CellJobs, cells: Sequence[CellJobs]) -> CellJobs | None:
    return next((c for c in cells if c.row == cell.row and c.is_baseline), None)


def _measured_text(mean: float | None, std: float | None, n: int, excluded: str) -> str:
    if mean is None:
        return excluded or "missing"
    text = f"{mean:.2f} ± {std:.2f} (n={n})" if std is not None else f"{mean:.2f} (n={n})"
    return f"{text}; {excluded}" if excluded else text


def _delta_text(diff: Difference | None, state: str) -> str:
    if state == BASELINE:
        return "baseline"
    if diff is None or diff.delta is None:
        return "n/a"
    if not diff.has_interval:
        return f"{diff.delta:+.2f} [n/a: too few seeds]"
    return f"{diff.delta:+.2f} [{diff.low:+.2f}, {diff.high:+.2f}] ({diff.method}, n={diff.n})"


def _job_notes(results: Sequence[Mapping[str, Any]], table: dict[str, Any]) -> list[str]:
    notes = []
    unreadable = [r for r in results if r.get("status") == UNREADABLE]
    for res in unreadable:
        notes.append(f"unreadable results.json in `{res.get('_dir')}`: {res.get('error')}")
    all_matches = [cell["match"] for row in table["rows"] for cell in row["cells"]]
    unmatched = [r for r in results if r.get("status") != UNREADABLE and not any(matches(r, m) for m in all_matches)]
    if unmatched:
        notes.append(f"{len(unmatched)} job(s) of the sweep match no cell of this table")
    return notes


def write_report(sweep_dir: str | Path, table_def: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Write table.md, table.csv, curves.png, size.png and bars.png into `out_dir`; return what was written.

    A plot without data is skipped with a note in table.md (and a stale PNG of an
    earlier report removed), so the folder never shows a figure the table does not
    back. Files are written atomically: a crashed report never leaves half a file.
    """
    table = validate_table(table_def)
    results = load_results(sweep_dir)
    if not results:
        raise DataError(f"no results.json under {sweep_dir} (has the sweep run yet?)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = group_cells(results, table)
    metric = table["metric"]
    figures = {
        "curves.png": (
            plots.curves_figure(cells, metric),
            f"no metrics.csv with train/ or val/{plots.metric_base(metric)} for any completed job",
        ),
        "size.png": (
            plots.size_figure(cells, metric, table["x_axis"]),
            f"no cell has both a measured value and model.{table['x_axis']}",
        ),
        "bars.png": (plots.bars_figure(cells, metric, table["title"]), "no cell has a measured value"),
    }
    written_plots, notes = [], []
    for name, (fig, reason) in figures.items():
        if fig is None:
            (out / name).unlink(missing_ok=True)
            notes.append(f"{name} skipped: {reason}")
        else:
            written_plots.append(plots.save_figure(fig, out / name))
    markdown, frame = _render(results, table, notes)
    md_path = write_text_atomic(out / "table.md", markdown)
    csv_path = write_text_atomic(out / "table.csv", frame.to_csv(index=False))
    return [md_path, csv_path, *written_plots]


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    value = float(value)
    return f"{value:.1f}" if round(value, 1) == value else f"{value:.2f}"


def _human(value: Any) -> str:
    """25557032 -> 25.56M; FLOPs in multiply-adds the same way."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return "–"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:g}"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")
