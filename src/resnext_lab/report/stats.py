"""Seed statistics and the question a table asks: does the paper's ordering hold here?

Single runs of small proxies differ by a few tenths of a percent from seed to
seed, which is the size of most effects in the paper's tables. So each cell is
compared with its row's baseline through a 95% confidence interval on the
difference, and an ordering only "holds" when that interval excludes zero.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Sequence

import numpy as np
from scipy import stats as sps

HOLDS = "holds"
REVERSED = "reversed"
INCONCLUSIVE = "inconclusive"
NO_PAPER = "no paper value"
MISSING = "missing"
#: The paper gives the cell and its baseline the same number: there is no ordering to test.
PAPER_TIE = "paper tie"
#: The row's baseline itself.
BASELINE = "baseline"

PAIRED = "paired"
WELCH = "welch"


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1) and count of a cell's seeds; None where undefined."""

    mean: float | None
    std: float | None
    n: int


@dataclasses.dataclass(frozen=True)
class Difference:
    """A cell minus its baseline, with a confidence interval when there are enough seeds.

    `method` is "paired" (t-interval of per-seed differences over `n` shared keys)
    or "welch" (Welch's t-interval, `n` = seeds of the cell and the baseline
    together); `low`/`high` are None when the interval is undefined (too few seeds).
    """

    delta: float | None
    low: float | None
    high: float | None
    method: str
    n: int
    confidence: float = 0.95

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample std of seeds; std needs two values, the mean one."""
    arr = np.asarray(values, dtype=float)
    n = int(arr.size)
    mean = float(arr.mean()) if n else None
    std = float(arr.std(ddof=1)) if n >= 2 else None
    return Summary(mean=mean, std=std, n=n)


def difference(
    cell: Sequence[float],
    baseline: Sequence[float],
    cell_keys: Sequence[Hashable] | None = None,
    baseline_keys: Sequence[Hashable] | None = None,
    confidence: float = 0.95,
) -> Difference:
    """`cell - baseline` of the means with a t confidence interval.

    With keys (e.g. seeds) on both sides and at least two keys in common, the
    interval is the paired t-interval of the per-key differences: seeds share data
    order and initialisation streams, so pairing removes that shared noise. Jobs
    repeated under one key are averaged first. Otherwise Welch's t-interval
    (unequal variances), which needs two values on each side.
    """
    if cell_keys is not None and baseline_keys is not None:
        a = _by_key(cell, cell_keys)
        b = _by_key(baseline, baseline_keys)
        shared = [key for key in a if key in b and key is not None]
        if len(shared) >= 2:
            diffs = np.array([a[key] - b[key] for key in shared])
            n = diffs.size
            half = _t_quantile(confidence, n - 1) * diffs.std(ddof=1) / math.sqrt(n)
            delta = float(diffs.mean())
            return Difference(delta, delta - half, delta + half, PAIRED, n, confidence)
    return welch(cell, baseline, confidence)


def welch(cell: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> Difference:
    """Welch's t-interval for `mean(cell) - mean(baseline)`; no interval when a side has < 2 values."""
    x = np.asarray(cell, dtype=float)
    y = np.asarray(baseline, dtype=float)
    n = int(x.size + y.size)
    if x.size == 0 or y.size == 0:
        return Difference(None, None, None, WELCH, n, confidence)
    delta = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Difference(delta, None, None, WELCH, n, confidence)
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se2 = vx + vy
    if se2 == 0:
        # Identical values on both sides: the interval collapses onto the difference.
        return Difference(delta, delta, delta, WELCH, n, confidence)
    dof = se2**2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = _t_quantile(confidence, dof) * math.sqrt(se2)
    return Difference(delta, delta - half, delta + half, WELCH, n, confidence)


def verdict(
    diff: Difference | None,
    paper_cell: float | None,
    paper_baseline: float | None,
    is_baseline: bool = False,
) -> str:
    """Whether the measured difference confirms the sign of `paper_cell - paper_baseline`.

    "holds" when the interval lies entirely on the paper's side of zero,
    "reversed" when entirely on the other side, "inconclusive" when it contains
    zero or is undefined; "missing" when the cell or its baseline has no usable
    run, "no paper value" when either paper number is absent, "paper tie" when
    they are equal, and "baseline" for the baseline itself.
    """
    if is_baseline:
        return BASELINE
    if diff is None or diff.delta is None:
        return MISSING
    if paper_cell is None or paper_baseline is None:
        return NO_PAPER
    sign = float(np.sign(float(paper_cell) - float(paper_baseline)))
    if sign == 0:
        return PAPER_TIE
    if not diff.has_interval:
        return INCONCLUSIVE
    assert diff.low is not None and diff.high is not None
    if diff.low <= 0 <= diff.high:
        return INCONCLUSIVE
    measured = 1.0 if diff.low > 0 else -1.0
    return HOLDS if measured == sign else REVERSED


def _by_key(values: Sequence[float], keys: Sequence[Hashable]) -> dict[Hashable, float]:
    if len(values) != len(keys):
        raise ValueError(f"{len(values)} values but {len(keys)} keys")
    groups: dict[Hashable, list[float]] = {}
    for key, value in zip(keys, values, strict=True):
        groups.setdefault(key, []).append(float(value))
    return {key: float(np.mean(vals)) for key, vals in groups.items()}


def _t_quantile(confidence: float, dof: float) -> float:
    return float(sps.t.ppf(0.5 + confidence / 2, dof))
