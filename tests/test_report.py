"""The sweep report: collection, statistics against scipy, tables, figures, CLI and notebook.

Every test builds its own fake sweep in a temporary folder (the files a training
writes: results.json and a Lightning metrics.csv per job), so the report is
checked without training anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
try:
    import resnext_lab  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(SRC))

from resnext_lab.errors import ConfigError, DataError  # noqa: E402
from resnext_lab.report import (  # noqa: E402
    Difference,
    difference,
    load_curves,
    load_results,
    load_table_def,
    results_frame,
    summarize,
    table_markdown,
    validate_table,
    verdict,
    welch,
    write_report,
)
from resnext_lab.report.__main__ import main  # noqa: E402
from resnext_lab.report.collect import lookup  # noqa: E402
from resnext_lab.report.stats import holm, paper_ordering, seeds_needed_range  # noqa: E402
from resnext_lab.report.tables import analyse  # noqa: E402

# Final test/top1_err per (depth, cardinality) and seed; None = a job of that seed failed/diverged.
RUNS: dict[tuple[int, int], dict[int, float | str]] = {
    (50, 1): {1: 10.2, 2: 10.8, 3: 10.5},
    (50, 2): {1: 9.6, 2: 10.1, 3: 9.7},  # clearly below the baseline: the paper's ordering holds
    (50, 4): {1: 10.9, 2: 11.6, 3: "failed"},  # above the baseline: reversed, one failed job
    # (50, 32): no job at all -> "missing"
    (101, 1): {1: 9.0, 2: 9.9, 3: 9.3},
    (101, 32): {1: 8.9, 2: 10.0, 3: "diverged"},  # straddles the baseline: inconclusive
    (101, 8): {1: 8.5, 2: 9.0, 3: 8.8},  # no paper value
    (152, 1): {1: 8.0},  # matches no cell of the table
}
WIDTHS = {1: 64, 2: 40, 4: 24, 8: 14, 32: 4}

TABLE: dict[str, Any] = {
    "title": "Table 3 (proxy): cardinality vs width",
    "metric": "test/top1_err",
    "paired_by": "seed",
    "x_axis": "params",
    "rows": [
        {
            "label": "50-layer",
            "baseline": "1x64d",
            "cells": [
                {"label": "1x64d", "match": {"model.depth": 50, "model.cardinality": 1}, "paper": 23.9},
                {"label": "2x40d", "match": {"model.depth": 50, "model.cardinality": 2}, "paper": 23.0},
                {"label": "4x24d", "match": {"model.depth": 50, "model.cardinality": 4}, "paper": 22.6},
                {"label": "32x4d", "match": {"model.depth": 50, "model.cardinality": 32}, "paper": 22.2},
            ],
        },
        {
            "label": "101-layer",
            "baseline": "1x64d",
            "cells": [
                {"label": "1x64d", "match": {"model.depth": 101, "model.cardinality": 1}, "paper": 22.0},
                {"label": "32x4d", "match": {"model.depth": 101, "model.cardinality": 32}, "paper": 21.2},
                {"label": "8x14d", "match": {"model.depth": 101, "model.cardinality": 8}, "paper": None},
            ],
        },
    ],
}


def _values(depth: int, card: int) -> list[float]:
    return [v for v in RUNS[(depth, card)].values() if isinstance(v, float)]


def _write_job(job_dir: Path, depth: int, card: int, seed: int, outcome: float | str, with_csv: bool) -> None:
    job_dir.mkdir(parents=True)
    final = outcome if isinstance(outcome, float) else None
    status = "completed" if final is not None else outcome
    params = 1_000_000 + 37_000 * card + 20_000 * (depth - 50)
    result = {
        "status": status,
        "error": None if final is not None else f"RuntimeError: job {status}",
        "overrides": [f"model.depth={depth}", f"model.cardinality={card}", f"seed={seed}"],
        "experiment": "table3",
        "scale": "smoke",
        "seed": seed,
        "model": {
            "template": "imagenet",
            "depth": depth,
            "cardinality": card,
            "width": WIDTHS.get(card, 64),
            "residual": True,
            "block": "grouped",
            "name": f"ResNeXt-{depth} {card}x{WIDTHS.get(card, 64)}d",
            "params": params,
            "flops": 40 * params,
        },
        "metrics": {"test/top1_err": final, "val/top1_err": None if final is None else final + 0.3},
        "epochs": 3,
        "wall_time_s": 12.3,
        "metrics_csv": "csv/metrics.csv" if with_csv else None,
        "wandb": {"id": f"run{depth}{card}{seed}", "dir": str(job_dir), "mode": "offline"},
    }
    (job_dir / "results.json").write_text(json.dumps(result))
    if with_csv:
        (job_dir / "csv").mkdir()
        last = final if final is not None else 50.0
        rows = []
        for epoch in range(3):
            train = last + 6.0 - 3.0 * epoch - 0.1 * card
            val = last + 3.0 - 1.5 * epoch
            rows.append({"epoch": epoch, "step": 10 * epoch + 5, "train/top1_err": train + 0.5, "train/loss": 1.0})
            rows.append({"epoch": epoch, "step": 10 * epoch + 9, "train/top1_err": train, "train/loss": 0.9})
            rows.append({"epoch": epoch, "step": 10 * epoch + 9, "val/top1_err": val, "val/top5_err": val / 4})
        pd.DataFrame(rows).to_csv(job_dir / "csv" / "metrics.csv", index=False)


def make_sweep(root: Path, with_csv: bool = True) -> Path:
    """A multirun-like folder: jobs at two depths of nesting, plus one truncated results.json."""
    job = 0
    for (depth, card), seeds in RUNS.items():
        for seed, outcome in seeds.items():
            sub = root / "multirun" / f"{job}" if job % 2 else root / "group" / f"d{depth}" / f"{job}"
            _write_job(sub, depth, card, seed, outcome, with_csv)
            job += 1
    broken = root / "multirun" / "broken"
    broken.mkdir(parents=True)
    (broken / "results.json").write_text('{"status": "completed", "metrics": {"test/top')
    return root


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    return make_sweep(tmp_path / "sweep")


@pytest.fixture()
def table_file(tmp_path: Path) -> Path:
    path = tmp_path / "table3.yaml"
    path.write_text(yaml.safe_dump({"defaults": ["_self_"], "report": TABLE}, sort_keys=False))
    return path


def _record(frame: pd.DataFrame, row: str, cell: str) -> dict[str, Any]:
    hits = frame[(frame["row"] == row) & (frame["cell"] == cell)]
    assert len(hits) == 1, (row, cell)
    return hits.iloc[0].to_dict()


# --- collect -------------------------------------------------------------------------------------------------------


def test_load_results_keeps_every_job(sweep: Path) -> None:
    results = load_results(sweep)
    assert len(results) == sum(len(s) for s in RUNS.values()) + 1
    statuses = [r["status"] for r in results]
    assert statuses.count("unreadable") == 1
    assert statuses.count("failed") == 1 and statuses.count("diverged") == 1
    broken = next(r for r in results if r["status"] == "unreadable")
    assert broken["_dir"] == sweep / "multirun" / "broken"
    assert "JSONDecodeError" in broken["error"] and "\n" not in broken["error"]
    assert all(isinstance(r["_dir"], Path) for r in results)
    frame = results_frame(results)
    assert len(frame) == len(results) and {"model.params", "metrics.test/top1_err", "status"} <= set(frame.columns)


def test_load_results_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_results(tmp_path / "nope")


def test_load_curves_collapses_sparse_rows(sweep: Path) -> None:
    result = next(r for r in load_results(sweep) if r.get("seed") == 1 and r["model"]["cardinality"] == 2)
    curves = load_curves(result)
    assert list(curves.index) == [0, 1, 2]
    assert "step" not in curves.columns
    # The last train row of each epoch wins; val columns come from the val row.
    expected_train = [9.6 + 6.0 - 3.0 * e - 0.2 for e in range(3)]
    np.testing.assert_allclose(curves["train/top1_err"].to_numpy(), expected_train)
    np.testing.assert_allclose(curves["val/top1_err"].to_numpy(), [9.6 + 3.0 - 1.5 * e for e in range(3)])
    np.testing.assert_allclose(curves["train/loss"].to_numpy(), [0.9] * 3)
    assert load_curves({"_dir": sweep, "metrics_csv": "nope.csv"}).empty
    assert load_curves({"_dir": sweep}).empty


# --- stats ---------------------------------------------------------------------------------------------------------


def test_summarize_matches_numpy() -> None:
    values = [10.2, 10.8, 10.5]
    s = summarize(values)
    assert s.n == 3
    assert s.mean == pytest.approx(np.mean(values))
    assert s.std == pytest.approx(np.std(values, ddof=1))
    assert summarize([4.0]) == summarize([4.0]) and summarize([4.0]).std is None
    assert summarize([]).mean is None


def test_paired_interval_matches_scipy() -> None:
    cell, base = _values(50, 2), _values(50, 1)
    diff = difference(cell, base, [1, 2, 3], [1, 2, 3])
    ref = sps.ttest_rel(cell, base).confidence_interval(0.95)
    assert diff.method == "paired" and diff.n == 3
    assert diff.delta == pytest.approx(np.mean(np.subtract(cell, base)))
    assert (diff.low, diff.high) == (pytest.approx(ref.low), pytest.approx(ref.high))
    # By hand: mean difference +/- t(0.975, n-1) * sd / sqrt(n).
    d = np.subtract(cell, base)
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert diff.high - diff.low == pytest.approx(2 * half)


def test_pairing_uses_only_shared_seeds() -> None:
    # Seed 3 has no partner: the paired interval is over seeds 1 and 2 only.
    diff = difference([10.9, 11.6], [10.2, 10.8, 10.5], [1, 2], [1, 2, 3])
    ref = sps.ttest_rel([10.9, 11.6], [10.2, 10.8]).confidence_interval(0.95)
    assert diff.method == "paired" and diff.n == 2
    assert (diff.low, diff.high) == (pytest.approx(ref.low), pytest.approx(ref.high))


def test_welch_interval_matches_scipy() -> None:
    cell, base = [9.6, 10.1, 9.7, 9.9], [10.2, 10.8, 10.5]
    ref = sps.ttest_ind(cell, base, equal_var=False).confidence_interval(0.95)
    for diff in (welch(cell, base), difference(cell, base), difference(cell, base, [1, 2, 3, 4], [5, 6, 7])):
        assert diff.method == "welch"
        assert diff.delta == pytest.approx(np.mean(cell) - np.mean(base))
        assert (diff.low, diff.high) == (pytest.approx(ref.low), pytest.approx(ref.high))


def test_too_few_seeds_has_no_interval() -> None:
    diff = difference([9.0], [10.0, 10.5], [1], [1, 2])  # one shared seed: Welch, and one side has n=1
    assert diff.delta == pytest.approx(-1.25) and not diff.has_interval and diff.p is None
    assert verdict(diff, None, None) == "inconclusive"
    assert difference([], [1.0, 2.0]).delta is None


def test_p_values_and_tost_are_scipys() -> None:
    cell, base = [9.6, 10.1, 9.7, 9.9], [10.2, 10.8, 10.5, 10.4]
    paired = difference(cell, base, [1, 2, 3, 4], [1, 2, 3, 4], margin=1.0)
    d = np.subtract(cell, base)
    assert paired.p == pytest.approx(sps.ttest_rel(cell, base).pvalue)
    assert paired.p_equiv == pytest.approx(
        max(sps.ttest_1samp(d, -1.0, alternative="greater").pvalue, sps.ttest_1samp(d, 1.0, alternative="less").pvalue)
    )
    unpaired = welch(cell, base, margin=1.0)
    assert unpaired.p == pytest.approx(sps.ttest_ind(cell, base, equal_var=False).pvalue)
    x, y = np.asarray(cell), np.asarray(base)
    assert unpaired.p_equiv == pytest.approx(
        max(
            sps.ttest_ind(x + 1.0, y, equal_var=False, alternative="greater").pvalue,
            sps.ttest_ind(x - 1.0, y, equal_var=False, alternative="less").pvalue,
        )
    )


def test_holm_by_hand() -> None:
    """Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> monotone: 0.06 for both last."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.02, None, 0.03]) == pytest.approx([0.04, None, 0.04])  # None: not tested, not counted
    assert holm([0.6, 0.7]) == [1.0, 1.0]


@pytest.mark.parametrize(
    ("delta", "p_adj", "p_eq", "test", "expected"),
    [
        (-0.6, 0.01, None, "difference", "better"),
        (0.6, 0.01, None, "difference", "worse"),
        (0.6, 0.2, None, "difference", "inconclusive"),
        (0.1, 0.2, 0.01, "difference", "equivalent"),
        (0.1, 0.2, 0.01, "equivalence", "equivalent"),
        (0.9, 0.01, 0.3, "equivalence", "differ"),
        (0.1, 0.3, 0.3, "equivalence", "not shown equal"),
    ],
)
def test_verdict_reads_adjusted_p(delta: float, p_adj: float, p_eq: float | None, test: str, expected: str) -> None:
    diff = Difference(delta, delta - 0.2, delta + 0.2, "paired", 5)
    assert verdict(diff, p_adj, p_eq, test) == expected
    assert verdict(None, 0.01, None) == "missing"


@pytest.mark.parametrize(
    ("measured", "paper_cell", "paper_base", "expected"),
    [
        ("better", 23.0, 23.9, "holds"),
        ("worse", 22.6, 23.9, "reversed"),
        ("inconclusive", 21.2, 22.0, "not shown"),
        ("worse", 31.2, 23.9, "holds"),  # the paper predicts a higher error (no shortcuts)
        ("better", None, 23.9, "no paper value"),
        ("equivalent", 22.2, 22.2, "holds"),  # the paper's tie is confirmed only by equivalence
        ("not shown equal", 22.2, 22.2, "not shown"),
        ("differ", 22.2, 22.2, "reversed"),
        ("equivalent", 21.3, 22.0, "not shown"),
    ],
)
def test_paper_ordering(measured: str, paper_cell: float | None, paper_base: float, expected: str) -> None:
    assert paper_ordering(measured, paper_cell, paper_base) == expected


def test_seeds_needed_grows_with_the_spread() -> None:
    """Monotone in the seed spread, also where scipy's noncentral t cdf returns nan far in its tail."""
    from resnext_lab.report.stats import seeds_needed

    needed = [seeds_needed(1.0, sd, paired=True, alpha=0.025) for sd in np.linspace(0.02, 1.5, 75)]
    assert needed == sorted(needed) and needed[0] == 2 and seeds_needed(1.0, 0.2528452767961693, True, 0.025) == 4


def test_seeds_needed_range_widens_with_few_seeds() -> None:
    few = difference([9.6, 10.1, 9.7], [10.2, 10.8, 10.5], [1, 2, 3], [1, 2, 3])
    many = difference(list(np.linspace(9, 10, 12)), list(np.linspace(9.2, 10.3, 12)), list(range(12)), list(range(12)))
    r_few, r_many = seeds_needed_range(0.5, few), seeds_needed_range(0.5, many)
    assert r_few.low <= r_few.n and (r_few.high is None or r_few.high >= r_few.n)
    assert (r_few.high or 10**4) - r_few.low > (r_many.high or 10**4) - r_many.low


# --- tables --------------------------------------------------------------------------------------------------------


def _outcome(outcomes: list[Any], name: str) -> Any:
    return next(o for o in outcomes if o.name == name)


def test_render_statistics_and_verdicts(sweep: Path) -> None:
    markdown, frame = table_markdown(load_results(sweep), TABLE)
    assert len(frame) == 7  # one line per cell, none dropped
    _, outcomes = analyse(load_results(sweep), validate_table(TABLE))

    base = _record(frame, "50-layer", "1x64d")
    assert base["state"] == "baseline" and base["n"] == 3
    assert base["mean"] == pytest.approx(np.mean(_values(50, 1)))
    assert base["std"] == pytest.approx(np.std(_values(50, 1), ddof=1))
    assert base["trained"] == "50 layers, 1x64d"

    # one family: every cell against its row baseline; Holm over the tests that could run
    c2 = _outcome(outcomes, "2x40d vs 50-layer / 1x64d")
    ref = sps.ttest_rel(_values(50, 2), _values(50, 1))
    assert c2.diff.method == "paired" and c2.diff.p == pytest.approx(ref.pvalue)
    assert (c2.diff.low, c2.diff.high) == (
        pytest.approx(ref.confidence_interval().low),
        pytest.approx(ref.confidence_interval().high),
    )
    tested = [o for o in outcomes if o.diff is not None and o.diff.p is not None]
    assert {o.family_size for o in tested} == {len(tested)}
    assert holm([o.diff.p for o in tested]) == pytest.approx([o.p_adj for o in tested])
    for o in tested:
        assert o.verdict == verdict(o.diff, o.p_adj, None)

    c4 = _record(frame, "50-layer", "4x24d")
    assert c4["n"] == 2 and c4["excluded"] == "1 failed"
    assert _outcome(outcomes, "4x24d vs 50-layer / 1x64d").diff.n == 2

    missing = _record(frame, "50-layer", "32x4d")
    assert missing["state"] == "missing" and missing["n"] == 0 and missing["jobs"] == 0
    assert _outcome(outcomes, "50-layer / 32x4d vs 50-layer / 1x64d").verdict == "missing"

    assert _record(frame, "101-layer", "32x4d")["excluded"] == "1 diverged"
    assert _outcome(outcomes, "8x14d vs 101-layer / 1x64d").paper in ("no paper value",)

    lines = markdown.splitlines()
    assert lines[0] == "## Table 3 (proxy): cardinality vs width"
    line_32 = next(line for line in lines if "| 32x4d |" in line and "22.2" in line)
    assert "missing" in line_32
    line_4 = next(line for line in lines if "| 4x24d |" in line)
    assert "1 failed" in line_4 and "(n=2)" in line_4
    assert "1 diverged" in next(line for line in lines if "| 32x4d |" in line and "21.2" in line)
    assert "### Contrasts" in markdown and "p (Holm)" in markdown
    assert "unreadable results.json" in markdown and "1 job(s) of the sweep match no cell" in markdown


def test_declared_contrasts_complexity_multiple_and_exclusion(sweep: Path) -> None:
    """Table 4's shape: contrasts between cells in named families, a cell declared at 2x its row baseline's
    complexity, and an exclusion rule that removes a row's jobs and leaves it not interpretable."""
    table = {
        **TABLE,
        "min_effect": 0.5,
        "exclude": "first_epoch_above_chance",
        "contrasts": [
            {"cell": "8x14d", "vs": "101-layer / 32x4d", "family": "primary"},
            {"cell": "8x14d", "vs": "101-layer / 1x64d", "family": "secondary"},
            {"cell": "2x40d", "vs": "50-layer / 1x64d", "family": "secondary"},
        ],
    }
    rows = [dict(r) for r in table["rows"]]
    rows[1] = {**rows[1], "cells": [*rows[1]["cells"][:2], {**rows[1]["cells"][2], "complexity": 2}]}
    table["rows"] = rows
    results = load_results(sweep)
    for job in results:  # every 101-layer job's loss began above chance
        if lookup(job, "model.depth") == 101 and job.get("status") == "completed":
            pd.DataFrame([{"epoch": 0, "step": 1, "train/loss": 3.0}]).to_csv(
                job["_dir"] / "csv" / "metrics.csv", index=False
            )
    markdown, frame = table_markdown(results, table)
    _, outcomes = analyse(results, validate_table(table))
    assert [(o.family, o.verdict) for o in outcomes] == [
        ("primary", "not interpretable"),
        ("secondary", "not interpretable"),
        ("secondary", verdict(outcomes[2].diff, outcomes[2].p_adj, outcomes[2].p_equiv_adj)),
    ]
    assert outcomes[2].family_size == 1 and outcomes[2].p_adj == pytest.approx(outcomes[2].diff.p)
    assert outcomes[2].seeds is not None  # min effect declared
    c8 = _record(frame, "101-layer", "8x14d")
    assert c8["state"] == "not interpretable" and c8["complexity_multiple"] == 2
    base_params = _record(frame, "101-layer", "1x64d")["params"]
    assert c8["params_vs_reference"] == pytest.approx(c8["params"] / (2 * base_params) - 1)
    assert "Excluded by `first_epoch_above_chance`" in markdown and "101-layer / 1x64d, seed 1" in markdown


def test_omitted_cell_says_why_and_a_run_one_still_counts(sweep: Path) -> None:
    omitted = [{"match": {"model.cardinality": 32}, "why": "no integer d within 5% at this width"}]
    markdown, frame = table_markdown(load_results(sweep), {**TABLE, "omitted": omitted})
    left_out = _record(frame, "50-layer", "32x4d")  # no job: left out on purpose
    assert left_out["state"] == "not run" and left_out["excluded"] == "not run: no integer d within 5% at this width"
    assert "not run: no integer d within 5% at this width" in markdown
    assert _record(frame, "101-layer", "32x4d")["state"] == ""  # it has jobs: reported as run
    _, outcomes = analyse(load_results(sweep), validate_table({**TABLE, "omitted": omitted}))
    left = _outcome(outcomes, "50-layer / 32x4d vs 50-layer / 1x64d")
    assert (left.verdict, left.paper, left.family_size) == ("not run", "not run", 0)


def test_render_welch_when_not_paired(sweep: Path) -> None:
    _, outcomes = analyse(load_results(sweep), validate_table({**TABLE, "paired_by": None}))
    c2 = _outcome(outcomes, "2x40d vs 50-layer / 1x64d")
    ref = sps.ttest_ind(_values(50, 2), _values(50, 1), equal_var=False).confidence_interval(0.95)
    assert c2.diff.method == "welch"
    assert (c2.diff.low, c2.diff.high) == (pytest.approx(ref.low), pytest.approx(ref.high))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metric": None}, "report.metric"),
        ({"rows": []}, "report.rows"),
        ({"x_axis": "depth"}, "report.x_axis"),
        ({"rows": [{"label": "r", "baseline": "zz", "cells": [{"label": "a", "match": {"seed": 1}}]}]}, "baseline"),
        ({"rows": [{"label": "r", "cells": [{"label": "a"}]}]}, r"cells\[0\]\.match"),
        ({"omitted": [{"match": {"seed": 1}}]}, r"report\.omitted\[0\]"),
        ({"omitted": "C=8"}, "report.omitted"),
        ({"min_effect": -1}, "report.min_effect"),
        ({"test": "equivalence"}, "needs report.min_effect"),
        ({"exclude": "after_the_fact"}, "report.exclude"),
        ({"contrasts": [{"cell": "2x40d", "vs": "nowhere"}]}, r"report.contrasts\[0\]"),
    ],
)
def test_bad_table_definition(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_table({**TABLE, **change})


def test_write_report_files(sweep: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "report" / "table3"
    written = write_report(sweep, TABLE, out)
    names = [p.name for p in written]
    assert names == ["table.md", "table.csv", "per_seed.csv", "contrasts.csv", "curves.png", "size.png", "bars.png"]
    seeds = pd.read_csv(out / "per_seed.csv")
    assert list(seeds.columns) == ["row", "cell", "seed", "metric", "value", "excluded"]
    two = seeds[(seeds.cell == "2x40d") & (seeds.metric == "test/top1_err")].sort_values("seed")
    assert list(two.value) == pytest.approx(_values(50, 2))
    assert len(pd.read_csv(out / "contrasts.csv")) == 5
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    csv = pd.read_csv(out / "table.csv")
    assert len(csv) == 7
    assert csv.set_index(["row", "cell"]).loc[("50-layer", "32x4d"), "state"] == "missing"
    assert csv.set_index(["row", "cell"]).loc[("50-layer", "4x24d"), "excluded"] == "1 failed"
    assert "skipped" not in (out / "table.md").read_text()
    for png in written[4:]:
        assert png.stat().st_size > 10_000
        with Image.open(png) as image:
            image.verify()
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 400
            lo, hi = image.convert("L").getextrema()
            assert hi - lo > 100  # not a blank canvas


def test_write_report_skips_plots_without_data(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path / "sweep", with_csv=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "curves.png").write_bytes(b"stale")
    written = write_report(sweep, TABLE, out)
    assert [p.name for p in written] == [
        "table.md",
        "table.csv",
        "per_seed.csv",
        "contrasts.csv",
        "size.png",
        "bars.png",
    ]
    assert not (out / "curves.png").exists()
    assert "curves.png skipped: no metrics.csv" in (out / "table.md").read_text()


def test_write_report_without_results(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no results.json"):
        write_report(tmp_path / "empty", TABLE, tmp_path / "out")


# --- command line --------------------------------------------------------------------------------------------------


def test_cli_success(sweep: Path, table_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert load_table_def(table_file)["metric"] == "test/top1_err"
    out = tmp_path / "cli"
    assert main([str(sweep), "--table", str(table_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## Table 3 (proxy)" in printed and f"wrote {out / 'bars.png'}" in printed
    assert (out / "table.md").is_file()


def test_cli_bad_table(sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("report:\n  rows: []\n")
    assert main([str(sweep), "--table", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: report.metric") and err.count("\n") == 1
    assert main([str(sweep), "--experiment", "no_such_experiment", "--out", str(tmp_path / "o")]) == 2
    assert "no_such_experiment.yaml" in capsys.readouterr().err


def test_cli_missing_sweep_folder(tmp_path: Path, table_file: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "resnext_lab.report", str(tmp_path / "nope"), "--table", str(table_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr


# --- notebook ------------------------------------------------------------------------------------------------------


def test_notebook_executes_on_fake_sweep(
    sweep: Path, table_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("RESNEXT_SWEEP", str(sweep))
    monkeypatch.setenv("RESNEXT_TABLE", str(table_file))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    nb = nbformat.read(ROOT / "notebooks" / "analysis.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.get("output_type") == "error"]
    text = "".join(str(out.get("text", "")) + str(out.get("data", {}).get("text/markdown", "")) for out in outputs)
    assert "WANDB_API_KEY not set" in text
    assert "Table 3 (proxy)" in text
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 3


def test_plot_labels_name_the_network_trained(tmp_path: Path) -> None:
    """A scale that builds the paper's "50-layer" cells with 29 layers: the legend and the bars say 29 layers."""
    from resnext_lab.report import group_cells
    from resnext_lab.report.plots import bars_figure, curves_figure

    for card in (1, 32):
        for seed in (1, 2):
            job = tmp_path / f"job{card}_{seed}"
            _write_job(job, 29, card, seed, 10.0 + seed, with_csv=True)
    rows = [
        {
            **row,
            "cells": [
                {**cell, "match": {**cell["match"], "model.depth": {50: 29, 101: 56}[cell["match"]["model.depth"]]}}
                for cell in row["cells"]
            ],
        }
        for row in TABLE["rows"]
    ]
    cells = group_cells(load_results(tmp_path), validate_table({**TABLE, "rows": rows}))
    legend = [t.get_text() for t in curves_figure(cells, "test/top1_err").axes[0].get_legend().get_texts()]
    assert "1x64d (50-layer), trained: 29 layers, 1x64d" in legend
    assert "32x4d (50-layer), trained: 29 layers, 32x4d" in legend
    ticks = [t.get_text() for t in bars_figure(cells, "test/top1_err").axes[0].get_xticklabels()]
    assert "32x4d\n(50-layer)\ntrained: 29 layers, 32x4d" in ticks


def test_curves_of_one_epoch_are_drawn(tmp_path: Path) -> None:
    """One epoch gives one point per series: it must show inside the axes (a line of one point draws nothing)."""
    from resnext_lab.report import group_cells
    from resnext_lab.report.plots import curves_figure

    for seed in (1, 2):
        job = tmp_path / f"job{seed}"
        _write_job(job, 50, 1, seed, 10.0 + seed, with_csv=True)
        rows = [
            {"epoch": 0, "step": 9, "train/top1_err": 30.0, "train/loss": 0.9},
            {"epoch": 0, "step": 9, "val/top1_err": 20.0, "val/top5_err": 5.0},
        ]
        pd.DataFrame(rows).to_csv(job / "csv" / "metrics.csv", index=False)
    table = validate_table({**TABLE, "rows": [{**TABLE["rows"][0], "cells": TABLE["rows"][0]["cells"][:1]}]})
    fig = curves_figure(group_cells(load_results(tmp_path), table), "test/top1_err")
    assert fig is not None
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255
    box = fig.axes[0].get_window_extent()
    height = pixels.shape[0]
    inside = pixels[int(height - box.y1) + 2 : int(height - box.y0) - 2, int(box.x0) + 2 : int(box.x1) - 2]
    coloured = (inside.max(axis=-1) - inside.min(axis=-1)) > 0.25  # not white, grey or black: a series
    assert coloured.sum() > 20, "the one-epoch series left no mark inside the axes"
