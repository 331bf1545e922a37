"""Sequential sweeps end to end at the smoke scale (real Fashion-MNIST, tiny networks): rounds of seeds, the
looks recorded in sequential.json, a large effect decided at the first look, identical cells, and a kill -9
between rounds that resumes at the right look without making a recorded decision again."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

#: minutes on a 2-core CPU: run with `-m slow`
pytestmark = pytest.mark.e2e

COMMON = ["-m", "scale=smoke", "hydra/sweeper=sequential", "logger.wandb.enabled=false"]

#: Residual on against off where the effect is large and reliable: 50 layers (3, 4, 6, 3) trained on 2,048
#: images for one epoch. With shortcuts the network learns (about 45-55% error); without them a 50-layer plain
#: stack does not train in 64 steps and stays near chance (about 86-90%). A 40-point effect over a spread of a
#: few points: a paired t of about 10 at 4 seeds, where the first of two O'Brien-Fleming looks needs p < 0.003.
LARGE = [
    "experiment=demo",
    "depths.d50=50",
    "+stage_blocks_of.d50=[3,4,6,3]",
    "data.limit_train=2048",
    "data.batch_size=32",
    "data.limit_eval=512",
    "trainer.max_epochs=1",
    "report.sequential={start:4,step:4,max:8}",
]

#: Block forms (a), (b), (c): the same function computed three ways, cells identical but for floating point.
FORMS = ["experiment=forms", "data.limit_train=256", "data.limit_eval=128", "report.sequential={start:3,step:1,max:5}"]


def _state(sweep: Path) -> dict:
    return json.loads((sweep / "sequential.json").read_text())


def test_large_effect_stops_at_the_first_look(run_cli: Callable, tmp_path: Path) -> None:
    done = run_cli(*COMMON, *LARGE, f"out_root={tmp_path}", timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    sweep = tmp_path / "demo" / "smoke"
    state = _state(sweep)
    decision = state["decisions"]["without vs with shortcuts"]
    assert (decision["decision"], decision["verdict"], decision["look"], decision["seeds"]) == (
        "differs",
        "worse",
        1,
        4,
    )
    assert len(state["looks"]) == 1
    seeds = sorted(json.loads(p.read_text())["seed"] for p in sweep.glob("*/results.json"))
    assert seeds == [0, 0, 1, 1, 2, 2, 3, 3]  # no second round
    assert "without vs with shortcuts   primary   differs" in done.stdout


def test_identical_cells_end_equivalent_or_at_max_and_resume_after_kill(
    start_cli: Callable, run_cli: Callable, tmp_path: Path
) -> None:
    proc = start_cli(*COMMON, *FORMS, f"out_root={tmp_path}")
    sweep = tmp_path / "forms" / "smoke"
    record = sweep / "sequential.json"
    deadline = time.monotonic() + 600
    while not record.is_file():  # the first look is recorded: round 2 starts now
        assert proc.poll() is None, f"the sweep ended before its first look (exit {proc.returncode})"
        assert time.monotonic() < deadline, "no first look after 600 s"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = _state(sweep)
    first_round = {p: p.stat().st_mtime_ns for p in sweep.glob("*seed=[012]/results.json")}
    assert len(first_round) == 9 and len(first["looks"]) >= 1

    done = run_cli(*COMMON, *FORMS, f"out_root={tmp_path}", timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    state = _state(sweep)
    assert state["looks"][: len(first["looks"])] == first["looks"]  # recorded looks are not taken again
    assert [lk["look"] for lk in state["looks"]] == list(range(1, len(state["looks"]) + 1))
    for name, d in first["decisions"].items():
        if d["decision"] != "open":
            assert state["decisions"][name] == d  # nor its decisions made again
    assert {p: p.stat().st_mtime_ns for p in first_round} == first_round  # round 1 was not run again
    for d in state["decisions"].values():
        assert d["decision"] in ("equivalent", "undecided"), d
        assert d["decision"] == "equivalent" or d["seeds"] == 5
    assert "sequential decisions after look" in done.stdout
