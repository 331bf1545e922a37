"""A table's declared contrasts, tested as one family each: t-test, Holm, TOST, verdict, seeds needed.

Both reports of a sweep, the paper table (`tables.py`) and the ablation report (`ablation.py`), turn
what they compare into `Side`s and pairs of them, and this module does the rest the same way for both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from resnext_lab import render
from resnext_lab.report import stats
from resnext_lab.report.collect import metric_value
from resnext_lab.report.stats import Difference, SeedsNeeded

#: Δparams or ΔFLOPs beyond this fraction of the declared reference is flagged wherever it is shown.
COMPLEXITY_TOLERANCE = 0.05


@dataclasses.dataclass
class Side:
    """One side of a contrast: a cell's (or group's) usable values, their seeds, and what it claims."""

    label: str
    values: list[float]
    keys: list[Any]
    paper: float | None = None
    interpretable: bool = True
    #: why a scale leaves the cell out on purpose (`report.omitted`), or None
    not_run: str | None = None


@dataclasses.dataclass
class Outcome:
    """One tested contrast."""

    cell: Side
    reference: Side
    family: str
    test: str
    diff: Difference | None = None
    p_adj: float | None = None
    p_equiv_adj: float | None = None
    verdict: str = stats.MISSING
    paper: str = stats.NO_PAPER
    seeds: SeedsNeeded | None = None
    family_size: int = 0

    @property
    def name(self) -> str:
        return f"{self.cell.label} vs {self.reference.label}"

    def record(self) -> dict[str, Any]:
        """The outcome as flat, JSON-ready fields (for csv, W&B and tests)."""
        d = self.diff
        return {
            "family": self.family,
            "contrast": self.name,
            "cell": self.cell.label,
            "reference": self.reference.label,
            "test": self.test,
            "paper_cell": self.cell.paper,
            "paper_reference": self.reference.paper,
            "n_cell": len(self.cell.values),
            "n_reference": len(self.reference.values),
            "delta": d.delta if d else None,
            "ci_low": d.low if d else None,
            "ci_high": d.high if d else None,
            "method": d.method if d and d.delta is not None else None,
            "n": d.n if d else None,
            "p": d.p if d else None,
            "p_holm": self.p_adj,
            "margin": d.margin if d else None,
            "p_tost": d.p_equiv if d else None,
            "p_tost_holm": self.p_equiv_adj,
            "verdict": self.verdict,
            "paper_ordering": self.paper,
            "family_size": self.family_size,
            "seeds_needed": self.seeds.n if self.seeds else None,
            "seeds_needed_range": self.seeds.describe() if self.seeds else None,
        }


def evaluate(
    pairs: Sequence[tuple[Side, Side, str]],
    *,
    test: str = stats.DIFFERENCE,
    min_effect: float | None = None,
    alpha: float = stats.ALPHA,
    paired: bool = True,
) -> list[Outcome]:
    """Test every (cell, reference, family) pair; Holm within each family; verdicts and seeds needed.

    `min_effect` is the declared margin of every TOST and the effect seeds needed is computed for, at
    the family's alpha / m (Holm's first step, the strictest one a contrast may face). A pair with a
    side that is not interpretable is not tested and not counted in its family.
    """
    outcomes = [Outcome(cell, ref, family, test) for cell, ref, family in pairs]
    for o in outcomes:
        if o.cell.not_run or o.reference.not_run:
            o.verdict = o.paper = stats.NOT_RUN
            continue
        if not (o.cell.interpretable and o.reference.interpretable):
            o.verdict = o.paper = stats.NOT_INTERPRETABLE
            continue
        if not o.cell.values or not o.reference.values:
            o.paper = stats.MISSING
            continue
        o.diff = stats.difference(
            o.cell.values,
            o.reference.values,
            o.cell.keys if paired else None,
            o.reference.keys if paired else None,
            margin=min_effect,
        )
    for family in dict.fromkeys(o.family for o in outcomes):
        members = [o for o in outcomes if o.family == family and o.diff is not None]
        p_adj = stats.holm([o.diff.p for o in members])  # type: ignore[union-attr]
        eq_adj = stats.holm([o.diff.p_equiv for o in members])  # type: ignore[union-attr]
        tested = sum(p is not None for p in p_adj)
        for o, p, q in zip(members, p_adj, eq_adj, strict=True):
            o.p_adj, o.p_equiv_adj, o.family_size = p, q, tested
            o.verdict = stats.verdict(o.diff, p, q, test, alpha)
            o.paper = stats.paper_ordering(o.verdict, o.cell.paper, o.reference.paper)
            if min_effect is not None and o.diff is not None:
                o.seeds = stats.seeds_needed_range(min_effect, o.diff, alpha / max(tested, 1))
    return outcomes


def per_seed(
    names: dict[str, Any],
    jobs: Sequence[Mapping[str, Any]],
    excluded: Sequence[tuple[Any, str]],
    metrics: Sequence[str],
) -> list[dict[str, Any]]:
    """Long form for one cell or group (`names`: its columns): one record per completed job and metric,
    with the reason where the exclusion rule removed the job."""
    reasons = dict(excluded)
    return [
        {
            **names,
            "seed": job.get("seed"),
            "metric": metric,
            "value": value,
            "excluded": reasons.get(job.get("seed"), ""),
        }
        for job in jobs
        if job.get("status") == "completed"
        for metric in metrics
        if (value := metric_value(job, metric)) is not None
    ]


def complexity_delta(value: float | None, reference: float | None, factor: float = 1.0) -> float | None:
    """`value` against `factor` x `reference`, as a fraction (0.02 = 2% above); None where either is unknown."""
    if value is None or not reference:
        return None
    return value / (factor * reference) - 1


def delta_text(fraction: float | None) -> str:
    """+1.2% (flagged `!` beyond the tolerance), or - where unknown."""
    if fraction is None:
        return "–"
    flag = " !" if abs(fraction) > COMPLEXITY_TOLERANCE else ""
    return f"{100 * fraction:+.1f}%{flag}"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def interval_text(o: Outcome) -> str:
    d = o.diff
    if o.verdict == stats.NOT_RUN:
        return "n/a: not run at this scale"
    if o.verdict == stats.NOT_INTERPRETABLE:
        return "n/a"
    if d is None or d.delta is None:
        return "n/a: no runs"
    if not d.has_interval:
        return f"{d.delta:+.2f} [n/a: too few seeds]"
    return f"{d.delta:+.2f} [{d.low:+.2f}, {d.high:+.2f}] ({d.method}, n={d.n})"


def markdown(outcomes: Sequence[Outcome], min_effect: float | None, alpha: float = stats.ALPHA) -> list[str]:
    """The contrasts as a markdown table, with a line that says how they were tested."""
    test = outcomes[0].test if outcomes else stats.DIFFERENCE
    families = list(dict.fromkeys(o.family for o in outcomes))
    margin = f"±{min_effect:g} points" if min_effect is not None else "none declared"
    how = (
        f"Each contrast is a t-test over seeds (paired where both sides share seeds, else Welch), with "
        f"scipy's 95% CI; p is Holm-adjusted within its family ({', '.join(families)}). "
    )
    if test == stats.EQUIVALENCE:
        how += (
            f"The paper claims these are equal: `equivalent` needs the TOST at the declared margin ({margin}) "
            f"to pass after Holm (alpha {alpha:g}); `differ` is a significant difference; else `not shown equal`."
        )
    else:
        how += (
            f"`better`/`worse`: adjusted p < {alpha:g}; `equivalent`: TOST at the declared margin ({margin}) "
            "passes after Holm; else `inconclusive`."
        )
    if min_effect is not None:
        how += (
            f" Seeds needed: per cell, to detect {min_effect:g} points with 80% power at alpha / family size, "
            "at the observed seed spread (and the ends of its 95% interval)."
        )
    columns = (
        "Family",
        "Contrast",
        "Paper Δ",
        "Δ [95% CI]",
        "p",
        "p (Holm)",
        "TOST p (Holm)",
        "Verdict",
        "Paper ordering",
        "Seeds needed",
    )
    rows = []
    for o in outcomes:
        paper = "–" if o.cell.paper is None or o.reference.paper is None else f"{o.cell.paper - o.reference.paper:+.1f}"
        d = o.diff
        rows.append(
            (
                o.family,
                o.name,
                paper,
                interval_text(o),
                _p(d.p if d else None),
                _p(o.p_adj),
                _p(o.p_equiv_adj),
                o.verdict,
                o.paper,
                o.seeds.describe() if o.seeds else "–",
            )
        )
    right = ("Paper Δ", "Δ [95% CI]", "p", "p (Holm)", "TOST p (Holm)", "Seeds needed")
    return [how, "", *render.markdown(columns, rows, right=right)]
