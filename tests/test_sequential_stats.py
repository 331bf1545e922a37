"""The sequential design's statistics: Lan-DeMets boundaries against published values and scipy's multivariate
normal integration, and the error rates over all looks by simulation, where a naive design fails."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from resnext_lab.report.sequential_sim import FIXED, NAIVE, SEQUENTIAL, decide, look_sizes, tables
from resnext_lab.report.spending import boundaries, staying_probability, step_down

ALPHA = 0.05
TABLES = 20_000  # per scenario; the Monte Carlo standard error of a rate near 0.05 is 0.0015


def test_obrien_fleming_boundaries_are_the_published_ones() -> None:
    # Lan-DeMets O'Brien-Fleming type, 5 equally spaced looks, two-sided 0.05 (Jennison and Turnbull 2000,
    # table 7.6; gsDesign's sfLDOF): 4.877, 3.357, 2.680, 2.290, 2.031
    got = boundaries((0.2, 0.4, 0.6, 0.8, 1.0), ALPHA)
    assert got == pytest.approx((4.877, 3.357, 2.680, 2.290, 2.031), abs=2e-3)
    assert got[-1] > sps.norm.isf(ALPHA / 2)  # the fixed design's 1.96: looking costs something at the end


@pytest.mark.parametrize("two_sided", [True, False])
@pytest.mark.parametrize("fractions", [(5 / 30, 10 / 30, 15 / 30, 20 / 30, 25 / 30, 1.0), (0.3, 0.45, 1.0)])
def test_boundaries_spend_exactly_alpha_by_scipys_integration(fractions: tuple[float, ...], two_sided: bool) -> None:
    bounds = boundaries(fractions, ALPHA, two_sided=two_sided)
    assert 1 - staying_probability(fractions, bounds, two_sided) == pytest.approx(ALPHA, abs=2e-4)


def test_step_down_is_holm_at_one_look_and_never_takes_a_rejection_back() -> None:
    levels = np.broadcast_to(ALPHA / np.arange(1, 4), (1, 3, 3))
    p = np.array([[0.01, 0.04, 0.30]])
    everything = np.ones((1, 3), bool)
    got = step_down(p, everything, np.zeros((1, 3), bool), levels)
    assert got.tolist() == [[True, False, False]]  # 0.01 <= 0.05/3; then 0.04 > 0.05/2
    earlier = np.array([[False, False, True]])  # rejected at an earlier look: J is 2 from the start
    got = step_down(np.array([[0.02, 0.04, 1.0]]), np.array([[True, True, False]]), earlier, levels)
    assert got.tolist() == [[True, True, True]]


@pytest.fixture(scope="module")
def simulated() -> dict[str, np.ndarray]:
    """Three contrasts against one baseline (as table3), seeds 5, 10, ..., 30; sd of a per-seed difference 1,
    margin and effect 0.5: the regime where neither way decides early, so the rates are near their bounds."""
    rng = np.random.default_rng(2026)
    return {
        "null": tables(rng, TABLES, [0.0, 0.0, 0.0], 1.0, 30),
        "margin": tables(rng, TABLES, [0.5, 0.5, 0.5], 1.0, 30),
        "one": tables(rng, TABLES, [0.0], 2.0, 30),
    }


def _upper_ok(rate: float, n: int = TABLES) -> bool:
    """Consistent with a rate <= alpha: within 3 Monte Carlo standard errors of it."""
    return rate <= ALPHA + 3 * np.sqrt(ALPHA * (1 - ALPHA) / n)


def _clearly_above(rate: float, n: int = TABLES) -> bool:
    return sps.binomtest(round(rate * n), n, ALPHA, alternative="greater").pvalue < 1e-6


LOOKS = look_sizes(5, 5, 30)


def test_sequential_holds_the_false_difference_rate_over_all_looks(simulated: dict[str, np.ndarray]) -> None:
    rate = decide(simulated["null"], LOOKS, 0.5, ALPHA, rule=SEQUENTIAL).family_rate("differs")
    assert rate <= ALPHA, rate
    naive = decide(simulated["null"], LOOKS, 0.5, ALPHA, rule=NAIVE).family_rate("differs")
    assert _clearly_above(naive), naive  # testing at alpha after every round fails the same check


def test_sequential_holds_the_false_equivalence_rate_at_the_margin(simulated: dict[str, np.ndarray]) -> None:
    rate = decide(simulated["margin"], LOOKS, 0.5, ALPHA, rule=SEQUENTIAL).family_rate("equivalent")
    assert rate <= ALPHA, rate
    naive = decide(simulated["margin"], LOOKS, 0.5, ALPHA, rule=NAIVE).family_rate("equivalent")
    assert _clearly_above(naive), naive


def test_one_contrast_small_n_t_levels_hold_alpha(simulated: dict[str, np.ndarray]) -> None:
    """No Holm slack: the per-look t levels alone must hold the rate (Monte Carlo error allowed), as the fixed
    design on the same tables does."""
    seq = decide(simulated["one"], LOOKS, 0.5, ALPHA, rule=SEQUENTIAL).family_rate("differs")
    fixed = decide(simulated["one"], LOOKS, 0.5, ALPHA, rule=FIXED).family_rate("differs")
    assert _upper_ok(seq) and _upper_ok(fixed), (seq, fixed)
    assert _clearly_above(decide(simulated["one"], LOOKS, 0.5, ALPHA, rule=NAIVE).family_rate("differs"))
