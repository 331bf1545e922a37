"""Runs compared across sweeps: one row per cell (the runs that share every setting but the seed), with n and
mean ± SD, showing only the settings that differ between the rows.

    python -m resnext_lab.compare DIR... [--where KEY=VALUE]... [--by KEY]... [--metric M]
                                  [--contrast A B]... [--min-effect X] [--out FOLDER]

An ablation spans several sweeps (a table, a follow-up with more seeds, another init or scale); the report reads
one. Every results.json under the folders is read (`results.load_sweep`, with eval.json's re-scorings), a run's
settings from its `.hydra/config.yaml` (the model, data, optim and trainer groups, the experiment and its scale).
Runs of one cell found in several sweeps are pooled; `--by` makes the cells the values of the named settings
alone (what else differs inside a cell is said). A comparison is only as fair as its runs are alike: rows that
differ in precision, commit, data or scale are warned about. `--contrast A B` tests cell A against cell B
(a row number, or KEY=VALUE[,KEY=VALUE] naming one row) with the report's statistics (`report.contrasts`): a
t-test over seeds, paired where they share seeds, Holm over the contrasts given, TOST at `--min-effect`.
Writes compare.md and compare.csv (default: the folders' common parent/compare).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from resnext_lab import render
from resnext_lab.errors import ConfigError
from resnext_lab.evaluation import with_evaluations
from resnext_lab.files import write_text_atomic
from resnext_lab.overrides import RUN_INVARIANT, override_values, register_resolvers
from resnext_lab.report.contrasts import Outcome, Side, evaluate, interval_text, markdown
from resnext_lab.report.stats import summarize
from resnext_lab.results import load_sweep

GROUPS = ("model", "data", "optim", "trainer")
TOP_LEVEL = ("experiment_name", "scale_name", "deterministic")
#: how a run was read or shown, not what it computed: never a reason to split a cell
READING = frozenset(
    {
        "data.root",
        "data.download",
        "data.num_workers",
        "data.pin_memory",
        "data.persistent_workers",
        "trainer.log_every_n_steps",
        "trainer.check_finite_every_n_steps",
    }
)
#: what makes two runs' numbers hard to compare, though both ran the "same" cell
WARN_ON = {"precision": "precision", "commit": "commit", "data": "data", "scale_name": "scale"}


@dataclasses.dataclass
class Run:
    """One results.json: where it was found, its settings as text, its seed, status and the metric's value."""

    folder: Path
    sweep: int  # the index of the folder (DIR) it was found under, from 1
    settings: dict[str, str]
    seed: Any
    status: str
    value: float | None
    precision: str
    commit: str


@dataclasses.dataclass
class Cell:
    label: dict[str, str]  # the settings that name the cell
    runs: list[Run]

    @property
    def usable(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed" and r.value is not None]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return str(value)


def _flatten(node: Mapping[str, Any], prefix: str) -> dict[str, str]:
    out = {}
    for key, value in node.items():
        name = f"{prefix}.{key}"
        out.update(_flatten(value, name) if isinstance(value, Mapping) else {name: _text(value)})
    return out


def run_settings(result: Mapping[str, Any]) -> dict[str, str]:
    """What a run computed, as flat text: its config's groups, else (no .hydra/config.yaml) its overrides and the
    network its results.json records."""
    path = Path(result["_dir"]) / ".hydra" / "config.yaml"
    settings: dict[str, str] = {}
    try:
        register_resolvers()
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception:  # missing, unreadable, or an interpolation that no longer resolves
        config = None
    if isinstance(config, dict):
        for group in GROUPS:
            if isinstance(config.get(group), Mapping):
                settings.update(_flatten(config[group], group))
        settings.update({k: _text(config.get(k)) for k in TOP_LEVEL if k in config})
    else:
        model = result.get("model") if isinstance(result.get("model"), Mapping) else {}
        settings.update({f"model.{k}": _text(v) for k, v in model.items() if not isinstance(v, Mapping)})
        settings.update({k: v for k, v in override_values(result.get("overrides") or []).items() if k != "seed"})
        settings.update({k: _text(result.get(k.removesuffix("_name"))) for k in ("experiment_name", "scale_name")})
    return {k: v for k, v in settings.items() if k not in RUN_INVARIANT and k not in READING}


def load_runs(folders: Sequence[Path], metric: str) -> list[Run]:
    runs = []
    for index, folder in enumerate(folders, start=1):
        if not Path(folder).is_dir():
            raise ConfigError(f"{folder}: no such folder (pass folders that sweeps or runs wrote)")
        for result in load_sweep(folder):
            result = with_evaluations(result)
            metrics = result.get("metrics") if isinstance(result.get("metrics"), Mapping) else {}
            value = metrics.get(metric)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            precision = (
                (result.get("precision") or {}).get("used") if isinstance(result.get("precision"), dict) else None
            )
            runs.append(
                Run(
                    folder=Path(result["_dir"]),
                    sweep=index,
                    settings=run_settings(result),
                    seed=result.get("seed"),
                    status=str(result.get("status")),
                    value=float(value) if ok else None,
                    precision=str(precision or "unknown"),
                    commit=str(result.get("git_commit") or "unknown")[:10],
                )
            )
    return runs


def _normal(value: str) -> str:
    return value.lower() if value.lower() in ("true", "false", "null", "none") else value


def parse_pairs(text: str, option: str) -> dict[str, str]:
    """KEY=VALUE[,KEY=VALUE] as {key: value}; one line naming `option` when it is not that."""
    pairs = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} {text!r}: must be KEY=VALUE (several joined by commas)")
        pairs[key.strip()] = _normal(value.strip())
    return pairs


def select(runs: Iterable[Run], where: Sequence[str]) -> list[Run]:
    wanted: dict[str, str] = {}
    for text in where:
        wanted.update(parse_pairs(text, "--where"))
    runs = list(runs)
    known = {k for r in runs for k in r.settings}
    for key in wanted:
        if key not in known:
            raise ConfigError(f"--where {key}=...: no run has the setting {key} (e.g. model.cardinality, data.name)")
    return [r for r in runs if all(_normal(r.settings.get(k, "")) == v for k, v in wanted.items())]


def cells(runs: Sequence[Run], by: Sequence[str]) -> tuple[list[str], list[Cell]]:
    """(the settings the rows differ in, the cells ordered by their values of those settings)."""
    known = {k for r in runs for k in r.settings}
    for key in by:
        if key not in known:
            raise ConfigError(f"--by {key}: no run has the setting {key} (e.g. model.init, model.cardinality)")
    found: dict[tuple[tuple[str, str], ...], Cell] = {}
    for run in runs:
        keys = by or sorted(run.settings)
        label = tuple((k, run.settings.get(k, "-")) for k in keys)
        found.setdefault(label, Cell(dict(label), [])).runs.append(run)
    groups = list(found.values())
    columns = list(by) or sorted({k for g in groups for k in g.label if len({h.label.get(k, "-") for h in groups}) > 1})
    return columns, sorted(groups, key=lambda g: [_order(g.label.get(c, "-")) for c in columns])


def _order(text: str) -> tuple[int, float, str]:
    """Numbers by value, before any text; text as written."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def warnings(groups: Sequence[Cell], by: Sequence[str]) -> list[str]:
    """What makes the rows hard to compare: precision, commit, data or scale differ between them; and, with
    --by, the settings that differ between the runs pooled in one cell."""
    out = []
    runs = [r for g in groups for r in g.usable]

    def value(run: Run, what: str) -> str:
        if what == "data":
            return ", ".join(
                f"{k.split('.', 1)[1]}={v}" for k, v in sorted(run.settings.items()) if k.startswith("data.")
            )
        return getattr(run, what) if what in ("precision", "commit") else run.settings.get(what, "-")

    for what, name in WARN_ON.items():
        seen: dict[str, list[int]] = {}
        for i, g in enumerate(groups, start=1):
            for v in dict.fromkeys(value(r, what) for r in g.usable):
                seen.setdefault(v, []).append(i)
        if len(seen) > 1:
            where = "; ".join(f"{v} (rows {', '.join(map(str, rows))})" for v, rows in seen.items())
            if what == "data":
                keys = sorted({k for r in runs for k in r.settings if k.startswith("data.")})
                differ = [k for k in keys if len({r.settings.get(k) for r in runs}) > 1]
                where = ", ".join(differ)
            out.append(f"the compared runs differ in {name}: {where}")
    for i, g in enumerate(groups, start=1):
        if by:
            keys = sorted({k for r in g.runs for k in r.settings} - set(by))
            differ = [k for k in keys if len({r.settings.get(k) for r in g.runs}) > 1]
            if differ:
                out.append(f"row {i} pools runs that differ in {', '.join(differ)}")
    return out


def find_cell(text: str, groups: Sequence[Cell]) -> int:
    """The index of the one cell `text` names: a row number, or KEY=VALUE[,KEY=VALUE]."""
    if text.isdigit():
        if not 1 <= int(text) <= len(groups):
            raise ConfigError(f"--contrast {text}: there are rows 1 to {len(groups)}")
        return int(text) - 1
    wanted = parse_pairs(text, "--contrast")
    hits = [
        i
        for i, g in enumerate(groups)
        if all(_normal(g.runs[0].settings.get(k, g.label.get(k, ""))) == v for k, v in wanted.items())
    ]
    if len(hits) != 1:
        raise ConfigError(
            f"--contrast {text!r}: names {len(hits)} rows ({', '.join(str(i + 1) for i in hits) or 'none'}); "
            "it must name one: give a row number or more settings"
        )
    return hits[0]


def _mean_sd(values: Sequence[float]) -> str:
    s = summarize(values)
    if s.mean is None:
        return "-"
    return f"{s.mean:.2f} ± {s.std:.2f}" if s.std is not None else f"{s.mean:.2f} ± -"


def table(columns: Sequence[str], groups: Sequence[Cell], metric: str) -> tuple[list[str], list[list[str]]]:
    head = ["row", *columns, "n", f"{metric} mean ± SD", "not completed", "sweeps"]
    rows = []
    for i, g in enumerate(groups, start=1):
        states: dict[str, int] = {}
        for r in g.runs:
            if r not in g.usable:
                state = "no metric" if r.status == "completed" else r.status
                states[state] = states.get(state, 0) + 1
        rows.append(
            [
                str(i),
                *(g.label.get(c, g.runs[0].settings.get(c, "-")) for c in columns),
                str(len(g.usable)),
                _mean_sd([r.value for r in g.usable if r.value is not None]),
                ", ".join(f"{n} {s}" for s, n in states.items()),
                ",".join(str(s) for s in sorted({r.sweep for r in g.runs})),
            ]
        )
    return head, rows


def contrast(
    pairs: Sequence[tuple[str, str]], groups: Sequence[Cell], min_effect: float | None, alpha: float
) -> list[Outcome]:
    """Each (A, B) tested as A minus B, paired by seed where they share seeds, Holm over them all (one family)."""
    sides = []
    for a, b in pairs:
        ia, ib = find_cell(a, groups), find_cell(b, groups)
        ga, gb = groups[ia], groups[ib]
        sides.append(
            (
                Side(f"row {ia + 1}", [r.value for r in ga.usable], [r.seed for r in ga.usable]),  # type: ignore[misc]
                Side(f"row {ib + 1}", [r.value for r in gb.usable], [r.seed for r in gb.usable]),  # type: ignore[misc]
                "contrasts",
            )
        )
    return evaluate(sides, min_effect=min_effect, alpha=alpha)


def main(argv: Sequence[str] | None = None) -> int:
    """Print and write the comparison; 0, or 2 with one line for input a user can fix."""
    parser = argparse.ArgumentParser(
        prog="python -m resnext_lab.compare",
        description="Compare runs across sweeps: one row per cell, n, mean ± SD, only the settings that differ.",
    )
    parser.add_argument("folders", nargs="+", type=Path, help="folders with results.json files below them (any depth)")
    parser.add_argument("--where", action="append", default=[], help="keep runs with KEY=VALUE (repeatable)")
    parser.add_argument("--by", action="append", default=[], help="cells by this setting alone (repeatable)")
    parser.add_argument(
        "--metric", default="test/top1_err", help="default test/top1_err; eval/test/top1_err: task=eval"
    )
    parser.add_argument(
        "--contrast", nargs=2, action="append", default=[], metavar=("A", "B"), help="test row A against row B"
    )
    parser.add_argument("--min-effect", type=float, help="the contrasts' equivalence margin (error points)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the contrasts (Holm)")
    parser.add_argument("--out", type=Path, help="where compare.md and compare.csv go (default: COMMON_PARENT/compare)")
    args = parser.parse_args(argv)
    try:
        runs = select(load_runs(args.folders, args.metric), args.where)
        if not runs:
            raise ConfigError("no results.json under the folders" + (" matches --where" if args.where else ""))
        columns, groups = cells(runs, args.by)
        head, rows = table(columns, groups, args.metric)
        notes = warnings(groups, args.by)
        outcomes = contrast(args.contrast, groups, args.min_effect, args.alpha) if args.contrast else []
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sweeps = [f"{i}: {f}" for i, f in enumerate(args.folders, start=1)]
    right = ("row", "n", f"{args.metric} mean ± SD")
    print(
        render.terminal(
            head, rows, title=f"{len(runs)} runs, {len(groups)} rows; sweeps {'; '.join(sweeps)}", right=right
        )
    )
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if outcomes:
        for o in outcomes:
            p = "-" if o.p_adj is None else f"{o.p_adj:.3g}"
            print(f"contrast {o.name}: Δ {interval_text(o)}, p (Holm) {p}: {o.verdict}")
    out = args.out or Path(os.path.commonpath([str(f.resolve()) for f in args.folders])) / "compare"
    for path in write(out, head, rows, notes, outcomes, sweeps, args):
        print(f"wrote {path}")
    return 0


def write(
    out: Path,
    head: list[str],
    rows: list[list[str]],
    notes: list[str],
    outcomes: list[Outcome],
    sweeps: list[str],
    args: Any,
) -> list[Path]:
    """compare.md (the table, the warnings, the contrasts) and compare.csv (the table)."""
    lines = [
        f"# Comparison: {args.metric}",
        "",
        "Sweeps: " + "; ".join(f"`{s}`" for s in sweeps) + ".",
        "Filters: "
        + (", ".join(f"`{w}`" for w in args.where) or "none")
        + "; rows by: "
        + (", ".join(f"`{b}`" for b in args.by) or "every setting but the seed")
        + ".",
        "",
        *render.markdown(head, rows, right=("row", "n", f"{args.metric} mean ± SD")),
    ]
    if notes:
        lines += ["", *(f"- warning: {n}" for n in notes)]
    if outcomes:
        lines += ["", "## Contrasts", "", *markdown(outcomes, args.min_effect, args.alpha)]
    written = [write_text_atomic(out / "compare.md", "\n".join(lines) + "\n")]
    written.append(write_text_atomic(out / "compare.csv", pd.DataFrame(rows, columns=head).to_csv(index=False)))
    return written


if __name__ == "__main__":
    sys.exit(main())
