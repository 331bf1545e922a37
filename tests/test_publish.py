"""Publishing a finished table: README with wall time, versions, commit and every job's regime check."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from resnext_lab.report.checks import plateau, regime
from resnext_lab.tools.publish import main, publish, wall_span


def _job(root: Path, name: str, started: str, wall: float, losses: list[float], errors: list[float]) -> dict:
    job_dir = root / name
    (job_dir / "csv").mkdir(parents=True)
    rows = [
        {"epoch": e, "step": 10 * e + 9, "train/loss": loss, "train/top1_err": err}
        for e, (loss, err) in enumerate(zip(losses, errors, strict=True))
    ]
    pd.DataFrame(rows).to_csv(job_dir / "csv" / "metrics.csv", index=False)
    result = {
        "status": "completed",
        "overrides": [f"model.residual={name}", "seed=0", "experiment=residual", "scale=cpu"],
        "model": {"num_classes": 10, "params": 1000, "flops": 40000},
        "metrics": {"test/top1_err": errors[-1]},
        "metrics_csv": "csv/metrics.csv",
        "started": started,
        "wall_time_s": wall,
        "versions": {"torch": "9.9.9"},
        "git_commit": "0123456789abcdef",
        "precision": {"used": "32-true", "why": "no native bf16"},
    }
    (job_dir / "results.json").write_text(json.dumps(result))
    return {**result, "_dir": job_dir}


def test_regime_settled_and_falling(tmp_path: Path) -> None:
    good = _job(tmp_path, "True", "2026-01-01T00:00:00", 60.0, [2.6, 1.2, 0.8], [70.0, 40.0, 30.0])
    stuck = _job(tmp_path, "False", "2026-01-01T00:00:00", 60.0, [2.5, 2.4, 2.35], [80.0, 78.0, 79.0])
    assert regime(good, 10) == {
        "epochs": 3,
        "first_loss": 2.6,
        "last_loss": 0.8,
        "last_err": 30.0,
        "settled": True,
        "falling": True,
        "rough_start": True,
        "plateau": None,
    }  # fmt: skip  (no validation curve: no plateau to judge)
    check = regime(stuck, 10)  # below its first epoch but above ln 10 = 2.303, and rising at the end
    assert check["settled"] is False and check["falling"] is False and check["rough_start"] is True


@pytest.mark.parametrize(
    ("val", "expected"),
    [
        ([30.0, 20.0, 15.0, 14.9], False),  # 14.9 is 5.1 below the best before (20)
        ([30.0, 20.0, 14.0, 14.1, 14.0], True),  # last two: no gain on 14.0
        ([30.0, 20.0, 16.0, 15.0, 14.6], False),  # still 1.4 below 16.0
        ([30.0, 20.0], None),
    ],
)  # too short to judge
def test_plateau_criterion(tmp_path: Path, val: list[float], expected: bool | None) -> None:
    """Plateau: the best validation error of the last 2 epochs is less than 0.25 points below the best before."""
    job = tmp_path / "job"
    (job / "csv").mkdir(parents=True)
    pd.DataFrame([{"epoch": e, "step": e, "val/top1_err": v} for e, v in enumerate(val)]).to_csv(
        job / "csv" / "metrics.csv", index=False
    )
    assert plateau({"_dir": job, "metrics_csv": "csv/metrics.csv"}) is expected


def test_wall_span_from_first_start_to_last_end(tmp_path: Path) -> None:
    jobs = [
        _job(tmp_path, "a", "2026-01-01T00:00:00+00:00", 100.0, [1.0], [10.0]),
        _job(tmp_path, "b", "2026-01-01T00:00:30+00:00", 200.0, [1.0], [10.0]),  # ends last, at 230 s
        {"status": "failed"},  # no times: ignored
    ]
    assert wall_span(jobs) == (230.0, 300.0)


def test_publish_writes_readme_and_copies_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep, reports, out = tmp_path / "sweep", tmp_path / "reports", tmp_path / "docs"
    _job(sweep, "True", "2026-01-01T00:00:00+00:00", 90.0, [2.6, 1.0], [60.0, 35.0])
    _job(sweep, "False", "2026-01-01T00:00:00+00:00", 120.0, [2.5, 2.4], [80.0, 81.0])
    (sweep / "report").mkdir()
    (sweep / "report" / "report.md").write_text("# ablation\n")
    (sweep / "report" / "error_vs_params.png").write_bytes(b"png")
    reports.mkdir()
    (reports / "table.md").write_text("## The table\n\n| a | b |\n")
    (reports / "table.csv").write_text("a,b\n")
    (reports / "per_seed.csv").write_text("row,cell,seed,metric,value,excluded\n")
    (sweep / "report" / "per_seed.csv").write_text("group,seed,metric,value,excluded\n")
    plan = tmp_path / "plan.txt"
    plan.write_text("...\nestimate: 3.5 min wall time for the sweep (7.0 min of job time)\n")

    written = publish("residual", "cpu", sweep, reports, out, plan, ["the tests ran alongside"])

    names = sorted(str(p.relative_to(out)) for p in written)
    assert names == ["README.md", "ablation/error_vs_params.png", "ablation/per_seed.csv", "ablation/report.md",
                     "epochs.csv", "notes.txt", "per_seed.csv", "plan.txt", "table.csv", "table.md"]  # fmt: skip
    text = (out / "README.md").read_text()
    assert "`make residual SCALE=cpu`" in text and "torch 9.9.9" in text and "0123456789" in text
    assert "2.0 min from the first job's start to the last job's end (3.5 min of job time)" in text
    assert "the plan estimated 3.5 min" in text and "## The table" in text
    assert "1 of 2 jobs. Training error still falling in the last epoch: 1 of 2" in text
    assert "above chance (the loss rose before it fell): 2 of 2" in text
    assert "- **Note:** the tests ran alongside" in text
    assert "| model.residual=True seed=0 | 2 |" in text  # a job is named by its own overrides

    publish("residual", "cpu", sweep, reports, out, plan, ["a second note"])  # the first one is kept
    assert (out / "notes.txt").read_text() == "the tests ran alongside\na second note\n"
    assert "- **Note:** the tests ran alongside" in (out / "README.md").read_text()

    assert main(["residual", "--sweep", str(sweep), "--reports", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "does not exist: run `make residual SCALE=cpu` first" in capsys.readouterr().err


def test_publish_writes_every_jobs_epochs_and_copies_the_preregistration(tmp_path: Path) -> None:
    sweep, reports, out = tmp_path / "sweep", tmp_path / "reports", tmp_path / "docs"
    _job(sweep, "True", "2026-01-01T00:00:00+00:00", 90.0, [2.6, 1.0], [60.0, 35.0])
    _job(sweep, "False", "2026-01-01T00:00:00+00:00", 120.0, [2.5, 2.4], [80.0, 81.0])
    prereg = tmp_path / "cpu.prereg.json"
    prereg.write_text('{"format": 1}\n')
    result = json.loads((sweep / "True" / "results.json").read_text())
    (sweep / "True" / "results.json").write_text(json.dumps({**result, "prereg": {"file": str(prereg)}}))
    reports.mkdir()
    (reports / "table.md").write_text("## The table\n")

    publish("residual", "cpu", sweep, reports, out)

    epochs = pd.read_csv(out / "epochs.csv")
    assert list(epochs.columns[:6]) == ["job", "seed", "status", "epoch", "train/loss", "train/top1_err"]
    assert epochs["job"].tolist() == ["model.residual=False seed=0"] * 2 + ["model.residual=True seed=0"] * 2
    assert epochs["epoch"].tolist() == [0, 1, 0, 1] and epochs["train/loss"].tolist() == [2.5, 2.4, 2.6, 1.0]
    assert (out / "prereg.json").read_text() == prereg.read_text()
