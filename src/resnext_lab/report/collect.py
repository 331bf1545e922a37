"""Read a sweep folder back: one `results.json` per job, plus per-epoch curves.

Every job a sweep started is kept, whatever state its results file is in: a
report that quietly drops crashed or half-written jobs overstates how well an
ablation went. Unreadable files come back as results with status "unreadable".
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from resnext_lab.errors import DataError
from resnext_lab.evaluation import with_evaluations
from resnext_lab.results import UNREADABLE, load_sweep

_MISSING = object()


def load_results(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """All `results.json` files at any depth below `sweep_dir`, sorted by path (`results.load_sweep`).

    Each dict gets `_dir` (the job folder, a Path). A file that cannot be parsed,
    is not a JSON object, or has no `status` becomes `{"status": "unreadable",
    "error": <why>, "_dir": ...}` so the report can list it. A job scored again by task=eval has its
    eval.json's metrics (`eval/test/top1_err`, ...) beside its own.
    """
    root = Path(sweep_dir)
    if not root.is_dir():
        raise DataError(f"sweep folder {root} does not exist (pass the folder a sweep wrote its jobs into)")
    return [with_evaluations(r) for r in load_sweep(root)]


def lookup(result: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """The value at a dotted path (`model.depth` -> result["model"]["depth"]), or `default`."""
    node: Any = result
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def metric_value(result: Mapping[str, Any], metric: str) -> float | None:
    """The finite value of `metrics[metric]`, or None when absent, non-numeric or NaN/inf."""
    metrics = result.get("metrics")
    value = metrics.get(metric) if isinstance(metrics, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def load_curves(result: Mapping[str, Any]) -> pd.DataFrame:
    """Per-epoch metrics from the job's Lightning `metrics.csv`, indexed by epoch.

    CSVLogger writes sparse rows (train and val steps log separately), so rows are
    grouped by epoch keeping the last non-null value of each column. The `step`
    column is dropped. Missing or unreadable files give an empty frame: curves are
    optional, the final numbers in results.json are not.
    """
    rel = result.get("metrics_csv")
    job_dir = result.get("_dir")
    if not rel or job_dir is None:
        return pd.DataFrame()
    path = Path(job_dir) / str(rel)
    try:
        raw = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return pd.DataFrame()
    if "epoch" not in raw.columns:
        return pd.DataFrame()
    raw = raw.drop(columns=[c for c in ("step",) if c in raw.columns])
    raw["epoch"] = pd.to_numeric(raw["epoch"], errors="coerce")
    raw = raw.dropna(subset=["epoch"])
    raw["epoch"] = raw["epoch"].astype(int)
    numeric = raw.drop(columns="epoch").apply(pd.to_numeric, errors="coerce")
    numeric["epoch"] = raw["epoch"]
    return numeric.groupby("epoch").last().sort_index()


def results_frame(results: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per job: folder, status, error, seed, experiment, scale, `model.*` and `metrics.*`.

    Flat columns make the sweep easy to filter and pivot in a notebook.
    """
    rows = []
    for res in results:
        row: dict[str, Any] = {
            "dir": str(res.get("_dir", "")),
            "status": res.get("status"),
            "error": res.get("error"),
            "seed": res.get("seed"),
            "experiment": res.get("experiment"),
            "scale": res.get("scale"),
            "epochs": res.get("epochs"),
            "wall_time_s": res.get("wall_time_s"),
        }
        for section in ("model", "metrics"):
            values = res.get(section)
            if isinstance(values, Mapping):
                for key, value in values.items():
                    row[f"{section}.{key}"] = value if not isinstance(value, list) else str(value)
        rows.append(row)
    return pd.DataFrame(rows)


@dataclasses.dataclass
class CellJobs:
    """The jobs of one table cell, split by what they can contribute.

    `values` and `keys` are aligned: the cell's metric for each usable job and its
    pairing key (e.g. its seed) when the table pairs by one.
    """

    row: str
    label: str
    paper: float | None
    is_baseline: bool
    jobs: list[dict[str, Any]]
    values: list[float]
    keys: list[Any]
    counts: dict[str, int]
    #: the cell's `match` of the table definition
    match: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: (seed, reason) of each completed job the table's exclusion rule removed
    excluded: list[tuple[Any, str]] = dataclasses.field(default_factory=list)
    #: the cell's complexity as a multiple of its row baseline's (paper Table 4's cells: 2)
    complexity: float = 1.0

    @property
    def usable(self) -> list[dict[str, Any]]:
        """Completed jobs with a finite metric, in the order of `values`."""
        return [job for job in self.jobs if job.get("_usable")]

    def first_model_value(self, key: str) -> Any:
        """A `model.<key>` value of the cell (params, flops, ...), from a usable job first."""
        for job in [*self.usable, *self.jobs]:
            value = lookup(job, f"model.{key}")
            if value is not None:
                return value
        return None

    def trained(self) -> str:
        """The network as this scale built it: layers, C x d, and what sets it apart (no shortcuts, a block form).

        A cell is named after the paper's network; a scale may build a smaller one (the paper's
        50 layers as 29), so tables and plots show this beside the paper's name.
        """
        depth, c, d = (self.first_model_value(k) for k in ("depth", "cardinality", "width"))
        if depth is None:
            return "–"
        text = f"{depth} layers, {c}x{d}d"
        if self.first_model_value("residual") is False:
            text += ", no shortcuts"
        block = self.first_model_value("block")
        return text + (f", {block}" if block not in (None, "grouped") else "")


def matches(result: Mapping[str, Any], match: Mapping[str, Any]) -> bool:
    """Whether every match key of a cell equals the result's value at that dotted path."""
    return all(_equal(lookup(result, key, _MISSING), want) for key, want in match.items())


def _equal(have: Any, want: Any) -> bool:
    if have is _MISSING:
        return False
    if isinstance(have, bool) != isinstance(want, bool):
        return False
    return have == want


def group_cells(
    results: Sequence[Mapping[str, Any]],
    table_def: Mapping[str, Any],
    exclude: Callable[[Mapping[str, Any]], str | None] | None = None,
) -> list[CellJobs]:
    """Assign jobs to the cells of a (validated) table definition, in table order.

    A job counts towards a cell's statistics only when it completed with a finite
    metric and the table's exclusion rule `exclude` keeps it; every other matching
    job is counted by status (a completed job whose metric is missing or NaN counts
    as "no metric", one the rule removes as "excluded", with its reason).
    """
    metric = table_def["metric"]
    paired_by = table_def.get("paired_by")
    cells = []
    for row in table_def["rows"]:
        for cell in row["cells"]:
            jobs, values, keys, excluded = [], [], [], []
            counts: dict[str, int] = {}
            for res in results:
                if res.get("status") == UNREADABLE or not matches(res, cell["match"]):
                    continue
                job = dict(res)
                value = metric_value(job, metric) if job.get("status") == "completed" else None
                state = job.get("status") if job.get("status") != "completed" or value is not None else "no metric"
                reason = exclude(job) if exclude is not None and value is not None else None
                if reason is not None:
                    excluded.append((lookup(job, "seed"), reason))
                    value, state = None, "excluded"
                job["_usable"] = value is not None
                if value is not None:
                    values.append(value)
                    keys.append(_hashable(lookup(job, paired_by)) if paired_by else None)
                else:
                    counts[str(state)] = counts.get(str(state), 0) + 1
                jobs.append(job)
            cells.append(
                CellJobs(
                    row=str(row["label"]),
                    label=str(cell["label"]),
                    paper=cell.get("paper"),
                    is_baseline=cell["label"] == row.get("baseline"),
                    jobs=jobs,
                    values=values,
                    keys=keys,
                    counts=counts,
                    match=dict(cell["match"]),
                    excluded=excluded,
                    complexity=float(cell.get("complexity", 1.0)),
                )
            )
    return cells


def _hashable(value: Any) -> Any:
    """A pairing key usable in a dict: lists become tuples, mappings their JSON text."""
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    return value
