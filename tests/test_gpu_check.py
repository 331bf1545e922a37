"""`make gpu-check` at tiny size on the CPU: every step runs and the JSON names every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, cli_env

from resnext_lab.tools.gpu_check import planned_seconds


def run_check(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "gpu-check"
    proc = subprocess.run(
        [sys.executable, "-m", "resnext_lab.tools.gpu_check", "--device", "cpu", "--tiny", "--out", str(out), *extra],
        cwd=ROOT,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    return proc, json.loads((out / "gpu-check.json").read_text())


@pytest.mark.e2e
def test_gpu_check_runs_every_step_at_tiny_size(tmp_path: Path) -> None:
    proc, report = run_check(tmp_path, "--skip-compile")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = [row["case"] for row in report["bench_eager"]["results"]]
    assert cases[:2] == ["resnet50", "resnext50_32x4d"] and "proxy_epoch" in cases and "loop_overhead" in cases
    proxy = next(row for row in report["bench_eager"]["results"] if row["case"] == "proxy_epoch")
    assert {"overhead_pct", "host_syncs_per_step", "epoch_s", "plain_epoch_s"} <= set(proxy["extra"])
    sweep = report["sweep"]
    assert (sweep["jobs"], sweep["completed"], sweep["exit_status"]) == (2, 2, 0), sweep
    assert sweep["wall_s"] > 0 and sweep["plan_estimate_s"] > 0
    assert sweep["measured_over_plan"] == pytest.approx(sweep["wall_s"] / sweep["plan_estimate_s"], rel=1e-2)
    markdown = (tmp_path / "gpu-check" / "gpu-check.md").read_text()
    assert "| bench_eager | resnet50 |" in markdown and "Packed sweep: 2/2 jobs completed" in markdown
    # stacking: bf16 and fp32, channels_last on and off (the compiled variant is skipped with the compiler)
    variants = report["stacking"]["variants"]
    assert [v["name"] for v in variants] == ["bf16 channels_last", "bf16 NCHW", "fp32 channels_last", "fp32 NCHW"]
    for v in variants:
        assert (v["settings"]["bf16"], v["settings"]["channels_last"]) == ("bf16" in v["name"], "NCHW" not in v["name"])
        rows = v["results"]
        assert [(r["extra"]["cell"], r["extra"]["stack"]) for r in rows] == [
            (cell, s) for cell in ("ResNet-29 1x16d", "ResNeXt-29 32x1d") for s in (1, 2)
        ]
        assert all(r["ratio"] > 0 and r["extra"]["unit"] == "seed-images/s" for r in rows)
    assert "| fp32 NCHW | cpu ResNeXt-29 32x1d | 2 |" in markdown


@pytest.mark.e2e
def test_gpu_check_compiled_step_at_tiny_size(tmp_path: Path) -> None:
    proc, report = run_check(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [row["case"] for row in report["bench_compiled"]["results"]][:2] == ["resnet50", "resnext50_32x4d"]


def test_planned_seconds_reads_the_plan() -> None:
    assert planned_seconds("x\nestimate: 8.8 min wall time for the sweep (1 s)\n") == pytest.approx(528.0)
    assert planned_seconds("estimate: 21.8 h wall time") == pytest.approx(21.8 * 3600)
    assert planned_seconds("no plan") is None
