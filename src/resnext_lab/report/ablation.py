"""The answer of any training sweep: jobs grouped by what they sweep (seeds aggregated), each group
against a baseline with a 95% CI and a verdict, its complexity against the `width=auto` reference,
and how many seeds an inconclusive comparison would need.

    python -m resnext_lab.report SWEEP_DIR             # <SWEEP_DIR>/report/report.{md,csv} and plots

Written at the end of every training multirun (`sweep.SweepSummary`). Lower error is better.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from resnext_lab.errors import ConfigError
from resnext_lab.files import write_text_atomic
from resnext_lab.report.collect import UNREADABLE, load_results, metric_value
from resnext_lab.report.stats import Difference, difference, summarize

METRICS = ("test/top1_err", "test/top5_err")
#: A group whose params (FLOPs with model.match=flops) differ more than this from the reference is flagged.
TOLERANCE = 0.05
ALPHA, POWER = 0.05, 0.80
MAX_SEEDS = 1000
BETTER, WORSE, INCONCLUSIVE, BASELINE, MISSING = "better", "worse", "inconclusive", "baseline", "missing"
SEED = "seed"


def _overrides(result: Mapping[str, Any]) -> dict[str, str]:
    from resnext_lab.sweep import override_values

    return override_values(result.get("overrides") or [])


def swept_keys(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The settings that differ between jobs, in command-line order, seed left out."""
    from resnext_lab.sweep import RUN_INVARIANT, varying_keys

    return [k for k in varying_keys([_overrides(r) for r in results]) if k != SEED and k not in RUN_INVARIANT]


@dataclasses.dataclass
class Group:
    """The jobs that share every swept value but the seed."""

    values: dict[str, str]
    jobs: list[dict[str, Any]]
    missing: int = 0  # seeds the sweep ran for other groups but that this group has no job for

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values.items()) or "all jobs"

    @property
    def usable(self) -> list[dict[str, Any]]:
        return [j for j in self.jobs if j.get("status") == "completed" and metric_value(j, METRICS[0]) is not None]

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
                out[j.get("status", UNREADABLE)] = out.get(j.get("status", UNREADABLE), 0) + 1
        if self.missing:
            out[MISSING] = self.missing
        return out


def group_jobs(results: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[Group]]:
    """(swept keys, groups in the order of their swept values, numbers numerically)."""
    from resnext_lab.sweep import job_order

    keys = swept_keys(results)
    ordered = [results[i] for i in job_order([r.get("overrides") or [] for r in results])]
    groups: dict[tuple[str, ...], Group] = {}
    for r in ordered:
        values = _overrides(r)
        key = tuple(values.get(k, "") for k in keys)
        groups.setdefault(key, Group(dict(zip(keys, key, strict=True)), [])).jobs.append(dict(r))
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
            raise ConfigError(f"report.baseline={baseline!r}: must be a swept setting and one of its values ({accepted})")
    else:
        key, value = keys[0], groups[0].values[keys[0]]
    want = {**group.values, key: value}
    return next((g for g in groups if g.values == want), None)


def seeds_needed(effect: float, sd: float, paired: bool, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Seeds per group for a two-sided t-test at `alpha` to find `effect` with `power`, given the seed std `sd`.

    Paired: a one-sample t-test of the per-seed differences (std `sd`); else a two-sample t-test with
    equal groups of pooled std `sd`. Exact power from the noncentral t distribution; None beyond MAX_SEEDS.
    """
    if sd <= 0 or effect == 0 or not math.isfinite(sd):
        return 2 if sd == 0 and effect != 0 else None
    for n in range(2, MAX_SEEDS + 1):
        df = n - 1 if paired else 2 * n - 2
        nc = abs(effect) / sd * (math.sqrt(n) if paired else math.sqrt(n / 2))
        crit = sps.t.ppf(1 - alpha / 2, df)
        if sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc) >= power:
            return n
    return None


def _spread(a: Group, b: Group, metric: str, diff: Difference) -> float | None:
    """The std that decides the seeds needed: of the per-seed differences (paired), else pooled."""
    (va, ka), (vb, kb) = a.values_of(metric), b.values_of(metric)
    if diff.method == "paired":
        ma, mb = dict(zip(ka, va, strict=True)), dict(zip(kb, vb, strict=True))
        d = [ma[k] - mb[k] for k in ma if k in mb]
        return float(np.std(d, ddof=1)) if len(d) >= 2 else None
    if len(va) < 2 or len(vb) < 2:
        return None
    return math.sqrt((np.var(va, ddof=1) + np.var(vb, ddof=1)) / 2)


def _complexity(group: Group, match: str) -> tuple[float | None, str | None]:
    """(deviation of params or FLOPs from the width=auto reference, a hint naming the nearest d on the other side)."""
    from resnext_lab.models import ModelSpec, complexity

    model, ref = group.model, group.model.get("reference")
    if not ref or match not in model or not ref.get(match):
        return None, None
    deviation = model[match] / ref[match] - 1
    if abs(deviation) <= TOLERANCE:
        return deviation, None
    fields = {f.name: model[f.name] for f in dataclasses.fields(ModelSpec) if f.name in model}
    spec = ModelSpec(**{**fields, "stage_blocks": tuple(fields["stage_blocks"])})
    other = spec.width + (1 if deviation < 0 else -1)
    hint = None
    if other >= 1:
        other_dev = complexity(dataclasses.replace(spec, width=other))[match] / ref[match] - 1
        hint = f"d={other} would be {abs(other_dev):.1%} {'above' if other_dev > 0 else 'below'}"
    return deviation, hint


def ablation(results: Sequence[Mapping[str, Any]], baseline: str | None = None,
             min_effect: float | None = None) -> dict[str, Any]:
    """The report as data: swept keys, one record per group, warnings, and the method."""
    results = [r for r in results]
    if not results:
        raise ConfigError("no results.json in the sweep folder: nothing to report")
    keys, groups = group_jobs(results)
    match = next((g.model.get("reference", {}).get("match") for g in groups if g.model.get("reference")), None)
    match = match or "params"
    first_ref = next((g.model.get(match) for g in groups if g.usable or g.model), None)
    rows, warnings = [], []
    for g in groups:
        base = baseline_of(g, groups, keys, baseline)
        record: dict[str, Any] = {**g.values, "n": len(g.usable), "jobs": len(g.jobs),
                                  "C": g.model.get("cardinality"), "d": g.model.get("width"),
                                  "depth": g.model.get("depth"), "params": g.model.get("params"),
                                  "flops": g.model.get("flops")}
        for metric in METRICS:
            s = summarize(g.values_of(metric)[0])
            record[f"{metric} mean"], record[f"{metric} std"] = s.mean, s.std
        deviation, hint = _complexity(g, match)
        if deviation is None and first_ref:
            deviation = g.model.get(match, first_ref) / first_ref - 1
        record[f"{match} vs reference %"] = None if deviation is None else 100 * deviation
        if hint is not None:
            warnings.append(f"{g.label}: {match} {abs(deviation):.1%} {'below' if deviation < 0 else 'above'} "
                            f"the width=auto reference (d={g.model.get('width')}); {hint}")
        record.update(_compare(g, base, min_effect))
        record["not completed"] = ", ".join(f"{n} {s}" for s, n in g.statuses().items())
        rows.append(record)
    return {"keys": keys, "match": match, "rows": rows, "warnings": warnings, "baseline": baseline,
            "min_effect": min_effect, "seeds": sorted({str(r.get(SEED)) for r in results})}


def _compare(g: Group, base: Group | None, min_effect: float | None) -> dict[str, Any]:
    metric = METRICS[0]
    out: dict[str, Any] = {"baseline": base.label if base else None, "delta": None, "ci low": None, "ci high": None,
                           "method": None, "verdict": MISSING, "seeds needed": None}
    if base is None:
        return out
    if base is g:
        return {**out, "verdict": BASELINE}
    (va, ka), (vb, kb) = g.values_of(metric), base.values_of(metric)
    if not va or not vb:
        return out
    diff = difference(va, vb, ka, kb)
    out.update({"delta": diff.delta, "ci low": diff.low, "ci high": diff.high, "method": diff.method})
    if diff.has_interval and diff.high < 0:
        out["verdict"] = BETTER
    elif diff.has_interval and diff.low > 0:
        out["verdict"] = WORSE
    else:
        out["verdict"] = INCONCLUSIVE
        sd = _spread(g, base, metric, diff)
        effect = min_effect if min_effect is not None else diff.delta
        if sd is not None and effect:
            n = seeds_needed(effect, sd, paired=diff.method == "paired")
            out["seeds needed"] = n if n is not None else f"> {MAX_SEEDS}"
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    return str(value)


def to_markdown(report: Mapping[str, Any], title: str = "Ablation report") -> str:
    """The report as markdown: method, one row per group, the warnings."""
    m = METRICS[0]
    effect = (f"report.min_effect={report['min_effect']}" if report["min_effect"] is not None
              else "the observed delta")
    lines = [
        f"# {title}",
        "",
        f"Test top-1/top-5 error (%) over seeds {', '.join(report['seeds'])}; mean ± std (n usable jobs). "
        "Delta is the group minus its baseline with a 95% CI: paired by seed where both have the seed, else Welch. "
        "Verdict: better / worse when the CI excludes 0 (lower error is better), else inconclusive. "
        f"Seeds needed (inconclusive rows): seeds per group for a two-sided t-test at alpha {ALPHA} to find "
        f"{effect} with {POWER:.0%} power, from the observed std (of the paired differences, else pooled); "
        f"exact power from the noncentral t distribution. Complexity: {report['match']} against the width=auto "
        f"reference; more than {TOLERANCE:.0%} off is flagged.",
        "",
        "| " + " | ".join([*report["keys"], "C", "d", "params", "GFLOPs", f"{report['match']} vs ref",
                          "top-1 err", "top-5 err", "Δ top-1 [95% CI]", "verdict", "seeds needed",
                          "not completed"]) + " |",
        "|" + "---|" * (len(report["keys"]) + 11),
    ]
    for r in report["rows"]:
        top1 = f"{_fmt(r[m + ' mean'])} ± {_fmt(r[m + ' std'])} (n={r['n']})"
        top5 = f"{_fmt(r['test/top5_err mean'])} ± {_fmt(r['test/top5_err std'])}"
        ci = "-" if r["delta"] is None else (
            f"{r['delta']:+.2f} [{_fmt(r['ci low'])}, {_fmt(r['ci high'])}] {r['method']}" if r["ci low"] is not None
            else f"{r['delta']:+.2f} (no CI: too few seeds)")
        dev = r[f"{report['match']} vs reference %"]
        cells = [*(str(r[k]) for k in report["keys"]), _fmt(r["C"]), _fmt(r["d"]), _fmt(r["params"]),
                 _fmt(None if r["flops"] is None else r["flops"] / 1e9, 3), "-" if dev is None else f"{dev:+.1f}%",
                 top1, top5, ci, r["verdict"], _fmt(r["seeds needed"]), r["not completed"] or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if report["warnings"]:
        lines += ["", "Complexity not matched:"] + [f"- warning: {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"


def to_terminal(report: Mapping[str, Any]) -> str:
    """The report in short, for the end of a sweep."""
    m = METRICS[0]
    lines = [f"ablation over seeds {', '.join(report['seeds'])} (test top-1 error %, Δ vs baseline, 95% CI):"]
    for r in report["rows"]:
        name = ", ".join(f"{k}={r[k]}" for k in report["keys"]) or "all jobs"
        dev = r[f"{report['match']} vs reference %"]
        text = (f"  {name:<28} {_fmt(r[m + ' mean']):>6} ± {_fmt(r[m + ' std']):<5} n={r['n']}  "
                f"{report['match']} {'-' if dev is None else f'{dev:+.1f}%':>7}  ")
        if r["verdict"] == BASELINE:
            text += "baseline"
        elif r["delta"] is not None and r["ci low"] is not None:
            text += f"Δ {r['delta']:+.2f} [{r['ci low']:+.2f}, {r['ci high']:+.2f}] {r['verdict']}"
        else:
            text += r["verdict"] if r["delta"] is None else f"Δ {r['delta']:+.2f} (no CI) {r['verdict']}"
        if r["seeds needed"] is not None:
            text += f"; seeds needed: {r['seeds needed']}"
        if r["not completed"]:
            text += f"  [{r['not completed']}]"
        lines.append(text)
    lines += [f"warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)


def write_ablation(sweep_dir: str | Path, out_dir: str | Path | None = None, baseline: str | None = None,
                   min_effect: float | None = None) -> tuple[dict[str, Any], list[Path]]:
    """report.md, report.csv and the plots in `out_dir` (default <sweep>/report); the report and the files."""
    from resnext_lab.report import plots

    sweep_dir = Path(sweep_dir)
    report = ablation(load_results(sweep_dir), baseline, min_effect)
    out = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = [write_text_atomic(out / "report.md", to_markdown(report, f"Ablation report: {sweep_dir.name}"))]
    frame = pd.DataFrame(report["rows"])
    written.append(write_text_atomic(out / "report.csv", frame.to_csv(index=False)))
    for name, fig in plots.ablation_figures(report).items():
        written.append(plots.save_figure(fig, out / f"{name}.png"))
    return report, written
