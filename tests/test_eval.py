"""task=eval: a run's checkpoint scored again reproduces the run's own test; a sweep re-scored reaches the report;
every bad input is one line and exit 2."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, tiny

FP32 = ["trainer.precision=32-true", "logger=csv"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, run_cli) -> Path:
    """A tiny fp32 sweep: residual true and false, one seed each (two runs)."""
    out = tmp_path_factory.mktemp("eval")
    done = run_cli("-m", *tiny(*FP32), "model.residual=true,false", "name=pair", f"out_root={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "pair"


def _runs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/results.json"))


def test_eval_reproduces_the_runs_test_error(sweep: Path, run_cli, tmp_path: Path) -> None:
    run = _runs(sweep)[0]
    recorded = json.loads((run / "results.json").read_text())["metrics"]
    done = run_cli("task=eval", f"ckpt_path={_quoted(run / 'checkpoints' / 'last.ckpt')}", f"out_root={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    scored = json.loads((run / "eval.json").read_text())
    for name in ("top1_err", "top5_err", "loss"):
        assert scored["metrics"][f"eval/test/{name}"] == pytest.approx(recorded[f"test/{name}"], abs=1e-6)
    entry = scored["evaluations"]["eval/test"]
    assert entry["precision"]["used"] == "32-true" and entry["data"]["as_trained"] is True
    assert entry["checkpoint"]["epochs"] == 1 and entry["git_commit"] == entry["run_git_commit"]
    # the validation split: what the run's last validation measured
    done = run_cli("task=eval", f"ckpt_path={_quoted(run)}", "data.split=val", f"out_root={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    scored = json.loads((run / "eval.json").read_text())
    assert scored["metrics"]["eval/val/top1_err"] == pytest.approx(recorded["val/top1_err"], abs=1e-6)
    assert "eval/test/top1_err" in scored["metrics"]  # the earlier scoring is kept beside it


def test_a_sweep_rescored_is_what_the_report_reads(sweep: Path, run_cli, tmp_path: Path) -> None:
    done = run_cli("-m", "task=eval", f"ckpt_path={sweep}", "data.split=train", f"out_root={tmp_path}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("eval/train/top1_err") == 2  # one job per run of the sweep
    values = {}
    for run in _runs(sweep):
        result = json.loads((run / "results.json").read_text())
        values[result["model"]["residual"]] = json.loads((run / "eval.json").read_text())["metrics"]
    table = tmp_path / "table.yaml"
    table.write_text(
        "report:\n  metric: test/top1_err\n  rows:\n    - label: pair\n      baseline: with\n      cells:\n"
        "        - {label: with, match: {model.residual: true}}\n"
        "        - {label: without, match: {model.residual: false}}\n"
    )
    report = subprocess.run(
        [sys.executable, "-m", "resnext_lab.report", str(sweep), "--table", str(table)]
        + ["--metric", "eval/train/top1_err", "--out", str(tmp_path / "report")],
        cwd=ROOT,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert "Metric: `eval/train/top1_err`" in report.stdout
    for residual in (True, False):
        assert f"| {values[residual]['eval/train/top1_err']:.2f} (n=1) |" in report.stdout
    # the sweep's own ablation report (no table) on the same metric
    ablation = subprocess.run(
        [sys.executable, "-m", "resnext_lab.report", str(sweep), "--metric", "eval/train/top1_err"]
        + ["--out", str(tmp_path / "ablation")],
        cwd=ROOT,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ablation.returncode == 0, ablation.stderr[-3000:]
    assert "ablation over seeds 0 (eval/train/top1_err," in ablation.stdout
    for residual in (True, False):
        line = next(x for x in ablation.stdout.splitlines() if x.startswith(f"model.residual={residual}"))
        assert line.split()[1] == f"{values[residual]['eval/train/top1_err']:.2f}"


def _quoted(path: Path) -> str:
    """A path as a Hydra override value (job folders hold `=` and `,`)."""
    return "'" + str(path) + "'"


BAD = {
    "missing file": (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path=/nonexistent/last.ckpt: no such file"),
    "no ckpt_path": ([], "ckpt_path: missing"),
    "not a run": (["ckpt_path=/tmp"], "ckpt_path=/tmp: no results.json in this folder"),
    "a training setting": (["ckpt_path=RUN", "model.cardinality=4"], "model.cardinality=4: task=eval scores"),
    "another network": (["ckpt_path=RUN/checkpoints/other.ckpt"], "not a checkpoint of ResNeXt"),
    "other image shape": (["ckpt_path=RUN", "data=cifar10"], "data=cifar10: its images are 32x32x3 in 10 classes"),
    "other classes": (
        ["ckpt_path=RUN", "data=imagenet", "data.image_size=28", "data.num_classes=5"],
        "data=imagenet: its images are 28x28x3 in 5 classes; the checkpoint's network",
    ),
    "bad split": (["ckpt_path=RUN", "data.split=dev"], "data.split='dev': must be one of test, val, train"),
    "not a checkpoint": (["ckpt_path=RUN/results.json"], "results.json: not a checkpoint that loads"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_2(case: str, sweep: Path, run_cli, tmp_path: Path) -> None:
    runs = _runs(sweep)
    run = tmp_path / "run"  # a copy, with the other network's checkpoint beside its own
    shutil.copytree(runs[0], run, symlinks=True)
    shutil.copy(runs[1] / "checkpoints" / "last.ckpt", run / "checkpoints" / "other.ckpt")
    (run / "eval.json").unlink(missing_ok=True)  # the other tests' scorings
    overrides, expected = BAD[case]
    done = run_cli("task=eval", *(o.replace("RUN", str(run)) for o in overrides), f"out_root={tmp_path}")
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert not (run / "eval.json").exists()


def test_scorings_of_one_run_that_end_at_once_are_all_kept(tmp_path: Path) -> None:
    """Eight processes record eight prefixes in one eval.json at the same moment: none is lost."""
    from resnext_lab import evaluation

    script = (
        "import sys; from resnext_lab import evaluation; "
        "evaluation.record(sys.argv[1], sys.argv[2], {'metrics': {sys.argv[2] + '/top1_err': 1.0}})"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), f"eval/split{i}"], cwd=ROOT, env=cli_env(tmp_path)
        )
        for i in range(8)
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    assert sorted(evaluation.load(tmp_path)) == [f"eval/split{i}" for i in range(8)]
