"""Design spaces as populations: the sampler, the complexity-normalised EDF, the KS test, and a population end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, cli_env
from scipy import stats as scipy_stats

from resnext_lab.design_space import Band, Population, Space, network_of, sample
from resnext_lab.errors import ConfigError
from resnext_lab.models import complexity
from resnext_lab.models.spec import spec_from_config
from resnext_lab.report.design_space import EDFSettings, analyse, edf, ks_statistic, quantile, weights
from resnext_lab.report.design_space import main as design_space_main

MODEL = {"template": "cifar", "stem_stride": 2, "width_scale": 0.25, "depth": None}
DATA = {"name": "fashion_mnist"}
SPACES = {
    "resnet": Space(blocks=(1, 4), width=(8, 64), cardinality=(1,)),
    "resnext": Space(blocks=(1, 4), width=(1, 16), cardinality=(2, 4, 8, 16, 32)),
}


def test_sampling_is_reproducible_distinct_and_within_the_band() -> None:
    band = Band(quantity="flops", low=4e6, high=1.2e7)
    pop = Population(networks=20, seed=3, band=band, spaces=SPACES)
    first, again = sample(pop, SPACES, MODEL, DATA), sample(pop, SPACES, MODEL, DATA)
    assert first == again and len(first) == 40
    other = sample(Population(networks=20, seed=4, band=band, spaces=SPACES), SPACES, MODEL, DATA)
    assert [n.overrides() for n in other] != [n.overrides() for n in first]
    for space in SPACES:
        shapes = [(n.stage_blocks, n.cardinality, n.width) for n in first if n.space == space]
        assert len(set(shapes)) == 20 and [n.index for n in first if n.space == space] == list(range(20))
    for n in first:
        assert 4e6 <= n.flops <= 1.2e7
        node = {**MODEL, "stage_blocks": list(n.stage_blocks), "cardinality": n.cardinality, "width": n.width}
        spec = spec_from_config(node, num_classes=10, in_channels=1, image_size=28)
        assert complexity(spec) == {"params": n.params, "flops": n.flops}  # the exact count, before training
        assert (n.cardinality == 1) == (n.space == "resnet")
    assert network_of(first[0].overrides()) == (first[0].space, 0)


def test_a_band_no_network_can_reach_is_one_clear_error() -> None:
    pop = Population(networks=3, seed=0, band=Band(quantity="params", low=1e12, high=2e12), spaces=SPACES)
    with pytest.raises(ConfigError, match=r"hydra\.sweeper\.band=params in \[1e\+12, 2e\+12\]: space resnet gave 0"):
        sample(pop, SPACES, MODEL, DATA)


def test_the_normalised_edf_weighs_each_bin_equally() -> None:
    # bin 0 holds two networks, bin 1 one: weights 1/(2*2), 1/(2*2), 1/(2*1)
    bins = np.array([0, 0, 1])
    w = weights(bins, shared=[0, 1])
    assert w.tolist() == [0.25, 0.25, 0.5]
    errors = np.array([10.0, 20.0, 30.0])
    assert edf(errors, w, [5, 10, 15, 20, 25, 30, 35]).tolist() == [0, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0]
    assert quantile(errors, w, 0.5) == 20.0 and quantile(errors, w, 0.6) == 30.0
    # a bin the other space leaves empty gets no weight
    assert weights(np.array([0, 1, 2]), shared=[0, 2]).tolist() == [0.5, 0.0, 0.5]


def test_the_ks_statistic_of_equal_weights_is_scipys() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(20, 3, 37), rng.normal(22, 3, 41)
    d = ks_statistic((a, np.full(37, 1 / 37)), (b, np.full(41, 1 / 41)))
    assert d == pytest.approx(scipy_stats.ks_2samp(a, b).statistic, abs=1e-12)


def test_two_spaces_that_differ_are_told_apart_and_two_that_do_not_are_not() -> None:
    rng = np.random.default_rng(1)
    flops = np.exp(rng.uniform(np.log(4e6), np.log(1.2e7), 80))
    frame = pd.DataFrame({"space": ["a"] * 40 + ["b"] * 40, "flops": flops})
    settings = EDFSettings(bins=3, resamples=300)
    apart = analyse(frame.assign(error=np.r_[rng.normal(20, 1, 40), rng.normal(15, 1, 40)]), settings, "flops")
    assert apart["ks"]["p"] < 0.01 and "b's EDF lies to the left" in apart["verdict"]
    assert all(r["difference"] < 0 and r["high"] < 0 for r in apart["quantiles"])
    half = frame.iloc[:40].assign(error=rng.normal(20, 1, 40))  # b: the very networks and errors of a
    same = analyse(pd.concat([half, half.assign(space="b")]), settings, "flops")
    assert same["ks"]["D"] == 0 and same["ks"]["p"] == 1 and "do not differ" in same["verdict"]
    low, high = same["curves"]["a low"], same["curves"]["a high"]
    assert (low <= same["curves"]["a"] + 1e-9).all() and (same["curves"]["a"] <= high + 1e-9).all()


def test_the_permutation_p_comes_with_its_monte_carlo_interval_which_more_resamples_narrow() -> None:
    rng = np.random.default_rng(2)
    flops = np.exp(rng.uniform(np.log(4e6), np.log(1.2e7), 60))
    frame = pd.DataFrame({"space": ["a"] * 30 + ["b"] * 30, "flops": flops})
    frame = frame.assign(error=np.r_[rng.normal(15.5, 1, 30), rng.normal(15, 1, 30)])  # near the threshold
    widths = []
    for resamples in (200, 2000):
        ks = analyse(frame, EDFSettings(bins=3, resamples=resamples), "flops")["ks"]
        low, high = ks["p_mc"]
        assert low <= ks["p"] <= high and 0 < low < high < 1, ks
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # about 1/sqrt(10) as wide
    # a level inside that interval: which permutations were drawn would decide, so nothing is decided
    on_edge = analyse(frame, EDFSettings(bins=3, resamples=2000, alpha=ks["p"]), "flops")
    assert on_edge["verdict"].startswith("undecided: the normalised KS permutation p"), on_edge["verdict"]


@pytest.mark.e2e
def test_a_population_runs_through_run_py_and_ends_in_its_report(tmp_path: Path) -> None:
    """2 spaces x 3 networks (the smoke scale's 6 would take twice as long and prove nothing more), sampled by
    the design-space sweeper, each an ordinary job, then the EDF report."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "experiment=design_space", "scale=smoke", f"out_root={out}"]
    cmd.append("hydra.sweeper.networks=3")
    plan = subprocess.run(
        [*cmd, "task=plan", "plan.device=h100"], cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True
    )
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "6 jobs" in plan.stdout and not out.exists()
    proc = subprocess.run(
        [*cmd, "logger.wandb.mode=offline"], cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = out / "design_space" / "smoke"
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(results) == 6 and {r["status"] for r in results} == {"completed"}
    assert sorted(network_of(r["overrides"]) for r in results) == [
        (s, i) for s in ("resnet", "resnext") for i in range(3)
    ]
    report = sweep / "report" / "design_space"
    assert {p.name for p in report.iterdir()} >= {"report.md", "networks.csv", "edf.csv", "edf.png", "scatter.png"}
    assert len(pd.read_csv(report / "networks.csv")) == 6
    assert "normalised KS D =" in proc.stdout and "KS test" in (report / "report.md").read_text()
    assert list((report / "wandb").glob("offline-run-*"))  # the W&B report run, offline
    # the report again with more resamples: it names the number it used
    assert design_space_main([str(sweep), "--resamples", "50"]) == 0
    assert "; 50 resamples" in (report / "report.md").read_text()
    assert design_space_main([str(sweep), "--resamples", "5"]) == 2  # one line: report.design_space.resamples=5
    # a rerun finds every network done
    again = subprocess.run(cmd, cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True)
    assert again.returncode == 0 and "skipping" in again.stderr + again.stdout
