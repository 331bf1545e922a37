"""A paper table's definition, the `report:` node of an experiment file: its rows of cells (each with the
paper's number and the results.json keys that select its jobs), its declared contrasts and analysis,
checked before anything is computed; a bad field is one ConfigError line naming it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resnext_lab.config import (
    REQUIRED,
    ReportSettings,
    Rule,
    choice,
    items,
    number,
    parse,
    setting,
    string,
    to_python,
    with_default,
)
from resnext_lab.errors import ConfigError, first_line
from resnext_lab.report import stats

X_AXES = ("params", "flops")


def _mapping(v: Any) -> bool:
    return isinstance(v, Mapping) and len(v) > 0


def _any_number(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _to_float(v: Any) -> float | None:
    return None if v is None else float(v)


MATCH = Rule(_mapping, "a non-empty mapping of results.json keys to values", dict)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cell:
    """One cell of a paper table: the jobs it selects, and the paper's number beside them."""

    label: str = setting(REQUIRED, string("a cell label"), "the cell's name, e.g. 32x4d")
    match: dict[str, Any] = setting(REQUIRED, MATCH, "results.json keys and the values that select its jobs")
    paper: float | None = setting(None, Rule(_any_number, "a number or null", _to_float), "the paper's figure")
    complexity: float = setting(
        1.0,
        number(0, open_low=True),
        "the cell's complexity as a multiple of the row baseline's (e.g. 2 for Table 4's 2x complexity)",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Row:
    """A row of cells, each compared with the row's baseline cell unless `contrasts` say otherwise."""

    label: str | None = setting(None, string("a row label", null=True), "the row's name (null: row N)")
    baseline: str | None = setting(None, string("a cell label of the row", null=True), "the row's baseline cell")
    cells: tuple[Cell, ...] = items(Cell, "the row's cells", minimum=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Contrast:
    """One declared contrast: `cell` against `vs`, tested with the others of its family under Holm."""

    cell: str = setting(REQUIRED, string("a cell name"), "the cell (its label, or row / label where labels repeat)")
    vs: str = setting(REQUIRED, string("a cell name"), "the cell it is compared with")
    family: str = setting("primary", string("a family name"), "the Holm family")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Omitted:
    """Cells a scale leaves out on purpose, and why."""

    match: dict[str, Any] = setting(REQUIRED, MATCH, "results.json keys of the cells left out")
    why: str = setting(REQUIRED, string("a reason"), "why")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TableSettings:
    """A `report:` node that is a paper table; its analysis settings are the sweep's (`ReportSettings`)."""

    open_keys: ClassVar[bool] = True  # baseline and the sweep's other report settings

    title: str | None = setting(None, string("a title", null=True), "the table's title (null: the metric)")
    metric: str = setting(REQUIRED, string("a key of results.json metrics, e.g. test/top1_err"), "the metric")
    rows: tuple[Row, ...] = items(Row, "the table's rows", minimum=1)
    paired_by: str | None = setting(
        None, string("a results.json key such as seed", null=True), "pair the seeds of two cells by this key"
    )
    x_axis: str = setting("params", choice(*X_AXES), "the complexity axis of the plots")
    omitted: tuple[Omitted, ...] = items(Omitted, "cells a scale leaves out on purpose", null=True)
    contrasts: tuple[Contrast, ...] | None = items(
        Contrast, "the declared contrasts (null: each cell against its row's baseline)", minimum=1, null=True
    )
    min_effect: float | None = with_default(ReportSettings, "min_effect", None)
    test: str = with_default(ReportSettings, "test", stats.DIFFERENCE)
    exclude: str | None = with_default(ReportSettings, "exclude", None)
    alpha: float = with_default(ReportSettings, "alpha", stats.ALPHA)


def validate_table(table_def: Mapping[str, Any]) -> dict[str, Any]:
    """Check a `report:` node against `TableSettings` and return it as a plain dict; a ConfigError names the
    bad field. Accepts an OmegaConf node as well as a dict."""
    t = parse(TableSettings, to_python(table_def), "report")
    rows = [_row(i, row) for i, row in enumerate(t.rows)]
    if t.test == stats.EQUIVALENCE and t.min_effect is None:
        raise ConfigError("report.test=equivalence: needs report.min_effect, the equivalence margin (error points)")
    return {
        "title": t.title or t.metric,
        "metric": t.metric,
        "rows": rows,
        "paired_by": t.paired_by,
        "x_axis": t.x_axis,
        "omitted": [{"match": o.match, "why": o.why} for o in t.omitted or ()],
        "min_effect": t.min_effect,
        "alpha": t.alpha,
        "test": t.test,
        "exclude": t.exclude,
        "contrasts": _contrasts(t.contrasts, rows),
    }


def _row(i: int, row: Row) -> dict[str, Any]:
    labels = [c.label for c in row.cells]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"report.rows[{i}].cells: labels must be unique, got {labels}")
    if row.baseline is not None and row.baseline not in labels:
        raise ConfigError(f"report.rows[{i}].baseline={row.baseline!r}: not one of the row's cell labels {labels}")
    return {
        "label": row.label or f"row {i + 1}",
        "baseline": row.baseline,
        "cells": [dataclasses.asdict(c) for c in row.cells],
    }


def _contrasts(contrasts: tuple[Contrast, ...] | None, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The declared contrasts, cells named by label ("row / label" where a label repeats); left out, every
    cell is compared with its row's baseline, in one family `primary`."""
    names = cell_names(rows)
    if contrasts is None:
        return [
            {"cell": names[(r["label"], c["label"])], "vs": names[(r["label"], r["baseline"])], "family": "primary"}
            for r in rows
            if r["baseline"] is not None
            for c in r["cells"]
            if c["label"] != r["baseline"]
        ]
    known = set(names.values())
    for i, c in enumerate(contrasts):
        if c.cell not in known or c.vs not in known or c.cell == c.vs:
            raise ConfigError(
                f"report.contrasts[{i}]={dataclasses.asdict(c)!r}: needs cell and vs, two different cells of "
                f"{', '.join(sorted(known))}"
            )
    return [dataclasses.asdict(c) for c in contrasts]


def cell_names(rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(row, cell label) -> the name a contrast uses: the label, or "row / label" where labels repeat."""
    labels = [c["label"] for r in rows for c in r["cells"]]
    return {
        (r["label"], c["label"]): c["label"] if labels.count(c["label"]) == 1 else f"{r['label']} / {c['label']}"
        for r in rows
        for c in r["cells"]
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
