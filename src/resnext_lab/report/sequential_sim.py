"""The sequential design's error rates and cost, measured by simulating many tables at once (numpy).

A simulated table is what a paper table's sweep measures: a baseline cell and `contrasts` other cells, each
compared with the baseline over paired seeds (the contrasts share the baseline, so they are correlated, as in
a real table). Every cell's seed value is its mean plus normal noise; `sd` is the spread of one contrast's
per-seed difference, the spread a paired t-test works from. Each table is run through the same decision rule
as a real sweep (`spending.step_down` at every look, on scipy's t-test p-values), and three designs are
compared on the same simulated seeds:

- `sequential`: Lan-DeMets boundaries and group-sequential Holm (the design of `report.sequential`);
- `naive`: Holm at alpha after every round, as if each look were the only one (what peeking does);
- `fixed`: one look at the design's maximum, Holm at alpha.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

from resnext_lab.report.spending import OBRIEN_FLEMING, level_table, step_down

SEQUENTIAL, NAIVE, FIXED = "sequential", "naive", "fixed"
RULES = (SEQUENTIAL, NAIVE, FIXED)


def look_sizes(start: int, step: int, maximum: int) -> tuple[int, ...]:
    """Seeds per cell at each look: start, start + step, ..., and the maximum as the last look."""
    sizes = list(range(start, maximum, step))
    return tuple([*sizes, maximum] if not sizes or sizes[-1] != maximum else sizes)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What each simulated table decided: (tables, contrasts) arrays, and seeds run per table."""

    differs: np.ndarray
    equivalent: np.ndarray
    look: np.ndarray  # the look (0-based) that decided each contrast; -1: undecided at the maximum
    jobs: np.ndarray  # seeds run in all cells of each table

    def family_rate(self, which: str) -> float:
        """The fraction of tables where at least one contrast was decided `which` (differs | equivalent)."""
        return float(getattr(self, which).any(axis=1).mean())


def p_values(diffs: np.ndarray, n: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The paired t-test's two-sided p and the TOST p at `margin` of the first `n` seeds, as `stats.difference`
    computes them for one contrast (scipy's t law, n - 1 degrees of freedom)."""
    d = diffs[..., :n]
    mean = d.mean(axis=-1)
    se = d.std(axis=-1, ddof=1) / np.sqrt(n)
    p = 2 * sps.t.sf(np.abs(mean) / se, n - 1)
    p_equiv = np.maximum(sps.t.sf((mean + margin) / se, n - 1), sps.t.cdf((mean - margin) / se, n - 1))
    return p, p_equiv


def decide(
    diffs: np.ndarray,
    looks: Sequence[int],
    margin: float,
    alpha: float = 0.05,
    spending: str = OBRIEN_FLEMING,
    rule: str = SEQUENTIAL,
) -> Outcome:
    """Run `rule` over tables of paired differences `diffs` (tables, contrasts, max seeds): at each look every
    undecided contrast is tested both ways, a decided one gets no more seeds, a decision is kept."""
    tables, m, _ = diffs.shape
    maximum = looks[-1]
    differs = np.zeros((tables, m), bool)
    equivalent = np.zeros((tables, m), bool)
    look = np.full((tables, m), -1)
    for k, n in enumerate(looks):
        if rule == FIXED and k < len(looks) - 1:
            continue
        if rule == SEQUENTIAL:
            fractions = [tuple(s / maximum for s in looks[: k + 1])] * m
            l_diff = level_table(fractions, alpha, spending, True, m)[None]
            l_equiv = level_table(fractions, alpha, spending, False, m)[None]
        else:  # naive and fixed: Holm at alpha, as if this look were the only one
            l_diff = l_equiv = np.broadcast_to(alpha / np.arange(1, m + 1), (1, m, m))
        p, p_equiv = p_values(diffs, n, margin)
        open_ = look < 0
        differs = step_down(p, open_, differs, l_diff)
        equivalent = step_down(p_equiv, open_, equivalent, l_equiv)
        look[open_ & (differs | equivalent)] = k
    sizes = np.asarray(looks)
    seeds = np.where(look >= 0, sizes[np.maximum(look, 0)], maximum)  # each contrast's cell
    jobs = seeds.sum(axis=1) + seeds.max(axis=1)  # and the baseline, while any contrast is open
    return Outcome(differs, equivalent, look, jobs)


def tables(rng: np.random.Generator, count: int, effects: Sequence[float], sd: float, maximum: int) -> np.ndarray:
    """Paired differences of `count` simulated tables: (count, contrasts, maximum). Each cell's seed value is
    its mean plus N(0, sd^2 / 2), so that a contrast's per-seed difference has spread `sd`, and the contrasts
    share the baseline's noise."""
    cell_sd = sd / np.sqrt(2)
    base = rng.normal(0.0, cell_sd, (count, 1, maximum))
    cells = rng.normal(0.0, cell_sd, (count, len(effects), maximum)) + np.asarray(effects, float)[None, :, None]
    return cells - base


def summary(
    looks: Sequence[int],
    contrasts: int,
    effect: float,
    sd: float,
    alpha: float = 0.05,
    spending: str = OBRIEN_FLEMING,
    count: int = 20_000,
    seed: int = 0,
) -> list[dict[str, float | str]]:
    """Each design's error rates, power and cost on the same simulated tables: no effect in any contrast, and
    every contrast at the declared effect (which is also the equivalence margin)."""
    rng = np.random.default_rng(seed)
    null = tables(rng, count, [0.0] * contrasts, sd, looks[-1])
    at_effect = tables(rng, count, [effect] * contrasts, sd, looks[-1])
    rows: list[dict[str, float | str]] = []
    for rule in RULES:
        a = decide(null, looks, effect, alpha, spending, rule)
        b = decide(at_effect, looks, effect, alpha, spending, rule)
        rows.append(
            {
                "design": rule,
                "false difference (no effect)": a.family_rate("differs"),
                "false equivalence (at the margin)": b.family_rate("equivalent"),
                "power (at the effect)": float(b.differs.mean()),
                "equivalent (no effect)": float(a.equivalent.mean()),
                "jobs (no effect)": float(a.jobs.mean()),
                "jobs (at the effect)": float(b.jobs.mean()),
                "jobs at most": float((contrasts + 1) * looks[-1]),
            }
        )
    return rows
