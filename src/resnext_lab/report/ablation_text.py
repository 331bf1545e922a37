"""The ablation report as text: markdown for report.md, a short table for the end of a sweep."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from resnext_lab import render
from resnext_lab.report import stats
from resnext_lab.report.contrasts import COMPLEXITY_TOLERANCE, delta_text, markdown

METRICS = ("test/top1_err", "test/top5_err")


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    return str(value)


def _delta(r: Mapping[str, Any]) -> str:
    if r["delta"] is None:
        return "-"
    if r["ci low"] is None:
        return f"{r['delta']:+.2f} (no CI: too few seeds)"
    return f"{r['delta']:+.2f} [{r['ci low']:+.2f}, {r['ci high']:+.2f}] {r['method']}"


def _pct(value: float | None) -> str:
    return delta_text(None if value is None else value / 100)


#: The columns of report.md after the swept keys.
MARKDOWN_COLUMNS = (
    "C",
    "d",
    "params",
    "Δparams",
    "GFLOPs",
    "ΔFLOPs",
    "top-1 err",
    "top-5 err",
    "Δ top-1 [95% CI]",
    "p",
    "p (Holm)",
    "TOST p (Holm)",
    "verdict",
    "seeds needed",
    "not completed",
)


def _measured(report: Mapping[str, Any]) -> str:
    """What the report compares: test top-1 error, or the metric it was asked for (`--metric`)."""
    m = report.get("metric", METRICS[0])
    return "test top-1 error %" if m == METRICS[0] else f"{m}"


def to_markdown(report: Mapping[str, Any], title: str = "Ablation report") -> str:
    """The report as markdown: method, one row per group, excluded jobs, the warnings."""
    m = report.get("metric", METRICS[0])
    outcomes = [r["_outcome"] for r in report["rows"] if r.get("_outcome") is not None]
    lines = [
        f"# {title}",
        "",
        *(f"- {line}" for line in report.get("prereg") or ()),
        "",
        ("Test top-1/top-5 error (%)" if m == METRICS[0] else f"`{m}` (compared) and test top-5 error (%)")
        + f" over seeds {', '.join(report['seeds'])}; mean ± std (n usable jobs). "
        f"Δ is the group minus its baseline. Params and FLOPs against the baseline's, `!` beyond "
        f"±{COMPLEXITY_TOLERANCE:.0%}. Exclusion rule: `{report['exclude'] or 'none'}`.",
        "",
        *(markdown(outcomes, report["min_effect"], report["alpha"])[:1]),
        "",
    ]
    columns = (*report["keys"], *MARKDOWN_COLUMNS)
    rows = []
    for r in report["rows"]:
        top1 = f"{_fmt(r[m + ' mean'])} ± {_fmt(r[m + ' std'])} (n={r['n']})"
        top5 = f"{_fmt(r['test/top5_err mean'])} ± {_fmt(r['test/top5_err std'])}"
        rows.append(
            (
                *(str(r[k]) for k in report["keys"]),
                _fmt(r["C"]),
                _fmt(r["d"]),
                _fmt(r["params"]),
                _pct(r["params vs baseline %"]),
                _fmt(None if r["flops"] is None else r["flops"] / 1e9, 3),
                _pct(r["flops vs baseline %"]),
                top1,
                top5,
                _delta(r),
                _fmt(r["p"], 3),
                _fmt(r["p (Holm)"], 3),
                _fmt(r["TOST p (Holm)"], 3),
                r["verdict"],
                _fmt(r["seeds needed"]),
                r["not completed"] or "-",
            )
        )
    lines += render.markdown(columns, rows)
    excluded = [
        f"{', '.join(f'{k}={r[k]}' for k in report['keys'])}: {r['excluded']}" for r in report["rows"] if r["excluded"]
    ]
    if excluded:
        lines += ["", "Excluded jobs:"] + [f"- {e}" for e in excluded]
    if report["warnings"]:
        lines += ["", "Complexity not matched:"] + [f"- warning: {w}" for w in report["warnings"]]
    lines += ["", "Per-seed values: `per_seed.csv` (group, seed, metric, value, excluded)."]
    return "\n".join(lines) + "\n"


def to_terminal(report: Mapping[str, Any]) -> str:
    """The report in short, for the end of a sweep."""
    m = report.get("metric", METRICS[0])
    effect = "none declared" if report["min_effect"] is None else f"{report['min_effect']:g}"
    lines = [
        f"ablation over seeds {', '.join(report['seeds'])} ({_measured(report)}, Δ vs baseline, 95% CI, "
        f"Holm-adjusted p; min effect {effect}; exclusion {report['exclude'] or 'none'}):"
    ]
    rows = []
    for r in report["rows"]:
        if r["verdict"] == stats.BASELINE or r["delta"] is None:
            delta, p_holm = "", ""
        else:
            delta, p_holm = _delta(r), _fmt(r["p (Holm)"], 3)
        needed = r["seeds needed"] is not None and r["verdict"] not in (stats.BETTER, stats.WORSE, stats.EQUIVALENT)
        rows.append(
            (
                ", ".join(f"{k}={r[k]}" for k in report["keys"]) or "all jobs",
                f"{_fmt(r[m + ' mean'])} ± {_fmt(r[m + ' std'])}",
                r["n"],
                _pct(r["params vs baseline %"]),
                _pct(r["flops vs baseline %"]),
                delta,
                p_holm,
                r["verdict"],
                r["seeds needed"] if needed else "",
                r["not completed"] or "",
            )
        )
    columns = (
        "group",
        "top-1 err",
        "n",
        "Δparams",
        "ΔFLOPs",
        "Δ [95% CI]",
        "p(Holm)",
        "verdict",
        "seeds needed",
        "not completed",
    )
    lines.append(render.terminal(columns, rows, right=("top-1 err", "n", "Δparams", "ΔFLOPs", "p(Holm)")))
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines += list(report.get("prereg") or ())
    return "\n".join(lines)
