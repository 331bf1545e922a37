"""Group-sequential boundaries: Lan-DeMets alpha spending, computed by scipy, and Holm across looks.

A sequential design looks at a contrast after each round of seeds. Testing at alpha after every look would
spend alpha again at each one (five looks at 0.05 give about 0.14 under no effect). A spending function
alpha(t) says how much of the level may be used up by information fraction t (here seeds so far / the
design's maximum); the boundary of look k is the z that the joint normal law of the look statistics
(corr(Z_j, Z_k) = sqrt(n_j / n_k)) crosses for the first time with
probability alpha(t_k) - alpha(t_{k-1}). Lan and DeMets' O'Brien-Fleming type spends almost nothing early
(a first look at 1/6 of the seeds needs |z| > 5.4) and keeps the last boundary close to the fixed design's.

Small n: a contrast is a paired t-test on a handful of seeds, not a z-test of known variance. Each z boundary
is turned into its nominal p-value, and the look's t-test p (n - 1 degrees of freedom) is compared with that
level: the "significance level" approach of Jennison and Turnbull (2000, sec. 3.8), which keeps each look's
own error exact under the t law, where a z boundary read against a t statistic of 4 degrees of freedom would
not. That it holds the error over all looks is not a theorem: `sequential_sim` measures it by simulation.

Several contrasts of one family: the group-sequential Holm procedure (Ye, Li, Jiang and Wang 2013; Maurer and
Bretz 2013, the graphical form). At each look the contrasts not yet rejected, J of them, are each tested
at the boundary of a design of level alpha / J; a rejection makes J smaller and the others are tested again
at the same look. It is a consonant shortcut of a closed test whose intersection tests are weighted
Bonferroni combinations of group-sequential tests, so the family-wise error holds over all looks.
A rejection is never taken back.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as sps

OBRIEN_FLEMING, POCOCK = "obrien_fleming", "pocock"
SPENDING = (OBRIEN_FLEMING, POCOCK)
#: grid points per look of the numerical integration (odd, for Simpson's rule); boundaries to about 1e-6 in z
_GRID = 401
#: where a one-sided boundary's open lower end is cut, in standard deviations of the score
_FAR = 12.0


def spent(t: float, alpha: float, spending: str = OBRIEN_FLEMING) -> float:
    """The one-sided level a design may have used by information fraction `t` (0 < t <= 1): Lan-DeMets' functions.

    O'Brien-Fleming type: 2 (1 - Phi(z_{1-alpha/2} / sqrt(t))); Pocock type: alpha log(1 + (e - 1) t).
    Both spend exactly alpha at t = 1. A two-sided design of level alpha spends this at alpha / 2 on each side.
    """
    t = min(max(t, 0.0), 1.0)
    if t == 0:
        return 0.0
    if spending == OBRIEN_FLEMING:
        return float(2 * sps.norm.sf(sps.norm.isf(alpha / 2) / math.sqrt(t)))
    if spending == POCOCK:
        return float(alpha * math.log(1 + (math.e - 1) * t))
    raise ValueError(f"spending={spending!r}: must be one of {', '.join(SPENDING)}")


def _simpson(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Points and Simpson weights on [lo, hi]."""
    x = np.linspace(lo, hi, _GRID)
    w = np.ones(_GRID)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return x, w * (hi - lo) / (3 * (_GRID - 1))


@functools.lru_cache(maxsize=4096)
def boundaries(
    fractions: tuple[float, ...], alpha: float, spending: str = OBRIEN_FLEMING, two_sided: bool = True
) -> tuple[float, ...]:
    """The z boundary of each look at the information `fractions` (increasing, the last <= 1).

    Two-sided (level alpha, alpha / 2 spent on each side): a look rejects when |Z_k| >= c_k; one-sided (level
    alpha) when Z_k >= c_k. Each c_k makes the probability under no effect of crossing first at look k equal to
    what the spending function allows between t_{k-1} and t_k (scipy's brentq). The law of the score
    S_k = Z_k sqrt(t_k), whose increments are independent normals, is carried from look to look on a grid
    (the recursive integration of Armitage, McPherson and Rowe, 1969; Jennison and Turnbull 2000, ch. 19);
    `staying_probability` checks the result against scipy's multivariate normal integration.
    """
    if not fractions or any(b <= a for a, b in zip(fractions, fractions[1:], strict=False)) or fractions[-1] > 1:
        raise ValueError(f"information fractions {fractions}: must increase and end at most at 1")
    side = alpha / 2 if two_sided else alpha
    sides = 2 if two_sided else 1
    found: list[float] = []
    x = w = density = None  # the score's sub-density on the last look's continuation region
    before = 0.0
    for k, t in enumerate(fractions):
        now = spent(t, side, spending)
        step = sides * (now - before)
        before = now
        if k == 0:
            found.append(float(sps.norm.isf(step / sides)) if step > 0 else math.inf)
            sd = math.sqrt(t)
        else:
            sd = math.sqrt(t - fractions[k - 1])
            mass = w * density  # type: ignore[operator]

            def crossing(
                c: float, t: float = t, sd: float = sd, x: Any = x, mass: Any = mass, step: float = step
            ) -> float:
                b = c * math.sqrt(t)
                up = sps.norm.sf((b - x) / sd)
                down = sps.norm.cdf((-b - x) / sd) if two_sided else 0.0
                return float(np.sum(mass * (up + down))) - step

            found.append(float(optimize.brentq(crossing, 0.0, 40.0, xtol=1e-7)) if step > 0 else math.inf)
        b = min(found[-1], 40.0) * math.sqrt(t)
        new_x, new_w = _simpson(-b if two_sided else -_FAR * math.sqrt(t), b)
        if k == 0:
            density = sps.norm.pdf(new_x / sd) / sd
        else:
            kernel = sps.norm.pdf((new_x[:, None] - x[None, :]) / sd) / sd  # type: ignore[index]
            density = kernel @ (w * density)  # type: ignore[operator]
        x, w = new_x, new_w
    return tuple(found)


def staying_probability(fractions: Sequence[float], bounds: Sequence[float], two_sided: bool = True) -> float:
    """P(no look crosses its boundary) under no effect, by scipy's multivariate normal integration of the look
    statistics' joint law (corr(Z_j, Z_k) = sqrt(t_j / t_k)): an independent check of `boundaries`."""
    t = np.asarray(fractions, dtype=float)
    cov = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    upper = np.minimum(np.asarray(bounds, dtype=float), 40.0)
    lower = -upper if two_sided else np.full_like(upper, -np.inf)
    return float(
        sps.multivariate_normal.cdf(
            upper, cov=cov, lower_limit=lower, abseps=1e-7, releps=0, rng=np.random.default_rng(0)
        )
    )


@functools.lru_cache(maxsize=4096)
def nominal_levels(
    fractions: tuple[float, ...], alpha: float, spending: str = OBRIEN_FLEMING, two_sided: bool = True
) -> tuple[float, ...]:
    """Each look's boundary as a p-value: a look's test p (two-sided, or one-sided) at or below it rejects."""
    sides = 2 if two_sided else 1
    return tuple(float(sides * sps.norm.sf(c)) for c in boundaries(fractions, alpha, spending, two_sided))


def level_table(
    fractions: Sequence[tuple[float, ...]], alpha: float, spending: str, two_sided: bool, family_size: int
) -> np.ndarray:
    """levels[i, j - 1]: the nominal level at its latest look of contrast i (its looks at `fractions[i]`) in a
    design of level alpha / j, for j = 1..family_size: what the Holm step-down reads."""
    out = np.zeros((len(fractions), family_size))
    for i, f in enumerate(fractions):
        for j in range(1, family_size + 1):
            out[i, j - 1] = nominal_levels(tuple(f), alpha / j, spending, two_sided)[-1]
    return out


def step_down(p: np.ndarray, testable: np.ndarray, rejected: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """One look of the group-sequential Holm procedure, for many tables at once.

    p, testable, rejected: (tables, contrasts) -- this look's p-values, which contrasts are tested at this
    look (undecided, with a p), and which were rejected at an earlier look (never taken back). levels:
    (tables or 1, contrasts, family size), `level_table`'s. Returns the rejections after this look.
    """
    rejected = rejected.copy()
    m = p.shape[1]
    p = np.where(testable, p, np.inf)
    for _ in range(m):
        open_count = m - rejected.sum(axis=1)  # J: every contrast of the family not yet rejected, decided or not
        j = np.clip(open_count, 1, m) - 1
        level = np.take_along_axis(np.broadcast_to(levels, (p.shape[0], *levels.shape[1:])), j[:, None, None], 2)[
            ..., 0
        ]
        new = ~rejected & (p <= level)
        if not new.any():
            break
        rejected |= new
    return rejected
