"""Pre-registration enforced by code, and provenance: a pre-registered smoke experiment in a throwaway git
checkout (a copy of this one), refused on a changed setting, run after an amendment from a dirty tree, its
report's status; a confirmatory report refusing a pilot seed; git state and the analysis-code hash alone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, cli_env

from resnext_lab import provenance
from resnext_lab.report.prereg_status import provenance_lines

EXPERIMENT = """# @package _global_
experiment_name: pre
model: {template: cifar, depth: 11, width_scale: 0.125, cardinality: 1, width: 8}
hydra:
  sweeper:
    params:
      model.residual: true,false
      seed: ${seeds}
report: {baseline: model.residual=True, min_effect: 1.0, exclude: null}
"""
SMOKE = """# @package _global_
seeds: "0"
data: {limit_train: 256, limit_eval: 128, batch_size: 64}
trainer: {max_epochs: 1, enable_progress_bar: false}
"""


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _checkout(tmp: Path) -> Path:
    """A git checkout holding a copy of this project's code and configs, and one small experiment `pre`."""
    repo = tmp / "repo"
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy2(ROOT / "run.py", repo / "run.py")
    (repo / "experiments" / "pre").mkdir(parents=True)
    (repo / "experiments" / "pre.yaml").write_text(EXPERIMENT)
    (repo / "experiments" / "pre" / "smoke.yaml").write_text(SMOKE)
    (repo / ".gitignore").write_text("outputs/\n__pycache__/\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "start")
    return repo


def _run(repo: Path, home: Path, *args: str, module: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**cli_env(home), "PYTHONPATH": str(repo / "src")}
    command = [sys.executable, "-m", module] if module else [sys.executable, "run.py"]
    return subprocess.run([*command, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)


def _errors(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def test_a_preregistered_sweep_is_refused_on_a_change_runs_after_an_amendment_and_says_so(
    tmp_path: Path, wandb_home: Path
) -> None:
    repo = _checkout(tmp_path)
    sweep = ["-m", "experiment=pre", "scale=smoke", "out_root=outputs", "logger.wandb.mode=disabled"]
    proc = _run(repo, wandb_home, "-m", "task=preregister", "experiment=pre", "scale=smoke", "pilot_seeds=[100]")
    assert proc.returncode == 0, proc.stderr
    file = repo / "experiments" / "pre" / "smoke.prereg.json"
    prereg = json.loads(file.read_text())
    commit = _git(repo, "rev-parse", "HEAD")
    assert prereg["commit"] == commit and prereg["dirty"] is False and prereg["seeds"] == [0]
    assert prereg["pilot_seeds"] == [100] and len(prereg["jobs"]) == 2 and prereg["analysis_code"]["hash"]
    assert prereg["analysis"]["report.min_effect"] == 1.0 and prereg["common"]["model.width_scale"] == 0.125
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "pre-register pre at smoke")

    refused = _run(repo, wandb_home, *sweep, "model.width_scale=0.25")
    assert refused.returncode == 2
    assert len(_errors(refused)) == 1, refused.stderr
    assert "model.width_scale: 0.125 in the pre-registration, 0.25 here" in _errors(refused)[0]
    assert not (repo / "outputs").exists()  # nothing ran

    proc = _run(repo, wandb_home, "-m", "task=preregister", "experiment=pre", "scale=smoke", "model.width_scale=0.25")
    assert proc.returncode == 2 and "amend=" in _errors(proc)[0]  # a second pre-registration is an amendment
    amend = "amend='wider networks'"
    proc = _run(
        repo, wandb_home, "-m", "task=preregister", "experiment=pre", "scale=smoke", "model.width_scale=0.25", amend
    )
    assert proc.returncode == 0, proc.stderr
    amendment = json.loads(file.read_text())["amendments"][0]
    assert amendment["why"] == "wider networks" and amendment["pilot_seeds"] == [100]
    assert amendment["changes"] == ["model.width_scale: 0.125 before, 0.25 after"]

    ran = _run(repo, wandb_home, *sweep, "model.width_scale=0.25")  # the amendment is not committed: a dirty tree
    assert ran.returncode == 0, ran.stderr
    date = prereg["date"][:10]
    assert f"pre-registered at {commit[:10]} on {date}; amendment 1 on " in ran.stdout
    assert "(wider networks): no deviation" in ran.stdout
    assert "amendment 1: model.width_scale: 0.125 before, 0.25 after" in ran.stdout
    assert "2 of 2 jobs ran from a dirty tree" in ran.stdout
    folder = repo / "outputs" / "pre" / "smoke"
    result = json.loads(next(folder.glob("*/results.json")).read_text())
    assert result["git_commit"] == _git(repo, "rev-parse", "HEAD") and result["git_dirty"] is True
    diff = folder / "provenance" / f"{result['git_diff_hash']}.diff"
    assert "smoke.prereg.json" in diff.read_text() and result["prereg"]["role"] == "confirmatory"
    assert "no deviation" in (folder / "report" / "report.md").read_text()

    pilot = _run(repo, wandb_home, *sweep, "model.width_scale=0.25", "seed=100")
    assert pilot.returncode == 0, pilot.stderr
    assert "pilot of" in pilot.stderr
    report = _run(repo, wandb_home, str(folder), module="resnext_lab.report")
    assert report.returncode == 2
    assert _errors(report) == [report.stderr.strip()]
    assert "seed 100 ran in a pilot of pre" in report.stderr


def test_git_state_outside_a_checkout_is_unknown(tmp_path: Path) -> None:
    state = provenance.git_state(tmp_path)
    assert (state.commit, state.dirty, state.diff_hash) == (None, None, None)
    assert provenance.save_diff(state, tmp_path) is None


def test_git_state_says_dirty_and_hashes_the_diff(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "a")
    clean = provenance.git_state(tmp_path)
    assert clean.commit == _git(tmp_path, "rev-parse", "HEAD") and clean.dirty is False and clean.diff_hash is None
    (tmp_path / "a.py").write_text("x = 2\n")
    edited = provenance.git_state(tmp_path)
    assert edited.dirty is True and b"+x = 2" in edited.diff
    (tmp_path / "b.py").write_text("y = 3\n")  # an untracked file is part of what ran
    added = provenance.git_state(tmp_path)
    assert added.diff_hash != edited.diff_hash and b"y = 3" in added.diff
    saved = provenance.save_diff(added, tmp_path / "sweep")
    assert saved == tmp_path / "sweep" / "provenance" / f"{added.diff_hash}.diff" and saved.read_bytes() == added.diff


def test_the_analysis_code_hash_covers_report_and_what_it_imports(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    before = provenance.analysis_code(src)
    assert before == provenance.analysis_code(src)
    assert "src/resnext_lab/report/stats.py" in before["files"] and "src/resnext_lab/results.py" in before["files"]
    assert "src/resnext_lab/tasks/train.py" not in before["files"]  # training is not analysis
    with (src / "resnext_lab" / "results.py").open("a") as handle:  # imported by report/collect.py
        handle.write("# changed\n")
    after = provenance.analysis_code(src)
    assert after["hash"] != before["hash"]
    assert [p for p in after["files"] if after["files"][p] != before["files"][p]] == ["src/resnext_lab/results.py"]


@pytest.mark.parametrize(
    ("jobs", "says"),
    [
        ([{"git_commit": "a" * 40, "git_dirty": False}] * 2, ["commit aaaaaaaaaa (2 jobs)"]),
        (
            [
                {"git_commit": "a" * 40, "git_dirty": False},
                {"git_commit": "b" * 40, "git_dirty": True, "git_diff_hash": "d1"},
            ],
            [
                "the jobs ran at 2 commits: aaaaaaaaaa (1 job), bbbbbbbbbb (1 job)",
                "1 of 2 jobs ran from a dirty tree (their diffs: provenance/d1.diff)",
            ],
        ),
        ([{"status": "completed"}], ["commit unknown (1 job)", "1 of 1 jobs do not say whether their tree was dirty"]),
    ],
)
def test_a_report_says_when_its_jobs_mix_commits_or_ran_dirty(jobs: list[dict[str, Any]], says: list[str]) -> None:
    assert provenance_lines(jobs) == says


def test_a_report_lists_each_deviation_and_refuses_a_pilot_seed(tmp_path: Path) -> None:
    from resnext_lab import prereg
    from resnext_lab.errors import ConfigError
    from resnext_lab.job import compose
    from resnext_lab.report.prereg_status import status
    from resnext_lab.tasks.preregister import write

    cells = (["model.residual=true", "seed=0"], ["model.residual=false", "seed=0"])
    jobs = [(o, compose(["experiment=demo", "scale=smoke", *o])) for o in cells]
    path = tmp_path / "smoke.prereg.json"
    now = {"experiment": "demo", "scale": "smoke", **prereg.state(jobs, jobs[0][1], [100])}
    hashes = [j["hash"] for j in write(path, now, None)["jobs"]]
    declared = {"min_effect": 2.0, "alpha": 0.05, "test": "difference", "exclude": None}

    def job(overrides: list[str], seed: int, settings_hash: str | None) -> dict[str, Any]:
        record = {"file": str(path), "settings_hash": settings_hash, "role": "pilot" if seed == 100 else "confirmatory"}
        return {"status": "completed", "overrides": overrides, "seed": seed, "git_commit": "a" * 40,
                "git_dirty": False, "prereg": record}  # fmt: skip

    kept = [job(cells[0], 0, hashes[0]), job(cells[1], 0, hashes[1])]
    assert status(kept, declared)[0].endswith(": no deviation")
    lines = status(
        [job(cells[0], 0, hashes[0]), job(cells[1], 0, "0" * 16), job(["seed=3"], 3, None)],
        {**declared, "min_effect": 1.0},
    )
    assert lines[0].endswith(": 3 deviation(s)")
    assert lines[1:4] == [
        "deviation: seed 3: not pre-registered",
        "deviation: job model.residual=false seed=0: its settings match no pre-registered job",
        "deviation: report.min_effect: 2.0 in the pre-registration, 1.0 in this report",
    ]
    with pytest.raises(ConfigError, match=r"^seed 100 ran in a pilot of demo \(pilot seeds 100\)"):
        status([*kept, job(cells[0], 100, hashes[0])], declared)
    assert status([job(cells[0], 100, None)], declared)[0].startswith("pilot of the pre-registration")


def test_an_amended_job_does_not_take_over_a_run_of_other_settings() -> None:
    from resnext_lab.prereg import other_settings

    assert other_settings({"prereg": {"settings_hash": "a"}}, {"settings_hash": "b"}) == "settings hash a there, b here"
    assert other_settings({"prereg": {"settings_hash": "a"}}, {"settings_hash": "a"}) is None
    assert other_settings({"status": "completed"}, {"settings_hash": "b"}) is None  # ran before any pre-registration
    assert other_settings({"prereg": {"settings_hash": "a"}}, None) is None


def test_a_sequential_design_is_preregistered_up_to_its_max_seeds() -> None:
    from resnext_lab import prereg
    from resnext_lab.job import compose

    design = "+report.sequential={start: 2, step: 1, max: 3, first_seed: 100}"
    cells = (["model.residual=true", "seed=0"], ["model.residual=false", "seed=0"])
    split = "data.split_seed=${seed}"  # as the cpu scale sets it
    jobs = [(o, compose(["experiment=demo", "scale=smoke", design, split, *o])) for o in cells]
    now = prereg.state(jobs, jobs[0][1], [])
    assert now["seeds"] == [100, 101, 102] and len(now["jobs"]) == 6
    assert now["sequential"] == {"start": 2, "step": 1, "max": 3, "first_seed": 100}
    assert now["analysis"]["report.sequential.max"] == 3
    assert {j["settings"]["seed"] for j in now["jobs"]} == {100, 101, 102}
    assert {j["settings"]["data.split_seed"] for j in now["jobs"]} == {100, 101, 102}  # as seed=100 would compose it
