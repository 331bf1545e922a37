"""A paper table's definition, the `report:` node of an experiment file: its rows of cells (each with the
paper's number and the results.json keys that select its jobs), its declared contrasts and analysis,
checked before anything is computed; a bad field is one ConfigError line naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resnext_lab.errors import ConfigError, first_line
from resnext_lab.report import stats
from resnext_lab.report.checks import exclusion_rule

X_AXES = ("params", "flops")


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
    analysis = validate_analysis(table_def)
    return {
        "title": str(table_def.get("title") or metric),
        "metric": metric,
        "rows": clean_rows,
        "paired_by": paired_by,
        "x_axis": x_axis,
        "omitted": _validate_omitted(table_def.get("omitted")),
        **analysis,
        "contrasts": _validate_contrasts(table_def.get("contrasts"), clean_rows),
    }


def validate_analysis(node: Mapping[str, Any]) -> dict[str, Any]:
    """The analysis a `report:` node declares before its sweep runs: min effect, alpha, test, exclusion rule."""
    min_effect = node.get("min_effect")
    if min_effect is not None and (
        isinstance(min_effect, bool) or not isinstance(min_effect, int | float) or not min_effect > 0
    ):
        raise ConfigError(f"report.min_effect={min_effect!r}: must be a number > 0 (error points) or null")
    alpha = node.get("alpha", stats.ALPHA)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise ConfigError(f"report.alpha={alpha!r}: must be a number in (0, 1)")
    test = node.get("test") or stats.DIFFERENCE
    if test not in stats.TESTS:
        raise ConfigError(f"report.test={test!r}: must be one of {', '.join(stats.TESTS)}")
    if test == stats.EQUIVALENCE and min_effect is None:
        raise ConfigError("report.test=equivalence: needs report.min_effect, the equivalence margin (error points)")
    exclude = node.get("exclude")
    exclusion_rule(exclude)
    return {
        "min_effect": None if min_effect is None else float(min_effect),
        "alpha": float(alpha),
        "test": test,
        "exclude": exclude,
    }


def _validate_contrasts(contrasts: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`report.contrasts`: `[{cell, vs, family}]`, cells named by label ("row / label" where a label repeats).

    Left out, every cell is compared with its row's baseline, in one family `primary`.
    """
    names = cell_names(rows)
    if contrasts is None:
        return [
            {"cell": names[(r["label"], c["label"])], "vs": names[(r["label"], r["baseline"])], "family": "primary"}
            for r in rows
            if r["baseline"] is not None
            for c in r["cells"]
            if c["label"] != r["baseline"]
        ]
    if not isinstance(contrasts, Sequence) or isinstance(contrasts, str) or not contrasts:
        raise ConfigError("report.contrasts: must be a non-empty list of {cell, vs, family}")
    known = set(names.values())
    clean = []
    for i, c in enumerate(contrasts):
        if not isinstance(c, Mapping) or c.get("cell") not in known or c.get("vs") not in known or c["cell"] == c["vs"]:
            raise ConfigError(
                f"report.contrasts[{i}]={c!r}: needs cell and vs, two different cells of {', '.join(sorted(known))}"
            )
        clean.append({"cell": str(c["cell"]), "vs": str(c["vs"]), "family": str(c.get("family") or "primary")})
    return clean


def cell_names(rows: list[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(row, cell label) -> the name a contrast uses: the label, or "row / label" where labels repeat."""
    labels = [c["label"] for r in rows for c in r["cells"]]
    return {
        (r["label"], c["label"]): c["label"] if labels.count(c["label"]) == 1 else f"{r['label']} / {c['label']}"
        for r in rows
        for c in r["cells"]
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
        factor = cell.get("complexity", 1)
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 0:
            raise ConfigError(
                f"{cwhere}.complexity={factor!r}: must be a number > 0, the cell's complexity as a "
                "multiple of the row baseline's"
            )
        clean_cells.append(
            {
                "label": str(cell["label"]),
                "match": dict(match),
                "paper": None if paper is None else float(paper),
                "complexity": float(factor),
            }
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
