"""The packed launcher (`hydra/launcher=packed`) on the CPU: shares, order, a killed worker, Ctrl-C, a killed
sweep, and configs edited while a sweep runs. Each test runs `run.py` end to end in a subprocess (tiny model)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, tiny
from omegaconf import OmegaConf

pytestmark = pytest.mark.e2e  # every test here runs packed sweeps through run.py


def test_packed_launcher_keeps_each_device_to_its_share(tmp_path: Path) -> None:
    """3 jobs, 1 at a time on each of 2 (named) GPUs: each job sees one of them, never two jobs on one at once,
    and both devices work at once: the first job's worker is frozen (SIGSTOP) until a second job runs."""
    sweep = tmp_path / "packed"
    proc = _start_packed(tmp_path, "packed", 1, "model.cardinality=1,2,4", "data.batch_size=32", devices="[3,5]")
    try:
        deadline = time.monotonic() + 180
        while not (worker := _worker_of_a_running_job(proc.pid, sweep)):
            assert time.monotonic() < deadline and proc.poll() is None, "no job ran"
            time.sleep(0.05)
        os.kill(worker, signal.SIGSTOP)
        try:
            _wait_running(proc, sweep, 2)
        finally:
            os.kill(worker, signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "packed").glob("*/results.json"))]
    assert sorted(r["model"]["cardinality"] for r in results) == [1, 2, 4]
    assert all(r["status"] == "completed" for r in results), [r.get("error") for r in results]
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        start = datetime.strptime(r["started"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
        spans.setdefault(r["placement"]["cuda_visible_devices"], []).append((start, start + r["wall_time_s"]))
        assert r["placement"]["omp_num_threads"] == str(max(1, (os.cpu_count() or 1) // 2))
    assert sorted(spans) == ["3", "5"]
    for on_one in spans.values():  # one device's jobs ran one after another (1 s: the clock's resolution)
        on_one.sort()
        assert all(end <= nxt + 1 for (_, end), (nxt, _) in zip(on_one, on_one[1:], strict=False))
    assert "3/3 done" in stderr + stdout


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat_file.parent.name))
    return found


def _workers(pid: int) -> list[int]:
    """The packed launcher's worker processes under `pid` (not multiprocessing's resource tracker)."""
    cmdlines = {c: Path(f"/proc/{c}/cmdline").read_bytes() for c in _children(pid)}
    return [c for c, cmd in cmdlines.items() if b"spawn_main" in cmd and b"resource_tracker" not in cmd]


def _worker_of_a_running_job(pid: int, sweep: Path) -> int | None:
    """The worker that has a running job's folder open (its run.log, its metrics), None before there is one."""
    running = [str(p.parent) for p in sweep.glob("*/results.json") if json.loads(p.read_text())["status"] == "running"]
    for worker in _workers(pid):
        for fd in Path(f"/proc/{worker}/fd").glob("*"):
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(tuple(f"{folder}/" for folder in running)) and running:
                    return worker
    return None


def _alive(pid: int) -> bool:
    """A process that still runs: not gone, and not a zombie that nobody has reaped yet."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _start_packed(
    tmp_path: Path, name: str, jobs_per_device: int, *overrides: str, devices: str = "cpu"
) -> subprocess.Popen[str]:
    """A packed sweep (on the CPU unless told) in its own process group (as a terminal starts it), output captured."""
    return subprocess.Popen(
        [
            sys.executable,
            "run.py",
            "-m",
            "hydra/launcher=packed",
            f"hydra.launcher.devices={devices}",
            f"hydra.launcher.jobs_per_device={jobs_per_device}",
            f"out_root={tmp_path}",
            f"name={name}",
            *tiny(*overrides),
        ],
        cwd=ROOT,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_running(proc: subprocess.Popen[str], sweep: Path, jobs: int) -> list[int]:
    """Wait until `jobs` of the sweep's jobs are training; the worker processes then."""
    deadline = time.monotonic() + 120
    while sum(json.loads(p.read_text())["status"] == "running" for p in sweep.glob("*/results.json")) < jobs:
        assert time.monotonic() < deadline and proc.poll() is None, f"{jobs} job(s) never ran at once"
        time.sleep(0.2)
    workers = _workers(proc.pid)
    assert len(workers) == jobs, workers
    return workers


def test_packed_worker_killed_in_a_job_fails_that_job_and_the_sweep_goes_on(tmp_path: Path) -> None:
    """SIGKILL the worker of a running job: that job is reported failed, the next one runs in a new worker."""
    sweep = tmp_path / "killed"
    proc = _start_packed(tmp_path, "killed", 1, "trainer.max_epochs=200,1")
    try:
        (worker,) = _wait_running(proc, sweep, 1)
        os.kill(worker, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    killed = json.loads((sweep / "trainer.max_epochs=200" / "results.json").read_text())
    assert killed["status"] == "failed" and "killed by signal 9" in killed["error"]
    assert json.loads((sweep / "trainer.max_epochs=1" / "results.json").read_text())["status"] == "completed"
    assert "1 job(s) did not complete" in stdout and "killed by signal 9" in stdout


def test_ctrl_c_stops_a_packed_sweep_and_records_its_jobs_interrupted(tmp_path: Path) -> None:
    """SIGINT to the terminal's process group: every running job says "interrupted" (resumable), no worker is left."""
    sweep = tmp_path / "stopped"
    proc = _start_packed(tmp_path, "stopped", 2, "model.cardinality=1,2,4", "trainer.max_epochs=200")
    try:
        workers = _wait_running(proc, sweep, 2)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith(("interrupted", "error"))]
    assert line.startswith("interrupted (SIGINT): 2 running job(s)") and "run the same command again" in line
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/results.json"))
    assert statuses == ["interrupted", "interrupted"]  # the third job never started
    assert not [w for w in workers if Path(f"/proc/{w}").exists()]


def test_packed_jobs_start_longest_first(tmp_path: Path) -> None:
    """One worker, jobs of 1 and 2 epochs: the 2-epoch job (swept second) starts first; both keep their numbers."""
    proc = _start_packed(tmp_path, "order", 1, "trainer.max_epochs=1,2")
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    started = re.findall(r"#(\d+) (\S+): started", stdout + stderr)
    assert started == [("1", "trainer.max_epochs=2"), ("0", "trainer.max_epochs=1")], (stdout + stderr)[-3000:]


def test_a_packed_sweep_runs_the_configs_it_started_with(tmp_path: Path) -> None:
    """Every job is composed before the first starts: a config edited while the sweep runs changes no job."""
    extra = tmp_path / "extra" / "optim"
    extra.mkdir(parents=True)
    (extra / "mine.yaml").write_text("defaults:\n  - schema\n  - _self_\nlr: 0.05\n")
    proc = _start_packed(
        tmp_path, "frozen", 1, f"hydra.searchpath=[file://{tmp_path / 'extra'}]", "optim=mine", "seed=0,1"
    )
    try:
        _wait_running(proc, tmp_path / "frozen", 1)
        (extra / "mine.yaml").write_text("defaults:\n  - schema\n  - _self_\nlr: broken\n")
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, (stdout + stderr)[-3000:]
    for job in ("seed=0", "seed=1"):
        config = OmegaConf.load(tmp_path / "frozen" / job / ".hydra" / "config.yaml")
        assert config.optim.lr == 0.05
        assert json.loads((tmp_path / "frozen" / job / "results.json").read_text())["status"] == "completed"


def test_a_killed_packed_sweep_leaves_no_worker_and_its_jobs_resumable(tmp_path: Path) -> None:
    """SIGKILL the sweep's own process (it cannot stop its workers): each worker interrupts its job as Ctrl-C
    would, records it as interrupted, and exits; nothing keeps training."""
    sweep = tmp_path / "orphaned"
    proc = _start_packed(tmp_path, "orphaned", 2, "model.cardinality=1,2", "trainer.max_epochs=200")
    try:
        workers = _wait_running(proc, sweep, 2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 60
        while [w for w in workers if _alive(w)] and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not [w for w in workers if _alive(w)], "a worker outlived its sweep"
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/results.json"))
    assert statuses == ["interrupted", "interrupted"]
