"""A paper table rebuilt from a sweep: each cell's seeds beside the paper's number, then the table's
declared contrasts with Holm-adjusted verdicts (`contrasts.py`).

The layout follows the paper's tables (rows of cells, e.g. 50-layer: 1x64d ...
32x4d) with one line per cell: the network trained at this scale, its params and
FLOPs against the row's declared reference. Nothing is dropped: a cell with no job
reads "missing", failed, diverged and excluded jobs are counted in the line (the
excluded listed with their reason), unreadable result files are listed under the
table, and every seed's value is written to per_seed.csv.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from resnext_lab import render
from resnext_lab.errors import DataError
from resnext_lab.files import write_text_atomic
from resnext_lab.report import plots
from resnext_lab.report.checks import ROW_EXCLUDED_FRACTION, exclusion_rule
from resnext_lab.report.collect import UNREADABLE, CellJobs, group_cells, load_results, matches
from resnext_lab.report.contrasts import (
    COMPLEXITY_TOLERANCE,
    Outcome,
    Side,
    complexity_delta,
    delta_text,
    evaluate,
    markdown,
    per_seed,
)
from resnext_lab.report.prereg_status import status
from resnext_lab.report.stats import BASELINE, MISSING, NOT_INTERPRETABLE, NOT_RUN, summarize
from resnext_lab.report.table_def import cell_names, validate_table

COLUMNS = (
    "Row",
    "Cell",
    "Trained",
    "Paper",
    "Measured mean ± std (n)",
    "State",
    "Params",
    "Δparams",
    "FLOPs",
    "ΔFLOPs",
)
RIGHT = ("Paper", "Measured mean ± std (n)", "Params", "Δparams", "FLOPs", "ΔFLOPs")


def _omitted_why(cell: CellJobs, table: dict[str, Any]) -> str | None:
    """Why a cell with no jobs was left out at this scale (`report.omitted`), or None."""
    if cell.jobs:
        return None
    for entry in table.get("omitted", []):
        if all(str(cell.match.get(key)) == str(value) for key, value in entry["match"].items()):
            return entry["why"]
    return None


def table_markdown(results: Sequence[Mapping[str, Any]], table_def: Mapping[str, Any]) -> tuple[str, pd.DataFrame]:
    """The table as markdown and as a DataFrame (one row per cell, raw numbers, for table.csv)."""
    markdown, frame, _, _ = _render(results, validate_table(table_def), notes=[])
    return markdown, frame


def analyse(results: Sequence[Mapping[str, Any]], table: dict[str, Any]) -> tuple[list[CellJobs], list[Outcome]]:
    """The cells of a validated table and its declared contrasts, tested (exclusion rule applied)."""
    cells = group_cells(results, table, exclusion_rule(table["exclude"]))
    sides = {}
    names = cell_names(table["rows"])
    for cell in cells:
        sides[names[(cell.row, cell.label)]] = Side(
            names[(cell.row, cell.label)],
            cell.values,
            cell.keys,
            cell.paper,
            _row_interpretable(cell.row, cells),
            _omitted_why(cell, table),
        )
    pairs = [(sides[c["cell"]], sides[c["vs"]], c["family"]) for c in table["contrasts"]]
    outcomes = evaluate(
        pairs,
        test=table["test"],
        min_effect=table["min_effect"],
        alpha=table["alpha"],
        paired=table["paired_by"] is not None,
    )
    return cells, outcomes


def _row_interpretable(row: str, cells: Sequence[CellJobs]) -> bool:
    """False when the exclusion rule removed ROW_EXCLUDED_FRACTION or more of the row's completed jobs."""
    mine = [c for c in cells if c.row == row]
    completed = sum(len(c.values) + len(c.excluded) for c in mine)
    return not completed or sum(len(c.excluded) for c in mine) < ROW_EXCLUDED_FRACTION * completed


def _render(
    results: Sequence[Mapping[str, Any]], table: dict[str, Any], notes: list[str], declared: Sequence[str] = ()
) -> tuple[str, pd.DataFrame, list[Outcome], list[CellJobs]]:
    cells, outcomes = analyse(results, table)
    frame = pd.DataFrame([_cell_record(cell, cells, table) for cell in cells])
    for col in ("n", "params", "flops", "jobs"):
        with contextlib.suppress(TypeError, ValueError):  # non-integer sizes stay as written
            frame[col] = pd.to_numeric(frame[col]).astype("Int64")
    unit = "%, " if plots.metric_base(table["metric"]).endswith("_err") else ""
    rule = table["exclude"] or "none"
    lines = [
        f"## {table['title']}",
        "",
        f"Metric: `{table['metric']}` ({unit}lower is better), mean ± std over seeds (n usable jobs). "
        f"Trained: the network at this scale (layers, C x d) beside the paper's name. Δparams and ΔFLOPs: "
        f"against the row baseline's (times the cell's declared multiple), `!` beyond "
        f"±{COMPLEXITY_TOLERANCE:.0%}. Exclusion rule (declared before the run): `{rule}`; a row that loses "
        f"{ROW_EXCLUDED_FRACTION:.0%} or more of its jobs to it is not interpretable. "
        f"Declared minimum effect: {_points(table['min_effect'])}.",
        "",
        *(f"- {line}" for line in declared),
        *([""] if declared else []),
    ]
    rows = []
    previous_row = None
    for record in frame.to_dict("records"):
        row_label = record["row"] if record["row"] != previous_row else ""
        previous_row = record["row"]
        values = [
            row_label,
            record["cell"],
            record["trained"],
            _num(record["paper"]),
            record["measured"],
            record["state"],
            _human(record["params"]),
            record["params_text"],
            _human(record["flops"]),
            record["flops_text"],
        ]
        rows.append(values)
    lines += render.markdown(COLUMNS, rows, right=RIGHT)
    lines += ["", "### Contrasts", "", *markdown(outcomes, table["min_effect"], table["alpha"])]
    excluded = [f"{c.row} / {c.label}, seed {seed}: {why}" for c in cells for seed, why in c.excluded]
    if excluded:
        lines += ["", f"Excluded by `{rule}` ({len(excluded)} jobs):", ""] + [f"- {e}" for e in excluded]
    notes = [*_job_notes(results, table), *notes]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    drop = ["measured", "params_text", "flops_text"]
    return "\n".join(lines) + "\n", frame.drop(columns=drop), outcomes, cells


def _cell_record(cell: CellJobs, cells: Sequence[CellJobs], table: dict[str, Any]) -> dict[str, Any]:
    summary = summarize(cell.values)
    base = _baseline_of(cell, cells)
    excluded = ", ".join(f"{n} {status}" for status, n in cell.counts.items())
    state = BASELINE if cell.is_baseline else ""
    if not _row_interpretable(cell.row, cells):
        state = NOT_INTERPRETABLE
    elif not cell.values:
        state = MISSING
    why = _omitted_why(cell, table)
    if why is not None:
        excluded, state = f"not run: {why}", NOT_RUN
    params, flops = cell.first_model_value("params"), cell.first_model_value("flops")
    ref_params = base.first_model_value("params") if base is not None else None
    ref_flops = base.first_model_value("flops") if base is not None else None
    d_params = complexity_delta(params, ref_params, cell.complexity)
    d_flops = complexity_delta(flops, ref_flops, cell.complexity)
    return {
        "row": cell.row,
        "cell": cell.label,
        "trained": cell.trained(),
        "paper": cell.paper,
        "mean": summary.mean,
        "std": summary.std,
        "n": summary.n,
        "state": state,
        "params": params,
        "flops": flops,
        "complexity_multiple": cell.complexity,
        "params_vs_reference": d_params,
        "flops_vs_reference": d_flops,
        "complexity_flagged": any(d is not None and abs(d) > COMPLEXITY_TOLERANCE for d in (d_params, d_flops)),
        "jobs": len(cell.jobs),
        "excluded": excluded,
        "measured": _measured_text(summary.mean, summary.std, summary.n, excluded),
        "params_text": "ref" if cell.is_baseline else delta_text(d_params),
        "flops_text": "ref" if cell.is_baseline else delta_text(d_flops),
    }


def _points(value: float | None) -> str:
    return "none" if value is None else f"{value:g} points"


def seed_frame(cells: Sequence[CellJobs], metrics: Sequence[str]) -> pd.DataFrame:
    """Long form, one line per (cell, seed, metric): every completed job's value, excluded ones marked."""
    rows = [
        r for cell in cells for r in per_seed({"row": cell.row, "cell": cell.label}, cell.jobs, cell.excluded, metrics)
    ]
    return pd.DataFrame(rows, columns=["row", "cell", "seed", "metric", "value", "excluded"])


def _baseline_of(cell: CellJobs, cells: Sequence[CellJobs]) -> CellJobs | None:
    return next((c for c in cells if c.row == cell.row and c.is_baseline), None)


def _measured_text(mean: float | None, std: float | None, n: int, excluded: str) -> str:
    if mean is None:
        return excluded or "missing"
    text = f"{mean:.2f} ± {std:.2f} (n={n})" if std is not None else f"{mean:.2f} (n={n})"
    return f"{text}; {excluded}" if excluded else text


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
    declared = status(results, {k: table[k] for k in ("min_effect", "test", "exclude", "alpha")})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = group_cells(results, table, exclusion_rule(table["exclude"]))
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
    text, frame, outcomes, cells = _render(results, table, notes, declared)
    seeds = seed_frame(cells, list(dict.fromkeys([metric, "test/top1_err", "test/top5_err"])))
    text += (
        "\nPer-seed values: `per_seed.csv` (row, cell, seed, metric, value, excluded); contrasts: `contrasts.csv`.\n"
    )
    md_path = write_text_atomic(out / "table.md", text)
    csv_path = write_text_atomic(out / "table.csv", frame.to_csv(index=False))
    seeds_path = write_text_atomic(out / "per_seed.csv", seeds.to_csv(index=False))
    contrasts_path = write_text_atomic(
        out / "contrasts.csv", pd.DataFrame([o.record() for o in outcomes]).to_csv(index=False)
    )
    return [md_path, csv_path, seeds_path, contrasts_path, *written_plots]


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
