"""task=plan: every job's complexity and estimated time before launch, measured here or from FLOPs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, tiny
from omegaconf import OmegaConf

from resnext_lab import cost
from resnext_lab.errors import ConfigError
from resnext_lab.job import compose
from resnext_lab.models import ModelSpec
from resnext_lab.tasks import plan
from resnext_lab.tools import plan_check


def run_plan(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**cli_env(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "run.py", "-m", "task=plan", *args, f"out_root={tmp_path / 'out'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.e2e
def test_plan_of_a_sweep_lists_every_job_and_writes_nothing_but_its_cache(tmp_path: Path) -> None:
    proc = run_plan(
        tmp_path, *tiny("model.cardinality=1,4,2", "seed=0,1", "model.width=auto", "model.reference.width=8")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("job "))
    jobs = [line.split()[0] for line in lines[header + 2 : header + 8]]  # under the header and its rule
    assert jobs == [f"model.cardinality={c},seed={s}" for c in (1, 2, 4) for s in (0, 1)]  # numeric order
    assert "6 jobs on measured here" in proc.stdout and "estimate: " in proc.stdout
    assert plan_check.estimate_seconds(proc.stdout) > 0  # what `make plan-check` compares with the real run
    assert not (tmp_path / "out").exists()  # nothing trained, no folder
    cache = json.loads((tmp_path / "cache" / "resnext-lab" / "plan.json").read_text())  # for next time
    overhead = [v for k, v in cache.items() if k.startswith("overhead:")]  # measured by running one job for real
    assert (
        len(overhead) == 1 and all(s >= 0 for s in overhead[0]) and overhead[0] != [cost.JOB_OVERHEAD_S, cost.STARTUP_S]
    )
    assert "per worker besides the steps, measured by running the first job for one step" in proc.stdout


@pytest.mark.e2e
def test_the_calibration_sweeps_of_a_plan_print_no_plan_of_their_own(tmp_path: Path) -> None:
    """The per-job overhead is the difference between a 1-job and a 5-job sweep of a table's first job. A plan
    inside them would time the step in the first sweep only (the second finds it cached), and the difference
    came out near 0 s per job where it is about 1 s here."""
    env = {**cli_env(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), cost._CALIBRATING: "1"}
    one_step = [f"trainer.limit_{k}_batches=1" for k in ("train", "val", "test")]
    proc = subprocess.run(
        [sys.executable, "run.py", "-m", "experiment=forms", "scale=smoke", "model.block=grouped", "seed=0"]
        + ["trainer.max_epochs=1", *one_step, f"out_root={tmp_path / 'out'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "estimate:" not in proc.stdout, proc.stdout[-3000:]
    assert not (tmp_path / "cache" / "resnext-lab").exists()  # no step was timed


def test_plan_for_a_cluster_states_its_assumption(tmp_path: Path) -> None:
    proc = run_plan(tmp_path, "experiment=table3", "scale=paper", "plan.device=h100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "10 jobs on 8 H100s per job" in proc.stdout and "assumed 75 TFLOP/s achieved" in proc.stdout
    assert "H100-hours)" in proc.stdout
    with pytest.raises(ConfigError, match=r"^plan.device='tpu9': must be one of here, h100, a100, v100$"):
        plan.estimate([], {"device": "tpu9"}, {})


def test_steps_and_flop_model_follow_the_config() -> None:
    cfg = compose(["experiment=table3", "scale=paper"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    train, val, test = cost.steps(resolved)
    assert cost.world_size(resolved["trainer"]) == 8
    assert train == 1_281_167 // 256 and test == math.ceil(50_000 / 256) and val == test  # val_size 0: val = test
    flops = 4_089_184_256  # ResNet-50
    t_train, t_eval = cost.flop_step(flops, 32, "h100")
    assert t_train == pytest.approx(6 * flops * 32 / 75e12) and t_eval == pytest.approx(t_train / 3)
    assert cost.flop_step(10**6, 8, "h100") == (0.003, 0.0015)  # a tiny network: the host's floor


def test_wall_time_spreads_jobs_over_slots_longest_first() -> None:
    jobs = [plan.JobPlan([f"j={i}"], "n", 1, 1, None, 1, 1, 1, 1, s) for i, s in enumerate((10, 7, 5, 4, 2))]
    assert plan.sweep_seconds(jobs, 1) == cost.STARTUP_S + 28
    assert plan.sweep_seconds(jobs, 2) == cost.STARTUP_S + 14  # 10+4 | 7+5+2


def test_calibration_is_cached() -> None:
    spec = ModelSpec(
        template="cifar",
        stage_blocks=(1, 1, 1),
        width=2,
        width_scale=0.125,
        num_classes=10,
        in_channels=1,
        image_size=28,
    )
    cache: dict = {}
    first = cost.calibrate(spec, 64, "32-true", True, 1, cache)
    assert len(cache) == 1 and all(t > 0 for t in first)
    assert cost.calibrate(spec, 64, "32-true", True, 1, cache) == first  # read back, not timed again
    cost.calibrate(spec, 128, "32-true", True, 1, cache)
    assert len(cache) == 2  # another batch is another measurement
