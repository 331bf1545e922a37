"""Stacked seeds in a sweep (`hydra.launcher.stack=N`): which jobs stack, what each seed leaves behind, a
stacked sweep's report beside the same sweep run lone, and a stacked sweep killed with SIGKILL then resumed."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, cli_env

from resnext_lab.cost import STARTUP_S
from resnext_lab.errors import ConfigError
from resnext_lab.job import compose
from resnext_lab.overrides import stacks
from resnext_lab.stacking import choose_stack, sizes_to_measure
from resnext_lab.tasks.plan import JobPlan, launcher_slots, plan_jobs, stack_size, sweep_seconds

#: the sweep of issue 29's first Done-when line, as small as it is there
DONE_WHEN = [
    "model.cardinality=1,4",
    "seed=0,1,2,3",
    "data.limit_train=512",
    "data.limit_eval=256",
    "trainer.max_epochs=1",
    "model.width_scale=0.125",
    "model.reference.width=8",
    "model.width=auto",
    "trainer.enable_progress_bar=false",
]


def test_jobs_that_differ_only_in_seed_stack_and_others_stay_apart() -> None:
    jobs = [[f"model.cardinality={c}", f"seed={s}", "trainer.max_epochs=1"] for c in (1, 4) for s in range(5)]
    assert stacks(jobs, 1) == [[i] for i in range(10)]
    assert stacks(jobs, 4) == [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9]]  # as even as 4 allows: 3 + 2, not 4 + 1
    assert stacks(jobs, 8) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    # run-invariant settings (name, out_root, ...) do not split a stack; a job kept alone stays alone
    jobs[1] = [*jobs[1], "out_root=elsewhere"]
    assert stacks(jobs, 8, stackable=[i != 2 for i in range(10)]) == [[0, 1, 3, 4], [2], [5, 6, 7, 8, 9]]
    with pytest.raises(ValueError):
        stacks(jobs, 0)


@pytest.mark.parametrize("value", ["0", "two"])
def test_a_bad_stack_setting_stops_the_sweep_in_one_line(run_cli, tmp_path: Path, value: str) -> None:  # noqa: ANN001
    out = run_cli(
        "-m",
        "hydra/launcher=packed",
        f"hydra.launcher.stack={value}",
        "seed=0,1",
        f"out_root={tmp_path}",
        "trainer.max_epochs=1",
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: hydra.launcher.stack="), out.stderr
    assert "Traceback" not in out.stderr
    assert "must be an integer >= 1" in errors[0] and "or auto" in errors[0]
    assert not list(tmp_path.rglob("results.json"))


def _sweep(run_cli, out_root: Path, *extra: str) -> Path:  # noqa: ANN001
    out = run_cli(
        "-m",
        "hydra/launcher=packed",
        "hydra.launcher.jobs_per_device=1",
        f"out_root={out_root}",
        "name=cell",
        *DONE_WHEN,
        *extra,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out_root / "cell"


def _report_columns(sweep: Path) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "resnext_lab.report", str(sweep)],
        cwd=ROOT,
        env=cli_env(sweep),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    with (sweep / "report" / "report.csv").open() as f:
        return next(csv.reader(f))


@pytest.mark.e2e
def test_a_stacked_sweep_leaves_every_job_and_the_report_of_the_same_sweep_run_lone(run_cli, tmp_path: Path) -> None:  # noqa: ANN001
    stacked = _sweep(run_cli, tmp_path / "stacked", "hydra.launcher.stack=4")
    results = {p.parent.name: json.loads(p.read_text()) for p in stacked.glob("*/results.json")}
    assert len(results) == 8
    for name, r in results.items():
        assert r["status"] == "completed", (name, r.get("error"))
        assert r["stacked"] == {"seeds": [0, 1, 2, 3], "size": 4}
        job = stacked / name
        assert (job / "checkpoints" / "last.ckpt").is_file() and (job / ".hydra" / "overrides.yaml").is_file()
        assert list((job / "wandb").glob("offline-run-*/run-*.wandb")), f"{name}: no W&B run of its own"
    ids = {r["wandb"]["id"] for r in results.values()}
    assert len(ids) == 8

    lone = _sweep(run_cli, tmp_path / "lone")
    lone_results = {p.parent.name: json.loads(p.read_text()) for p in lone.glob("*/results.json")}
    assert sorted(lone_results) == sorted(results)
    assert all(r["stacked"] is None for r in lone_results.values())
    for name in results:  # each seed's metrics.csv has the lone job's columns
        header = (stacked / name / "csv" / "metrics.csv").read_text().splitlines()[0]
        assert sorted(header.split(",")) == sorted(
            (lone / name / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
        )
    assert _report_columns(stacked) == _report_columns(lone)


def _status(job: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((job / "results.json").read_text()).get("status")
    return None


@pytest.mark.e2e
def test_a_stacked_sweep_killed_with_sigkill_resumes_and_no_seed_trains_twice(start_cli, tmp_path: Path) -> None:  # noqa: ANN001
    """Two stacks of two seeds, one after the other: kill -9 the whole sweep once the first stack has completed
    and the second has written its first checkpoints; the rerun skips the first stack and resumes the second."""
    args = [
        "-m",
        "hydra/launcher=packed",
        "hydra.launcher.jobs_per_device=1",
        "hydra.launcher.stack=2",
        f"out_root={tmp_path}",
        "name=killed",
        "seed=0,1,2,3",
        "model.width_scale=0.125",
        "model.cardinality=2",
        "model.width=4",
        "data.limit_train=256",
        "data.limit_eval=128",
        "data.batch_size=64",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
    ]
    sweep = tmp_path / "killed"
    proc = start_cli(*args)
    jobs = {s: sweep / f"seed={s}" for s in range(4)}
    try:
        deadline = time.monotonic() + 600
        first = [jobs[0], jobs[1]]
        second = [jobs[2], jobs[3]]
        while not (
            all(_status(j) == "completed" for j in first)
            and all((j / "checkpoints" / "last.ckpt").is_file() for j in second)
        ):
            assert proc.poll() is None, "the sweep ended before it was killed"
            assert time.monotonic() < deadline, "no checkpoint of the second stack after 10 minutes"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert all(_status(j) == "running" for j in second), "the second stack ended before the kill: no resume tested"
    before = {s: (jobs[s] / "results.json").read_bytes() for s in (0, 1)}

    rerun = start_cli(*args)
    assert rerun.wait(timeout=900) == 0
    for s in (0, 1):  # completed before: skipped, results.json untouched
        assert (jobs[s] / "results.json").read_bytes() == before[s]
    for s in (2, 3):
        r = json.loads((jobs[s] / "results.json").read_text())
        assert r["status"] == "completed" and r["resumed"] is True and r["epochs"] == 3, r
        # every epoch trained once: one training row per epoch in its metrics.csv
        with (jobs[s] / "csv" / "metrics.csv").open() as f:
            epochs = [row["epoch"] for row in csv.DictReader(f) if row.get("train/loss")]
        assert sorted(epochs) == ["0", "1", "2"], epochs


def test_auto_stacks_only_where_the_measured_step_per_seed_is_at_least_the_margin_shorter() -> None:
    # S: seconds per training step of S seeds stacked (1: lone)
    assert choose_stack({1: 1.0, 2: 1.9, 4: 3.2}) == 4  # 0.80 s per seed: 20% shorter
    assert choose_stack({1: 1.0, 2: 1.5, 4: 3.8}) == 2  # the shortest per seed wins, not the largest
    assert choose_stack({1: 1.0, 2: 1.9, 4: 3.7}) == 1  # 5% and 7.5% shorter: inside the margin, alone
    assert choose_stack({1: 1.0, 2: 2.4, 4: 5.0}) == 1  # stacking loses (the CPU of docs/PERFORMANCE.md)
    assert choose_stack({1: 1.0, 4: 3.6}) == 4 and choose_stack({1: 1.0, 4: 3.6}, margin=0.2) == 1
    with pytest.raises(ValueError):
        choose_stack({2: 1.0})
    assert sizes_to_measure(1) == [1]
    assert sizes_to_measure(5) == [1, 2, 4, 5]
    assert sizes_to_measure(64) == [1, 2, 4, 8, 16, 32]


def _plan(stack: object, *overrides: str) -> tuple[list[JobPlan], float]:
    configs = [
        (list(job), compose(list(job)))
        for job in [
            ["model.width_scale=0.125", "model.cardinality=2", "model.width=4", f"seed={s}", *overrides]
            for s in range(4)
        ]
    ]
    hydra_cfg = {"launcher": {"_target_": "x.PackedLauncher", "jobs_per_device": 1, "devices": "cpu", "stack": stack}}
    size, _ = stack_size(stack, configs, "h100", 1)
    plans = plan_jobs(configs, "h100", 1, 1, True, size)
    return plans, sweep_seconds(plans, launcher_slots(hydra_cfg, len(configs))[0])


def test_the_plan_prices_a_stack_as_one_unit_of_one_stacked_step() -> None:
    """On a named GPU a small network's step is the host's floor: a stack of four pays it once per step where
    four lone jobs pay it four times, and its fixed cost once."""
    lone, lone_s = _plan(1)
    stacked, stacked_s = _plan(4)
    assert [p.stack for p in lone] == [1] * 4 and [p.stack for p in stacked] == [4] * 4
    assert len({p.unit for p in stacked}) == 1
    assert stacked_s == pytest.approx(STARTUP_S + lone_s / 4 - STARTUP_S / 4, rel=1e-6)
    # a form that does not stack is priced alone
    other, _ = _plan(4, "model.block=aggregated")
    assert [p.stack for p in other] == [1] * 4
    with pytest.raises(ConfigError, match="hydra.launcher.stack=0"):
        stack_size(0, [(["seed=0"], compose(["seed=0"]))], "h100", 1)


@pytest.mark.e2e
def test_a_seed_that_diverges_in_a_stack_is_recorded_and_the_others_finish(start_cli, tmp_path: Path) -> None:  # noqa: ANN001
    """Two seeds stacked, killed once both have a checkpoint; seed 0's checkpoint then holds NaN weights (a loadable
    file gone bad). The rerun resumes both as one stack: seed 0's loss is NaN at its first step, so it is recorded
    as diverged, and seed 1 trains to the end."""
    import torch

    args = [
        "-m", "hydra/launcher=packed", "hydra.launcher.jobs_per_device=1", "hydra.launcher.stack=2", "seed=0,1",
        f"out_root={tmp_path}", "name=nan", "trainer.check_finite_every_n_steps=1", "trainer.precision=32-true",
        "model.width_scale=0.125", "model.cardinality=2", "model.width=4", "data.limit_train=128", "data.batch_size=64",
        "data.limit_eval=64", "data.batch_size=64", "trainer.max_epochs=6", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    jobs = [tmp_path / "nan" / f"seed={s}" for s in (0, 1)]
    proc = start_cli(*args)
    try:
        deadline = time.monotonic() + 600
        while not all((j / "checkpoints" / "last.ckpt").is_file() for j in jobs):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoints before the sweep ended"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    ckpts = [torch.load(j / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False) for j in jobs]
    assert ckpts[0]["epoch"] == ckpts[1]["epoch"] < 5, "the seeds' checkpoints must be at one point, before the end"
    ckpts[0]["state_dict"]["net.fc.weight"].fill_(float("nan"))
    torch.save(ckpts[0], jobs[0] / "checkpoints" / "last.ckpt")

    rerun = start_cli(*args)
    assert rerun.wait(timeout=900) == 1  # a sweep with a diverged job ends non-zero, after its table
    r0, r1 = (json.loads((j / "results.json").read_text()) for j in jobs)
    assert r0["status"] == "diverged" and r0["error"].startswith("training loss is nan at step"), r0
    assert r1["status"] == "completed" and r1["epochs"] == 6 and "test/top1_err" in r1["metrics"], r1
    assert r0["stacked"] == r1["stacked"] == {"seeds": [0, 1], "size": 2}
    assert r0["resumed"] is r1["resumed"] is True


def test_the_scales_stack_where_stacking_was_measured_to_win() -> None:
    """cpu: lone (a stack measured 0.46-1.03x lone on 2-core CPUs, docs/PERFORMANCE.md); gpu: the measured rule."""
    assert compose(["experiment=demo", "scale=cpu"], hydra=True).hydra.launcher.stack == 1
    assert compose(["experiment=table3", "scale=gpu"], hydra=True).hydra.launcher.stack == "auto"


@pytest.mark.e2e
def test_stack_auto_does_what_its_measurement_says(run_cli, tmp_path: Path) -> None:  # noqa: ANN001
    """The sweep's log states the steps it measured and what it chose; each seed's results.json shows that choice."""
    out = run_cli(
        "-m", "hydra/launcher=packed", "hydra.launcher.jobs_per_device=1", "hydra.launcher.stack=auto", "seed=0,1",
        "model.width_scale=0.125", "model.cardinality=2", "model.width=4", "data.limit_train=128", "data.batch_size=64",
        "data.limit_eval=64", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", f"out_root={tmp_path}",
        "name=auto", timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stderr.splitlines() if "hydra.launcher.stack=auto:" in x)
    steps = {int(s): float(ms) * s for s, ms in re.findall(r"S=(\d+) ([\d.]+) ms", line)}
    assert sorted(steps) == [1, 2], line
    chosen = choose_stack(steps)
    results = [json.loads((tmp_path / "auto" / f"seed={s}" / "results.json").read_text()) for s in (0, 1)]
    expected = {"seeds": [0, 1], "size": 2} if chosen == 2 else None
    assert [r["stacked"] for r in results] == [expected, expected], line


@pytest.mark.e2e
def test_the_local_launcher_stacks_seeds_too(run_cli, tmp_path: Path) -> None:  # noqa: ANN001
    """Three seeds, stacks of up to 2: seeds 0 and 1 train as one submitit job, seed 2 alone."""
    out = run_cli(
        "-m", "hydra/launcher=local", "hydra.launcher.gpus_per_node=0", "hydra.launcher.stack=2", "seed=0,1,2",
        "model.width_scale=0.125", "model.cardinality=2", "model.width=4", "data.limit_train=128", "data.batch_size=64",
        "data.limit_eval=64", "trainer.max_epochs=1", "trainer.enable_progress_bar=false", f"out_root={tmp_path}",
        "name=local", timeout=900,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    results = [json.loads((tmp_path / "local" / f"seed={s}" / "results.json").read_text()) for s in (0, 1, 2)]
    assert [r["status"] for r in results] == ["completed"] * 3
    assert [r["stacked"] for r in results] == [{"seeds": [0, 1], "size": 2}] * 2 + [None]
