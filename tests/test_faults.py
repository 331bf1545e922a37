"""Faults that lose nothing: one sweep per folder, a full disk, torn checkpoints, interrupts, long tables.

Each fault is made for real where the machine allows: a second `run.py` on a busy folder, a 500 kB tmpfs
that fills up (root only, else skipped), a truncated checkpoint, SIGTERM to a training run.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT, cli_env, find_job, tiny

from resnext_lab.callbacks import AtomicCheckpointIO
from resnext_lab.files import output_fault, write_json_atomic
from resnext_lab.tasks.train import resume_point
from resnext_lab.tools.soak import rss_growth

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def show(proc: Any, text: str | None = None) -> str:
    out = text if text is not None else f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    return f"exit {proc.returncode}\n{out}"


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def results(job: Path) -> dict[str, Any]:
    return json.loads((job / "results.json").read_text())


def wait_for(what: Callable[[], Any], proc: subprocess.Popen[bytes], seconds: float = 180) -> Any:
    """Poll `what` until it returns something true; fail if `proc` ends first or nothing comes in `seconds`."""
    deadline = time.monotonic() + seconds
    while not (found := what()):
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the test could act on it"
        assert time.monotonic() < deadline, f"nothing within {seconds} s"
        time.sleep(0.05)
    return found


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 500 kB tmpfs, as a nearly full disk (mounting one needs root)."""
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a 500 kB tmpfs needs root")
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=500k", "tmpfs", str(where)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


# --- one sweep per folder -------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_second_sweep_on_a_busy_folder_refuses_and_the_first_completes(
    run_cli: RunCli, start_cli: Any, tmp_path: Path
) -> None:
    args = ["-m", *tiny("seed=0,1", "trainer.max_epochs=2", "logger=csv"), f"out_root={tmp_path}", "name=busy"]
    first = start_cli(*args)
    wait_for(lambda: list((tmp_path / "busy").glob("*/results.json")), first)
    os.killpg(first.pid, signal.SIGSTOP)  # frozen, holding its folder, however long the second takes to start
    try:
        second = run_cli(*args)
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert second.returncode == 2, show(second)
    assert "Traceback" not in second.stderr
    (line,) = errors(second.stderr)
    assert str(tmp_path / "busy") in line and f"pid {first.pid}" in line, line
    assert first.wait(timeout=600) == 0
    for seed in (0, 1):
        assert results(find_job(tmp_path / "busy", f"seed={seed}"))["status"] == "completed"


# --- a full disk, an unwritable folder ---------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("launcher", ["basic", "local"])
def test_a_full_disk_ends_the_sweep_in_one_line_and_a_rerun_resumes(
    run_cli: RunCli, small_disk: Path, launcher: str
) -> None:
    """A 500 kB disk fills up in the first job (W&B, CSV, checkpoint): one line, exit 2, the job resumable.
    Through submitit (local: both jobs at once), where the disk has no room for the job's result either."""
    where = ["hydra/launcher=local", "hydra.launcher.gpus_per_node=0"] if launcher == "local" else []
    args = ["-m", *where, *tiny("seed=0,1", "trainer.max_epochs=2"), f"out_root={small_disk}", "name=full"]
    proc = run_cli(*args)
    assert proc.returncode == 2, show(proc)
    assert "Traceback" not in proc.stderr and "Logging error" not in proc.stderr, show(proc)
    (line,) = errors(proc.stderr)
    assert "the disk is full" in line and str(small_disk / "full") in line and "run the same command" in line, line
    stopped = [results(p.parent)["status"] for p in (small_disk / "full").glob("*/results.json")]
    if launcher == "basic":
        assert stopped == ["interrupted"], stopped  # readable, resumable; the next job never ran
    else:
        assert stopped and set(stopped) <= {"interrupted", "running"}, stopped  # resumable either way

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = run_cli(*args)
    assert again.returncode == 0, show(again)
    assert [results(p.parent)["status"] for p in (small_disk / "full").glob("*/results.json")] == ["completed"] * 2


def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one(small_disk: Path) -> None:
    path = small_disk / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, path)
    with pytest.raises(OSError) as raised:
        io.save_checkpoint({"epoch": 2, "w": torch.ones(1_000_000)}, path)  # 4 MB on a 500 kB disk
    assert raised.value.errno == errno.ENOSPC
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left behind


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_files_written_whole_get_the_modes_the_umask_gives(tmp_path: Path, umask: int) -> None:
    """results.json and checkpoints are written through a temporary file: others read them as they would any file."""
    previous = os.umask(umask)
    try:
        results_file = write_json_atomic(tmp_path / "results.json", {"status": "completed"})
        checkpoint = tmp_path / "last.ckpt"
        AtomicCheckpointIO().save_checkpoint({"epoch": 1}, checkpoint)
    finally:
        os.umask(previous)
    for path in (results_file, checkpoint):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, oct(path.stat().st_mode)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_output_faults_are_recognised_through_wrapping_errors(tmp_path: Path, code: int) -> None:
    wrapped = RuntimeError("PytorchStreamWriter failed writing file data/0")
    wrapped.__cause__ = OSError(code, os.strerror(code))
    fault = output_fault(wrapped, tmp_path)
    assert fault is not None and fault[0].startswith("the ")
    assert output_fault(ValueError("a bug"), tmp_path) is None  # a writable folder: not an output fault
    assert "removed" in output_fault(ValueError("gone"), tmp_path / "gone")[0]


# --- checkpoints ----------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_torn_checkpoint_is_set_aside_and_the_rerun_completes(run_cli: RunCli, tmp_path: Path) -> None:
    args = ["-m", *tiny("trainer.max_epochs=2", "logger=csv"), f"out_root={tmp_path}", "name=torn"]
    assert run_cli(*args).returncode == 0
    (job,) = [p.parent for p in (tmp_path / "torn").glob("*/results.json")]
    ckpt = job / "checkpoints" / "last.ckpt"
    torn = ckpt.read_bytes()[: ckpt.stat().st_size // 2]
    ckpt.write_bytes(torn)  # what a kill during Lightning's in-place copy left
    (job / "results.json").write_text(json.dumps({**results(job), "status": "running"}))  # as a kill leaves it
    proc = run_cli(*args)
    assert proc.returncode == 0, show(proc)
    assert "does not load" in proc.stderr and "starting again" in proc.stderr, show(proc)
    r = results(job)
    assert r["status"] == "completed" and r["resumed"] is False and r["epochs"] == 2
    (aside,) = r["checkpoint"]["set_aside"]
    assert (job / aside["path"]).read_bytes() == torn and "zip archive" in aside["error"]
    assert torch.load(ckpt, weights_only=False)["epoch"] == 1  # a new, whole checkpoint


def test_resume_takes_the_newest_checkpoint_that_loads(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"epoch": 3}, folder / "epoch3.ckpt")
    os.utime(folder / "epoch3.ckpt", (1, 1))  # older
    (folder / "last.ckpt").write_bytes(b"PK\x03\x04 torn")
    found, aside = resume_point(tmp_path)
    assert found == folder / "epoch3.ckpt"
    assert [Path(a["path"]).parent.name for a in aside] == ["set-aside"] and not (folder / "last.ckpt").exists()
    assert resume_point(tmp_path / "nothing") == (None, [])


# --- interrupts -----------------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_sigterm_during_a_job_is_one_line_and_resumable(start_cli: Any, tmp_path: Path) -> None:
    proc = start_cli(*tiny("trainer.max_epochs=500", "logger=csv"), f"out_root={tmp_path}")
    ckpt = wait_for(lambda: list(tmp_path.glob("runs/*/*/checkpoints/last.ckpt")), proc)[0]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    output = (tmp_path / "started-0.log").read_text()
    assert "Traceback" not in output and "Received SIGTERM" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith(("interrupted", "error"))]
    job = ckpt.parent.parent
    assert len(lines) == 1 and lines[0].startswith("interrupted (SIGTERM)") and str(job) in lines[0], lines
    assert f"hydra.run.dir={job}" in lines[0]  # a single run's folder is named by time: the line gives it
    assert results(job)["status"] == "interrupted"


_LOST_INTERRUPT = """
import gc, os, signal, sys, time
import pytorch_lightning as pl
import torch
from resnext_lab import interrupts
from resnext_lab.callbacks import StopOnSignal, ctrl_c_as_interrupt

class Dropper:  # Python prints, then drops, an exception raised in a finaliser
    def __del__(self):
        signal.raise_signal(signal.SIGINT)  # its handler runs here, inside __del__

class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            Dropper()  # finalised at once: the signal's KeyboardInterrupt is lost
        return self.layer(batch[0]).sum()
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 4)), batch_size=4)
interrupts.install()
callbacks = [StopOnSignal()] if sys.argv[1] == "with" else []
trainer = pl.Trainer(max_epochs=10, callbacks=callbacks, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False)
with interrupts.job_running():
    try:
        with ctrl_c_as_interrupt(trainer):
            trainer.fit(Tiny(), data)
    except KeyboardInterrupt:
        print("interrupted at step", trainer.global_step)
        sys.exit(130)
print("completed at step", trainer.global_step)
"""


@pytest.mark.parametrize("callback", ["with", "without"])
def test_a_signal_whose_interrupt_python_drops_still_stops_the_job(tmp_path: Path, callback: str) -> None:
    """The KeyboardInterrupt of a signal that lands in a finaliser is printed and dropped by Python: without
    StopOnSignal the job trains on to the end (what a packed sweep once recorded as "completed" after Ctrl-C)."""
    script = tmp_path / "lost.py"
    script.write_text(_LOST_INTERRUPT)
    env = {**cli_env(tmp_path), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(script), callback], env=env, capture_output=True, text=True, timeout=120)
    assert "Exception ignored in" in proc.stderr, proc.stderr[-3000:]  # the interrupt was dropped
    if callback == "with":
        assert proc.returncode == 130 and "interrupted at step 4" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    else:
        assert proc.returncode == 0 and "completed at step 160" in proc.stdout, proc.stdout + proc.stderr[-3000:]


# --- a table never starts blind -------------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_table_priced_above_an_hour_prints_its_plan_and_waits_for_confirm(run_cli: RunCli, tmp_path: Path) -> None:
    # the plan times the step and measures the per-job overhead (two short sweeps): minutes on a loaded machine
    proc = run_cli(
        "-m", "experiment=forms", "scale=smoke", "trainer.max_epochs=1000000", f"out_root={tmp_path}", timeout=900
    )
    assert proc.returncode == 2, show(proc)
    assert "estimate:" in proc.stdout and "ResNeXt" in proc.stdout, show(proc)
    (line,) = errors(proc.stderr)
    assert "sweep.confirm=true" in line and "CONFIRM=1" in line, line
    assert not list(tmp_path.rglob("results.json")) and not list(tmp_path.rglob(".lock"))


def test_make_picks_the_cpu_scale_where_no_gpu_is_visible() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        ["make", "-n", "table3", f"PY={sys.executable}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, show(proc)
    assert "scale=cpu" in proc.stdout and "no GPU visible here: SCALE=cpu" in proc.stderr, show(proc)
    forced = subprocess.run(
        ["make", "-n", "table3", "SCALE=smoke", "CONFIRM=1", f"PY={sys.executable}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "scale=smoke" in forced.stdout and "sweep.confirm=true" in forced.stdout and not forced.stderr


# --- the soak ---------------------------------------------------------------------------------------------------


def test_rss_growth_compares_the_workers_after_the_warm_up_with_after_the_last_job() -> None:
    records = [{"worker": w, "done": d, "rss_kb": 1000 * (10 + d)} for d, w in enumerate([0, 1] * 5, start=1)]
    line = rss_growth(records, warm_jobs=4)
    # after 4 jobs: worker 0 at job 3 (13 MB), worker 1 at job 4 (14 MB); at the end: jobs 9 and 10 (19 + 20)
    assert line["rss_mb_after_first"] == pytest.approx(27000 / 1024, abs=0.1)
    assert line["rss_growth_pct"] == pytest.approx(100 * (39 - 27) / 27, abs=0.01)


@pytest.mark.e2e
def test_soak_runs_its_jobs_and_prints_one_json_line(wandb_home: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "resnext_lab.tools.soak", "--jobs", "12"],
        cwd=ROOT,
        env=cli_env(wandb_home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["jobs"] == 12 and line["rss_mb_after_last"] > 0 and "rss_growth_pct" in line, proc.stderr[-3000:]
