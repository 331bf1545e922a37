"""The ablation report of any sweep: groups over seeds, deltas with CIs, verdicts, complexity warnings, seeds needed.

Sweeps are written as the files a training leaves (results.json per job), with the model
complexity of real specs, so the report is checked without training anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from resnext_lab.errors import ConfigError
from resnext_lab.models import complexity, spec_from_config
from resnext_lab.report.__main__ import main
from resnext_lab.report.ablation import ablation, write_ablation
from resnext_lab.report.ablation_text import to_markdown, to_terminal
from resnext_lab.report.collect import load_results
from resnext_lab.report.stats import seeds_needed

PROXY = {
    "template": "cifar",
    "depth": 11,
    "width": "auto",
    "width_scale": 0.5,
    "reference": {"cardinality": 1, "width": 64},
}
#: test top-1 error by C and seed: C=2 clearly better than C=1, C=4 straddles it, C=64 worse.
ERRORS = {1: [10.0, 10.6, 10.3], 2: [9.0, 9.7, 9.2], 4: [10.4, 10.1, 10.9], 64: [12.0, 12.4, 12.9]}


def _model(c: int) -> dict[str, Any]:
    spec = spec_from_config({**PROXY, "cardinality": c}, num_classes=10, in_channels=1, image_size=28)
    ref = spec_from_config({**PROXY, "cardinality": 1, "width": 64}, num_classes=10, in_channels=1, image_size=28)
    return {
        **spec.summary(),
        **complexity(spec),
        "reference": {"cardinality": 1, "width": 64, "match": "params", **complexity(ref)},
    }


def write_sweep(
    root: Path,
    errors: dict[int, list[float]] = ERRORS,
    status: dict[tuple[int, int], str] | None = None,
    skip: tuple[tuple[int, int], ...] = (),
) -> Path:
    for c, values in errors.items():
        for seed, err in enumerate(values):
            if (c, seed) in skip:
                continue
            job = root / f"model.cardinality={c},seed={seed}"
            job.mkdir(parents=True)
            state = (status or {}).get((c, seed), "completed")
            (job / "results.json").write_text(
                json.dumps(
                    {
                        "status": state,
                        "error": None if state == "completed" else "RuntimeError: boom",
                        "overrides": [f"model.cardinality={c}", f"seed={seed}", "trainer.max_epochs=1"],
                        "seed": seed,
                        "model": _model(c),
                        "metrics": {"test/top1_err": err, "test/top5_err": err / 5} if state == "completed" else {},
                    }
                )
            )
    return root


def _row(report: dict[str, Any], c: int) -> dict[str, Any]:
    return next(r for r in report["rows"] if r["model.cardinality"] == str(c))


def test_groups_over_seeds_with_deltas_holm_verdicts_and_the_complexity_warning(tmp_path: Path) -> None:
    report = ablation(load_results(write_sweep(tmp_path)))
    assert report["keys"] == ["model.cardinality"]
    assert [r["model.cardinality"] for r in report["rows"]] == ["1", "2", "4", "64"]  # as swept, numerically
    base, better, unsure, worse = (_row(report, c) for c in (1, 2, 4, 64))
    assert base["verdict"] == "baseline" and base["n"] == 3
    assert base["test/top1_err mean"] == pytest.approx(np.mean(ERRORS[1]))
    assert base["test/top1_err std"] == pytest.approx(np.std(ERRORS[1], ddof=1))
    diffs = np.subtract(ERRORS[2], ERRORS[1])  # paired by seed
    half = sps.t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert better["method"] == "paired" and better["delta"] == pytest.approx(diffs.mean())
    assert (better["ci low"], better["ci high"]) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    # raw p from scipy's paired t-test; Holm over the family of three comparisons
    raw = {c: sps.ttest_rel(ERRORS[c], ERRORS[1]).pvalue for c in (2, 4, 64)}
    assert {c: _row(report, c)["p"] for c in raw} == pytest.approx(raw)
    order = sorted(raw, key=raw.get)
    holm = dict(zip(order, np.maximum.accumulate([min(1, (3 - i) * raw[c]) for i, c in enumerate(order)]), strict=True))
    assert {c: _row(report, c)["p (Holm)"] for c in raw} == pytest.approx(holm)
    assert better["verdict"] == "better" and worse["verdict"] == "worse" and unsure["verdict"] == "inconclusive"
    assert unsure["seeds needed"] is None  # no min effect declared: no power analysis from the observed delta
    # C=64 solves to d=3: 12.4% fewer params than its baseline (1x64d), flagged
    assert worse["d"] == 3 and worse["params vs baseline %"] == pytest.approx(-12.4, abs=0.05)
    assert base["params vs baseline %"] == pytest.approx(0.0)
    assert "model.cardinality=64: params -12.4% against its baseline (model.cardinality=1)" in report["warnings"]
    assert not any(w.startswith("model.cardinality=1:") for w in report["warnings"])
    short = to_terminal(report)
    assert "warning: model.cardinality=64" in short and "p(Holm)" in short and "baseline" in short
    markdown = to_markdown(report)
    assert markdown.count("\n| ") == 1 + 4 and "Holm-adjusted" in markdown and "-12.4% !" in markdown


def test_no_shortcut_groups_show_their_real_complexity(tmp_path: Path) -> None:
    """2 cardinalities x shortcuts on/off: each network without shortcuts is compared with itself with them,
    and its params and FLOPs are shown against that baseline's, not as +0.0%."""
    results = []
    for c in (1, 32):
        for residual in (True, False):
            spec = spec_from_config(
                {**PROXY, "cardinality": c, "residual": residual}, num_classes=10, in_channels=1, image_size=28
            )
            for seed in range(3):
                results.append(
                    {
                        "status": "completed",
                        "seed": seed,
                        "model": {**spec.summary(), **complexity(spec)},
                        "overrides": [f"model.cardinality={c}", f"model.residual={residual}", f"seed={seed}"],
                        "metrics": {"test/top1_err": 20.0 + (5 + seed * 0.2) * (not residual) + seed * 0.3},
                    }
                )
    report = ablation(results, baseline="model.residual=true", min_effect=1.0)
    rows = {(r["model.cardinality"], r["model.residual"]): r for r in report["rows"]}
    for c in ("1", "32"):
        assert rows[(c, "True")]["verdict"] == "baseline"
        without = rows[(c, "False")]
        assert without["params vs baseline %"] < -1 and without["flops vs baseline %"] < -1
        assert without["delta"] == pytest.approx(5.2) and without["verdict"] == "worse"
        assert without["p (Holm)"] == pytest.approx(min(1, 2 * without["p"]))  # a family of two
    assert len(report["per_seed"]) == 12 * 1  # one metric per job here (no top-5)


def test_failed_and_missing_jobs_are_shown_not_dropped(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, status={(4, 2): "diverged", (2, 0): "failed"}, skip=((64, 1),))
    report = ablation(load_results(sweep))
    assert _row(report, 4)["n"] == 2 and _row(report, 4)["not completed"] == "1 diverged"
    assert _row(report, 2)["not completed"] == "1 failed"
    assert _row(report, 64)["not completed"] == "1 missing"
    assert _row(report, 2)["method"] == "paired"  # seeds 1 and 2 are shared
    assert [line for line in to_terminal(report).splitlines() if "model.cardinality=4 " in line][0].endswith(
        "1 diverged"
    )


def test_baseline_and_min_effect_settings(tmp_path: Path) -> None:
    results = load_results(write_sweep(tmp_path))
    report = ablation(results, baseline="model.cardinality=2", min_effect=0.5)
    assert _row(report, 2)["verdict"] == "baseline" and _row(report, 1)["verdict"] == "worse"
    unsure = _row(report, 4)
    assert unsure["verdict"] == "inconclusive"
    sd = np.std(np.subtract(ERRORS[4], ERRORS[2]), ddof=1)
    # for the declared effect, at the family's alpha / 3, with the range of the spread's 95% interval
    n = seeds_needed(0.5, sd, paired=True, alpha=0.05 / 3)
    lo = seeds_needed(0.5, sd * np.sqrt(2 / sps.chi2.ppf(0.975, 2)), paired=True, alpha=0.05 / 3)
    hi = seeds_needed(0.5, sd * np.sqrt(2 / sps.chi2.ppf(0.025, 2)), paired=True, alpha=0.05 / 3)
    assert unsure["seeds needed"] == f"{n} [{lo}, {'>1000' if hi is None else hi}]" and lo < n
    with pytest.raises(ConfigError, match=r"^report.baseline='model.depth=50': must be a swept setting"):
        ablation(results, baseline="model.depth=50")


def test_a_tie_is_claimed_only_by_the_equivalence_test(tmp_path: Path) -> None:
    """Two groups 0.05 apart with a tight spread are `equivalent` at a margin of 1 point; the same groups at
    a margin of 0.01 are `not shown equal`, never a tie for want of a significant difference."""
    errors = {1: [10.0, 10.6, 10.3, 10.1], 2: [10.05, 10.6, 10.4, 10.1]}
    results = load_results(write_sweep(tmp_path, errors))
    wide = _row(ablation(results, min_effect=1.0, test="equivalence"), 2)
    diffs = np.subtract(errors[2], errors[1])
    tost = max(
        sps.ttest_1samp(diffs, -1.0, alternative="greater").pvalue,
        sps.ttest_1samp(diffs, 1.0, alternative="less").pvalue,
    )
    assert wide["TOST p (Holm)"] == pytest.approx(tost) and wide["verdict"] == "equivalent"
    assert _row(ablation(results, min_effect=0.01, test="equivalence"), 2)["verdict"] == "not shown equal"
    assert _row(ablation(results), 2)["verdict"] == "inconclusive"  # no margin: no tie


def test_the_declared_exclusion_rule_removes_jobs_and_lists_them(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path)
    job = sweep / "model.cardinality=4,seed=0"
    (job / "csv").mkdir()
    (job / "csv" / "metrics.csv").write_text("epoch,step,train/loss\n0,10,2.9\n1,20,1.1\n")  # above ln 10
    result = json.loads((job / "results.json").read_text())
    (job / "results.json").write_text(json.dumps({**result, "metrics_csv": "csv/metrics.csv"}))
    kept = ablation(load_results(sweep))
    assert _row(kept, 4)["n"] == 3
    report = ablation(load_results(sweep), exclude="first_epoch_above_chance")
    row = _row(report, 4)
    assert row["n"] == 2 and row["not completed"] == "1 excluded"
    assert row["excluded"] == "seed 0: first-epoch training loss 2.90 above chance (2.30)"
    assert "Excluded jobs:" in to_markdown(report)
    with pytest.raises(ConfigError, match=r"^report.exclude='later': must be null or one of first_epoch_above_chance"):
        ablation(load_results(sweep), exclude="later")


def _simulated_power(n: int, effect: float, sd: float, paired: bool, trials: int = 4000) -> float:
    rng = np.random.default_rng(0)
    if paired:
        p = sps.ttest_1samp(rng.normal(effect, sd, (trials, n)), 0.0, axis=1).pvalue
    else:
        p = sps.ttest_ind(rng.normal(effect, sd, (trials, n)), rng.normal(0.0, sd, (trials, n)), axis=1).pvalue
    return float((p < 0.05).mean())


@pytest.mark.parametrize(("effect", "sd", "paired"), [(0.4, 0.6, True), (1.0, 1.2, False), (0.3, 0.2, True)])
def test_seeds_needed_reach_80_percent_power_in_simulation(effect: float, sd: float, paired: bool) -> None:
    """The smallest n whose t-test finds the effect 80% of the time: n does (within simulation error), n-1 does not."""
    n = seeds_needed(effect, sd, paired)
    assert n is not None and n >= 2
    assert _simulated_power(n, effect, sd, paired) >= 0.78
    if n > 2:
        assert _simulated_power(n - 1, effect, sd, paired) < 0.82


def test_seeds_needed_textbook_values() -> None:
    """Cohen's d = 0.5 needs 64 per group (two-sample) and 34 (paired, d_z = 0.5) at 80% power, alpha 0.05."""
    assert seeds_needed(0.5, 1.0, paired=False) == 64
    assert seeds_needed(0.5, 1.0, paired=True) == 34
    assert seeds_needed(0.0, 1.0, paired=True) is None


def test_command_line_writes_the_report_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = write_sweep(tmp_path / "sweep")
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "ablation over seeds 0, 1, 2" in out
    folder = sweep / "report"
    assert {p.name for p in folder.iterdir()} == {
        "report.md",
        "report.csv",
        "per_seed.csv",
        "error_vs_model.cardinality.png",
        "error_vs_params.png",
    }
    assert (folder / "per_seed.csv").read_text().count("\n") == 1 + 12 * 2  # 12 jobs x top-1, top-5
    assert (folder / "report.csv").read_text().count("\n") == 1 + 4
    assert main([str(tmp_path / "nowhere")]) == 2


def test_write_ablation_refuses_an_empty_sweep(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no results.json"):
        write_ablation(tmp_path)


def test_report_run_holds_the_table_in_the_sweeps_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One offline `job_type=report` W&B run; its table keeps every row, numbers and "> 1000" alike."""
    from conftest import wandb_records, wandb_summary

    from resnext_lab.tracking import log_report_run

    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONFIG_DIR": str(tmp_path / "c"),
        "WANDB_CACHE_DIR": str(tmp_path / "c"),
        "WANDB_DATA_DIR": str(tmp_path / "c"),
    }.items():
        monkeypatch.setenv(key, value)
    sweep = write_sweep(tmp_path / "sweep", {**ERRORS, 8: [10.5, 10.15, 10.3]})  # C=8: a delta far below its noise
    report, written = write_ablation(sweep, min_effect=0.01)
    assert _row(report, 8)["seeds needed"].startswith(">1000")
    folder = log_report_run(
        report,
        [p for p in written if p.suffix == ".png"],
        sweep / "report",
        {"enabled": True, "project": "resnext-lab", "mode": "auto"},
        "sweeps/demo",
    )
    assert folder is not None
    run_file = next(folder.glob("run-*.wandb"))
    (record,) = [r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run"]
    assert (record.job_type, record.run_group) == ("report", "sweeps/demo")
    summary = wandb_summary(run_file)
    table = json.loads((folder / "files" / summary["ablation/path"]).read_text())  # nested keys read as a/b
    needed = [row[table["columns"].index("seeds needed")] for row in table["data"]]
    assert len(table["data"]) == 5 and any(str(n).startswith(">1000") for n in needed)
    assert {"plots/error_vs_model.cardinality/path", "plots/error_vs_params/path"} <= set(summary)


def test_boolean_baseline_as_the_user_types_it() -> None:
    """`report.baseline=model.residual=true` names the group Hydra writes as model.residual=True."""
    results = [
        {"status": "completed", "overrides": [f"model.residual={flag}", f"seed={seed}"], "seed": seed,
         "metrics": {"test/top1_err": err}, "model": {"params": 1000, "flops": 40000}}
        for flag, errs in (("True", (20.0, 21.0, 22.0)), ("False", (25.0, 27.0, 26.5)))
        for seed, err in enumerate(errs)
    ]  # fmt: skip
    for typed in ("model.residual=true", "model.residual=True"):
        report = ablation(results, baseline=typed)
        verdicts = {row["model.residual"]: row["verdict"] for row in report["rows"]}
        assert verdicts == {"True": "baseline", "False": "worse"}
