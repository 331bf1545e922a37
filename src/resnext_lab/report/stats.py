"""The statistics a table's verdicts rest on, all through scipy.

Each comparison a table declares (a *contrast*: one cell against another over seeds) is a t-test:
paired by seed where both sides share at least two seeds (seeds share the data order and the
initialisation stream, so pairing removes that shared noise), else Welch's. Its 95% interval is
scipy's. The contrasts of one table form a *family*; their p-values are Holm-adjusted within it,
and a verdict reads the adjusted p. A tie is never read off a non-significant test: it is claimed
only by an equivalence test (TOST, two one-sided t-tests) at the margin the table declared before it
ran (`report.min_effect`). Seeds needed answers "how many seeds per cell would detect the declared
min effect with 80% power at the family's alpha", with the range that the seed spread's own
uncertainty gives it, never from the observed difference.

The one vocabulary of verdicts, used by the terminal report, the paper tables, the README and W&B:

- difference contrasts: `better` / `worse` (Holm-adjusted p < alpha; lower error is better),
  `equivalent` (not different, and TOST at the margin passes after Holm), `inconclusive` (neither);
- equivalence contrasts (a table that claims a tie, such as the block forms): `equivalent`,
  `differ` (adjusted p < alpha but not equivalent), `not shown equal` (neither);
- and `baseline`, `missing` (no usable runs), `not interpretable` (the declared exclusion rule
  removed the row), `not run` (a scale leaves the cell out on purpose).

Whether the paper's ordering holds is a second, separate word: `holds`, `reversed` or `not shown`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Sequence

import numpy as np
from scipy import stats as sps

ALPHA, POWER = 0.05, 0.80
MAX_SEEDS = 1000

# -- the verdicts ----------------------------------------------------------------------------------
BETTER, WORSE, EQUIVALENT, INCONCLUSIVE = "better", "worse", "equivalent", "inconclusive"
DIFFER, NOT_SHOWN_EQUAL = "differ", "not shown equal"
BASELINE, MISSING, NOT_INTERPRETABLE, NOT_RUN = "baseline", "missing", "not interpretable", "not run"
# -- the paper's ordering --------------------------------------------------------------------------
HOLDS, REVERSED, NOT_SHOWN, NO_PAPER = "holds", "reversed", "not shown", "no paper value"

DIFFERENCE, EQUIVALENCE = "difference", "equivalence"
TESTS = (DIFFERENCE, EQUIVALENCE)
PAIRED, WELCH = "paired", "welch"


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1) and count of a cell's seeds; None where undefined."""

    mean: float | None
    std: float | None
    n: int


@dataclasses.dataclass(frozen=True)
class Difference:
    """A cell minus its reference: the t-test, its 95% interval and, with a margin, the TOST.

    `method` is "paired" (over `n` shared seeds) or "welch" (`n` = seeds of both sides together).
    `p` is the two-sided p of "no difference", `p_equiv` the TOST p of "|Δ| >= margin"; `sd` is the
    spread seeds needed works from (of the paired differences, else pooled) with `sd_dof` degrees of
    freedom. Anything a side has too few seeds for is None.
    """

    delta: float | None
    low: float | None
    high: float | None
    method: str
    n: int
    p: float | None = None
    p_equiv: float | None = None
    margin: float | None = None
    sd: float | None = None
    sd_dof: int = 0
    confidence: float = 0.95

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample std of seeds; std needs two values, the mean one."""
    arr = np.asarray(values, dtype=float)
    n = int(arr.size)
    return Summary(float(arr.mean()) if n else None, float(arr.std(ddof=1)) if n >= 2 else None, n)


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def difference(
    cell: Sequence[float],
    baseline: Sequence[float],
    cell_keys: Sequence[Hashable] | None = None,
    baseline_keys: Sequence[Hashable] | None = None,
    confidence: float = 0.95,
    margin: float | None = None,
) -> Difference:
    """`mean(cell) - mean(baseline)` with scipy's t-test and interval, paired by key where it can be.

    With keys on both sides and at least two in common, the paired t-test of the per-key differences
    (jobs repeated under one key are averaged first); otherwise Welch's. With `margin`, also the TOST
    p-value of |Δ| >= margin. Where every difference is the same number there is no spread to test
    against: the interval collapses onto Δ and the p-values are left undefined.
    """
    if cell_keys is not None and baseline_keys is not None:
        a, b = _by_key(cell, cell_keys), _by_key(baseline, baseline_keys)
        shared = [key for key in a if key in b and key is not None]
        if len(shared) >= 2:
            return _paired(np.array([a[k] - b[k] for k in shared]), confidence, margin)
    return welch(cell, baseline, confidence, margin)


def _paired(diffs: np.ndarray, confidence: float, margin: float | None) -> Difference:
    n, delta = int(diffs.size), float(diffs.mean())
    sd = float(diffs.std(ddof=1))
    if sd == 0:
        return Difference(delta, delta, delta, PAIRED, n, margin=margin, sd=0.0, sd_dof=n - 1, confidence=confidence)
    test = sps.ttest_1samp(diffs, 0.0)
    ci = test.confidence_interval(confidence)
    p_equiv = None
    if margin is not None:
        p_equiv = max(
            sps.ttest_1samp(diffs, -margin, alternative="greater").pvalue,
            sps.ttest_1samp(diffs, margin, alternative="less").pvalue,
        )
    return Difference(
        delta,
        float(ci.low),
        float(ci.high),
        PAIRED,
        n,
        _finite(test.pvalue),
        None if p_equiv is None else _finite(p_equiv),
        margin,
        sd,
        n - 1,
        confidence,
    )


def welch(
    cell: Sequence[float], baseline: Sequence[float], confidence: float = 0.95, margin: float | None = None
) -> Difference:
    """Welch's t-test and interval for `mean(cell) - mean(baseline)`; none when a side has < 2 values."""
    x, y = np.asarray(cell, dtype=float), np.asarray(baseline, dtype=float)
    n = int(x.size + y.size)
    if x.size == 0 or y.size == 0:
        return Difference(None, None, None, WELCH, n, margin=margin, confidence=confidence)
    delta = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Difference(delta, None, None, WELCH, n, margin=margin, confidence=confidence)
    sd = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    dof = x.size + y.size - 2
    if sd == 0:
        return Difference(delta, delta, delta, WELCH, n, margin=margin, sd=0.0, sd_dof=dof, confidence=confidence)
    test = sps.ttest_ind(x, y, equal_var=False)
    ci = test.confidence_interval(confidence)
    p_equiv = None
    if margin is not None:
        p_equiv = max(
            sps.ttest_ind(x + margin, y, equal_var=False, alternative="greater").pvalue,
            sps.ttest_ind(x - margin, y, equal_var=False, alternative="less").pvalue,
        )
    return Difference(
        delta,
        float(ci.low),
        float(ci.high),
        WELCH,
        n,
        _finite(test.pvalue),
        None if p_equiv is None else _finite(p_equiv),
        margin,
        sd,
        dof,
        confidence,
    )


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of one family's p-values (None: no test, not counted in the family).

    The i-th smallest of m p-values is multiplied by m - i (i from 0), made non-decreasing, capped at 1.
    """
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(tested)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def verdict(
    diff: Difference | None,
    p_adj: float | None,
    p_equiv_adj: float | None,
    test: str = DIFFERENCE,
    alpha: float = ALPHA,
) -> str:
    """The measured verdict of one contrast from its Holm-adjusted p-values (module docstring)."""
    if diff is None or diff.delta is None:
        return MISSING
    equivalent = p_equiv_adj is not None and p_equiv_adj < alpha
    differs = p_adj is not None and p_adj < alpha
    if test == EQUIVALENCE:
        return EQUIVALENT if equivalent else DIFFER if differs else NOT_SHOWN_EQUAL
    if differs:
        return BETTER if diff.delta < 0 else WORSE
    return EQUIVALENT if equivalent else INCONCLUSIVE


def paper_ordering(measured: str, paper_cell: float | None, paper_reference: float | None) -> str:
    """Whether a verdict confirms the paper's numbers: `holds`, `reversed` or `not shown`.

    The paper's ordering is the sign of `paper_cell - paper_reference` (lower error is better); where
    the paper gives both the same number, it claims a tie, which only `equivalent` confirms.
    """
    if measured in (BASELINE, MISSING, NOT_INTERPRETABLE, NOT_RUN):
        return measured
    if paper_cell is None or paper_reference is None:
        return NO_PAPER
    sign = float(np.sign(float(paper_cell) - float(paper_reference)))
    if sign == 0:
        return HOLDS if measured == EQUIVALENT else REVERSED if measured in (BETTER, WORSE, DIFFER) else NOT_SHOWN
    if measured in (BETTER, WORSE):
        return HOLDS if (measured == BETTER) == (sign < 0) else REVERSED
    return NOT_SHOWN


def power(n: int, effect: float, sd: float, paired: bool, alpha: float = ALPHA) -> float:
    """The power of a two-sided t-test with `n` seeds per cell to find `effect`, for seed spread `sd`.

    Paired: a one-sample t-test of per-seed differences of std `sd`; else two samples of `n` each, of
    pooled std `sd`. Exact, from the noncentral t distribution.
    """
    df = n - 1 if paired else 2 * n - 2
    nc = abs(effect) / sd * (math.sqrt(n) if paired else math.sqrt(n / 2))
    crit = sps.t.ppf(1 - alpha / 2, df)
    # the lower tail P(T < -crit | nc) as P(T > crit | -nc): scipy's nct.cdf returns nan far in the tail
    return float(sps.nct.sf(crit, df, nc) + sps.nct.sf(crit, df, -nc))


def seeds_needed(effect: float, sd: float, paired: bool, alpha: float = ALPHA, target: float = POWER) -> int | None:
    """The fewest seeds per cell (>= 2) whose test finds `effect` with `target` power; None beyond MAX_SEEDS."""
    if not math.isfinite(sd) or sd < 0 or effect == 0:
        return None
    if sd == 0:
        return 2
    for n in range(2, MAX_SEEDS + 1):
        if power(n, effect, sd, paired, alpha) >= target:
            return n
    return None


@dataclasses.dataclass(frozen=True)
class SeedsNeeded:
    """Seeds per cell for the declared effect at the observed spread, and at the ends of its 95% interval."""

    n: int | None
    low: int | None
    high: int | None

    def describe(self) -> str:
        def one(v: int | None) -> str:
            return f">{MAX_SEEDS}" if v is None else str(v)

        if self.low == self.high == self.n:
            return one(self.n)
        return f"{one(self.n)} [{one(self.low)}, {one(self.high)}]"


def seeds_needed_range(effect: float, diff: Difference, alpha: float = ALPHA) -> SeedsNeeded | None:
    """Seeds needed for `effect`, with the range the spread's chi-square 95% interval gives.

    A spread from k seeds has k - 1 (paired) degrees of freedom: with 2 of them its interval spans a
    factor of about 14, which is why the range, not the point, is what to plan with.
    """
    if diff.sd is None or diff.sd_dof < 1:
        return None
    paired = diff.method == PAIRED
    dof = diff.sd_dof
    lo_sd = diff.sd * math.sqrt(dof / sps.chi2.ppf(0.975, dof))
    hi_sd = diff.sd * math.sqrt(dof / sps.chi2.ppf(0.025, dof))
    return SeedsNeeded(*(seeds_needed(effect, sd, paired, alpha) for sd in (diff.sd, lo_sd, hi_sd)))


def _by_key(values: Sequence[float], keys: Sequence[Hashable]) -> dict[Hashable, float]:
    if len(values) != len(keys):
        raise ValueError(f"{len(values)} values but {len(keys)} keys")
    groups: dict[Hashable, list[float]] = {}
    for key, value in zip(keys, values, strict=True):
        groups.setdefault(key, []).append(float(value))
    return {key: float(np.mean(vals)) for key, vals in groups.items()}
