"""The answer of any training sweep: jobs grouped by what they sweep (seeds aggregated), each group
against a baseline with a 95% CI, Holm-adjusted p and a verdict (`stats.py`), its params and FLOPs
against the baseline's, and how many seeds the declared minimum effect would need.

    python -m resnext_lab.report SWEEP_DIR             # <SWEEP_DIR>/report/report.{md,csv} and plots

Written at the end of every training multirun (`sweep.SweepSummary`). Lower error is better.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from resnext_lab.errors import ConfigError
from resnext_lab.files import write_text_atomic
from resnext_lab.overrides import RUN_INVARIANT, job_order, override_values, varying_keys
from resnext_lab.report import plots, stats
from resnext_lab.report.ablation_text import METRICS, to_markdown
from resnext_lab.report.checks import ROW_EXCLUDED_FRACTION, exclusion_rule
from resnext_lab.report.collect import UNREADABLE, load_results, metric_value
from resnext_lab.report.contrasts import (
    COMPLEXITY_TOLERANCE,
    Outcome,
    Side,
    complexity_delta,
    evaluate,
    per_seed,
)
from resnext_lab.report.prereg_status import status
from resnext_lab.report.stats import summarize

SEED = "seed"


def _overrides(result: Mapping[str, Any]) -> dict[str, str]:
    return override_values(result.get("overrides") or [])


def swept_keys(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The settings that differ between jobs, in command-line order, seed left out."""

    return [k for k in varying_keys([_overrides(r) for r in results]) if k != SEED and k not in RUN_INVARIANT]


@dataclasses.dataclass
class Group:
    """The jobs that share every swept value but the seed."""

    values: dict[str, str]
    jobs: list[dict[str, Any]]
    missing: int = 0  # seeds the sweep ran for other groups but that this group has no job for
    excluded: list[tuple[Any, str]] = dataclasses.field(default_factory=list)  # (seed, reason) of excluded jobs
    metric: str = METRICS[0]  # what the report compares (eval/...: a metric task=eval scored again)

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items()) or "all jobs"

    @property
    def usable(self) -> list[dict[str, Any]]:
        """Completed jobs with a finite metric that the exclusion rule kept."""
        return [
            j
            for j in self.jobs
            if j.get("status") == "completed" and metric_value(j, self.metric) is not None and not j.get("_excluded")
        ]

    def values_of(self, metric: str) -> tuple[list[float], list[Any]]:
        pairs = [(metric_value(j, metric), j.get(SEED)) for j in self.usable]
        return [v for v, _ in pairs if v is not None], [s for v, s in pairs if v is not None]

    @property
    def model(self) -> dict[str, Any]:
        return next((j["model"] for j in self.jobs if isinstance(j.get("model"), Mapping)), {})

    def statuses(self) -> dict[str, int]:
        usable = {id(j) for j in self.usable}
        out: dict[str, int] = {}
        for j in self.jobs:
            if id(j) not in usable:
                state = "excluded" if j.get("_excluded") else j.get("status", UNREADABLE)
                out[state] = out.get(state, 0) + 1
        if self.missing:
            out[stats.MISSING] = self.missing
        return out


def group_jobs(
    results: Sequence[Mapping[str, Any]],
    exclude: Callable[[Mapping[str, Any]], str | None] | None = None,
    metric: str = METRICS[0],
) -> tuple[list[str], list[Group]]:
    """(swept keys, groups in the order of their swept values, numbers numerically); completed jobs that
    the exclusion rule `exclude` removes are marked `_excluded` with its reason."""

    keys = swept_keys(results)
    ordered = [results[i] for i in job_order([r.get("overrides") or [] for r in results])]
    groups: dict[tuple[str, ...], Group] = {}
    for r in ordered:
        values = _overrides(r)
        key = tuple(values.get(k, "") for k in keys)
        job = dict(r)
        group = groups.setdefault(key, Group(dict(zip(keys, key, strict=True)), [], metric=metric))
        if exclude is not None and job.get("status") == "completed" and metric_value(job, metric) is not None:
            job["_excluded"] = exclude(job)
            if job["_excluded"]:
                group.excluded.append((job.get(SEED), job["_excluded"]))
        group.jobs.append(job)
    seeds = {j.get(SEED) for g in groups.values() for j in g.jobs}
    for g in groups.values():
        g.missing = len(seeds - {j.get(SEED) for j in g.jobs})
    return keys, list(groups.values())


def baseline_of(group: Group, groups: Sequence[Group], keys: Sequence[str], baseline: str | None) -> Group | None:
    """The group `group` is compared with: `baseline` ("key=value", default the first value of the first swept
    setting) with every other swept value equal to the group's."""
    if not keys:
        return None
    if baseline:
        key, _, value = baseline.partition("=")
        value = value.capitalize() if value.lower() in ("true", "false") else value  # as Hydra writes booleans
        if key not in keys or not any(g.values[key] == value for g in groups):
            accepted = "; ".join(f"{k}=" + "|".join(dict.fromkeys(g.values[k] for g in groups)) for k in keys)
            raise ConfigError(
                f"report.baseline={baseline!r}: must be a swept setting and one of its values ({accepted})"
            )
    else:
        key, value = keys[0], groups[0].values[keys[0]]
    want = {**group.values, key: value}
    return next((g for g in groups if g.values == want), None)


def _side(g: Group, metric: str, interpretable: bool = True) -> Side:
    values, keys = g.values_of(metric)
    return Side(g.label, values, keys, interpretable=interpretable)


def _interpretable(g: Group) -> bool:
    """False when the exclusion rule removed ROW_EXCLUDED_FRACTION or more of the group's completed jobs."""
    done = len(g.usable) + len(g.excluded)
    return not done or len(g.excluded) < ROW_EXCLUDED_FRACTION * done


def ablation(
    results: Sequence[Mapping[str, Any]],
    baseline: str | None = None,
    min_effect: float | None = None,
    *,
    test: str = stats.DIFFERENCE,
    exclude: str | None = None,
    alpha: float = stats.ALPHA,
    metric: str = METRICS[0],
) -> dict[str, Any]:
    """The report as data: swept keys, one record per group, warnings, per-seed values and the method.

    Every group is compared with its baseline group on `metric`; the comparisons are one family (Holm); the
    exclusion rule `exclude` (declared in `report.exclude`) is applied to every job alike.
    """
    results = [r for r in results]
    if not results:
        raise ConfigError("no results.json in the sweep folder: nothing to report")
    declared = status(results, {"min_effect": min_effect, "test": test, "exclude": exclude, "alpha": alpha})
    rule = exclusion_rule(exclude)
    keys, groups = group_jobs(results, rule, metric)
    bases = [baseline_of(g, groups, keys, baseline) for g in groups]
    sides = {id(g): _side(g, metric, _interpretable(g)) for g in groups}
    pairs = [
        (sides[id(g)], sides[id(b)], "ablation")
        for g, b in zip(groups, bases, strict=True)
        if b is not None and b is not g
    ]
    outcomes = iter(evaluate(pairs, test=test, min_effect=min_effect, alpha=alpha))
    rows, warnings = [], []
    for g, base in zip(groups, bases, strict=True):
        record: dict[str, Any] = {
            **g.values,
            "n": len(g.usable),
            "jobs": len(g.jobs),
            "C": g.model.get("cardinality"),
            "d": g.model.get("width"),
            "depth": g.model.get("depth"),
            "params": g.model.get("params"),
            "flops": g.model.get("flops"),
        }
        for m in dict.fromkeys((metric, *METRICS)):
            s = summarize(g.values_of(m)[0])
            record[f"{m} mean"], record[f"{m} std"] = s.mean, s.std
        for size in ("params", "flops"):
            ref = base.model.get(size) if base is not None else None
            delta = complexity_delta(g.model.get(size), ref)
            record[f"{size} vs baseline %"] = None if delta is None else 100 * delta
            if delta is not None and abs(delta) > COMPLEXITY_TOLERANCE:
                warnings.append(f"{g.label}: {size} {delta:+.1%} against its baseline ({base.label})")
        record["baseline"] = base.label if base is not None else None
        if base is None:
            record.update(_contrast_fields(None, stats.MISSING))
        elif base is g:
            record.update(_contrast_fields(None, stats.BASELINE))
        else:
            o = next(outcomes)
            record.update(_contrast_fields(o, o.verdict))
        record["excluded"] = "; ".join(f"seed {seed}: {why}" for seed, why in g.excluded)
        record["not completed"] = ", ".join(f"{n} {s}" for s, n in g.statuses().items())
        rows.append(record)
    return {
        "keys": keys,
        "match": "params",
        "rows": rows,
        "warnings": warnings,
        "baseline": baseline,
        "min_effect": min_effect,
        "test": test,
        "exclude": exclude,
        "alpha": alpha,
        "metric": metric,
        "seeds": sorted({str(r.get(SEED)) for r in results}),
        "per_seed": _per_seed(groups),
        "prereg": declared,
    }


def _contrast_fields(o: Outcome | None, state: str) -> dict[str, Any]:
    rec = o.record() if o is not None else {}
    return {
        "delta": rec.get("delta"),
        "ci low": rec.get("ci_low"),
        "ci high": rec.get("ci_high"),
        "method": rec.get("method"),
        "p": rec.get("p"),
        "p (Holm)": rec.get("p_holm"),
        "TOST p (Holm)": rec.get("p_tost_holm"),
        "verdict": state,
        "seeds needed": rec.get("seeds_needed_range"),
        "_outcome": o,
    }


def _per_seed(groups: Sequence[Group]) -> list[dict[str, Any]]:
    return [
        r
        for g in groups
        for r in per_seed({"group": g.label}, g.jobs, g.excluded, [*dict.fromkeys((g.metric, *METRICS))])
    ]


def write_ablation(
    sweep_dir: str | Path,
    out_dir: str | Path | None = None,
    baseline: str | None = None,
    min_effect: float | None = None,
    **analysis: Any,
) -> tuple[dict[str, Any], list[Path]]:
    """report.md, report.csv, per_seed.csv and the plots in `out_dir` (default <sweep>/report); the report
    and the files. `analysis`: the declared `test`, `exclude` and `alpha` (`ablation`)."""

    sweep_dir = Path(sweep_dir)
    report = ablation(load_results(sweep_dir), baseline, min_effect, **analysis)
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = [write_text_atomic(out / "report.md", to_markdown(report, f"Ablation report: {sweep_dir.name}"))]
    frame = pd.DataFrame(report["rows"]).drop(columns="_outcome")
    written.append(write_text_atomic(out / "report.csv", frame.to_csv(index=False)))
    written.append(
        write_text_atomic(
            out / "per_seed.csv",
            pd.DataFrame(report["per_seed"], columns=["group", "seed", "metric", "value", "excluded"]).to_csv(
                index=False
            ),
        )
    )
    for name, fig in plots.ablation_figures(report).items():
        written.append(plots.save_figure(fig, out / f"{name}.png"))
    return report, written
