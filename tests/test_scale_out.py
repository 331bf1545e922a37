"""Scale-out: a submitit-local sweep, DDP over two CPU processes, and the SLURM launcher preset.

The first two run `run.py` end to end in subprocesses (tiny model, 256 training images); the
SLURM checks build the real sbatch script with fake `srun`/`sbatch` commands, no cluster needed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT, cli_env, tiny, wandb_records
from omegaconf import OmegaConf


def cli(args: list[str], home: Path, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    """`python run.py ARGS` with offline, quiet W&B whose caches stay in `home`; one torch thread per process."""
    proc = subprocess.run(
        [sys.executable, "run.py", *args], cwd=ROOT, env=cli_env(home), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


# --- parallel jobs on this machine ---------------------------------------------------------------


def _job_process(job_dir: Path) -> int:
    """The pid of a running local job: the process running submitit's job under its controller, whose pid is
    the job's id (hydra.job.id, in the job's .hydra/hydra.yaml)."""
    controller = int(OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.job.id)
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
    todo = [controller]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            if b"submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        todo += children.get(pid, [])
    raise AssertionError(f"no process runs {job_dir}")


@pytest.mark.e2e
def test_local_launcher_runs_a_sweep_in_parallel_jobs(start_cli: Any, tmp_path: Path) -> None:
    """Each job in its own submitit process, both at once: the first job to run is frozen (SIGSTOP) until the
    second runs too, which a launcher that runs one job after another never does, however fast or slow."""
    sweep = tmp_path / "sweep"
    proc = start_cli(
        "-m",
        "hydra/launcher=local",
        "hydra.launcher.gpus_per_node=0",
        f"out_root={tmp_path}",
        "name=sweep",
        *tiny("model.cardinality=1,2", "data.batch_size=32"),
    )

    def running() -> list[Path]:
        return [p.parent for p in sweep.glob("*/results.json") if json.loads(p.read_text())["status"] == "running"]

    deadline = time.monotonic() + 180
    while not running():
        assert time.monotonic() < deadline and proc.poll() is None, "no job ran"
        time.sleep(0.05)
    (first,) = running()
    frozen = _job_process(first)
    os.kill(frozen, signal.SIGSTOP)
    try:
        while len(running()) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "the second job never ran beside the first"
            time.sleep(0.05)
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert proc.wait(timeout=240) == 0, (tmp_path / "started-0.log").read_text()[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert sorted(r["model"]["cardinality"] for r in results) == [1, 2]
    for path in sorted(sweep.glob("*/results.json")):
        result = json.loads(path.read_text())
        assert result["status"] == "completed", result.get("error")
        assert math.isfinite(result["metrics"]["test/top1_err"])
        runs = offline_runs(path.parent)
        assert len(runs) == 1 and runs[0].name.endswith(result["wandb"]["id"])
    # each job ran as its own submitit process (one log folder each)
    assert len([p for p in (sweep / ".submitit").iterdir() if any(p.glob("*_result.pkl"))]) == 2


def _job_logs(sweep: Path) -> list[Path]:
    return sorted(sweep.glob(".submitit/*/*_0_log.out"))


#: The moments a local sweep is interrupted at, each a state its jobs reach, waited on.
WHEN = {
    # every job's process has started and is loading its pickle (submitit's log says so): before its
    # signal handler is installed (until then it ignores SIGINT, as its controller does), before results.json
    "starting": lambda sweep: len([p for p in _job_logs(sweep) if "Loading pickle" in p.read_text()]) == 2,
    # every job trains: W&B's service is up, a row is in its metrics.csv
    "training": lambda sweep: len([p for p in sweep.glob("*/csv/metrics.csv") if p.read_text().count("\n") > 1]) == 2,
}


@pytest.mark.e2e
@pytest.mark.parametrize(("how", "when"), [("ctrl-c", "training"), ("sigterm", "training"), ("ctrl-c", "starting")])
def test_ctrl_c_stops_a_local_sweep_in_one_line_and_its_jobs_record_it(
    start_cli: Any, tmp_path: Path, how: str, when: str
) -> None:
    """The terminal's Ctrl-C reaches the sweep, submitit's job controllers and the jobs; `timeout` or `kill`
    reaches the sweep's process alone, which passes it on. Either way: one line, exit 130 or 143, no
    traceback, and each job recorded as interrupted (resumable) rather than killed by its controller, at
    whatever moment it was stopped, start-up included. The sweep's process exits after its jobs: what they
    recorded is final when it has."""
    sweep = tmp_path / "stopped"
    proc = start_cli(
        "-m",
        "hydra/launcher=local",
        "hydra.launcher.gpus_per_node=0",
        f"out_root={tmp_path}",
        "name=stopped",
        *tiny("model.cardinality=1,2", "trainer.max_epochs=200"),
    )
    deadline = time.monotonic() + 180
    while not WHEN[when](sweep):
        assert time.monotonic() < deadline and proc.poll() is None, f"the jobs never reached {when}"
        time.sleep(0.05)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    # a job that did not hear the signal would train its 200 epochs, and the sweep wait for it
    assert proc.wait(timeout=120) == (130 if how == "ctrl-c" else 143)
    ended = [p for p in _job_logs(sweep) if list(p.parent.glob("*_result.pkl"))]  # submitit's: the job has ended
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.glob("*/results.json"))
    output = (tmp_path / "started-0.log").read_text()
    assert "Traceback" not in output, output[-3000:]
    (line,) = [line for line in output.splitlines() if line.startswith(("interrupted", "error"))]
    name = "SIGINT" if how == "ctrl-c" else "SIGTERM"
    assert line.startswith(f"interrupted ({name}): the sweep's running jobs are stopped"), line
    assert "run the same command" in line
    assert len(ended) == 2, "the sweep's process exited before its jobs"
    if when == "training":
        assert statuses == ["interrupted", "interrupted"]
        runs = list(sweep.glob("*/wandb/offline-run-*/run-*.wandb"))
        assert len(runs) == 2
        for run in runs:  # the jobs' W&B services lived on to close their runs
            assert wandb_records(run)[-1].exit.exit_code == 255
    else:  # a job stopped before it wrote results.json has nothing to record; none is left "running"
        assert set(statuses) <= {"interrupted"}, statuses


_A_JOB = """
import pathlib, signal, sys, time
here, name, how = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]

def handle(signum, frame):
    (here / f"{name}.heard").touch()
    if how == "records":  # a job that takes a while to record itself, then ends
        time.sleep(1)
        (here / f"{name}.recorded").touch()
        sys.exit(130)

signal.signal(signal.SIGINT, handle)
(here / f"{name}.ready").touch()
while True:
    time.sleep(0.05)
"""

_A_SWEEP = """
import os, pathlib, signal, subprocess, sys, threading, time
from hydra_plugins.resnext_lab.submitit_launchers import _stop_jobs
here, case = pathlib.Path(sys.argv[1]), sys.argv[2]

def start(name, how, **kwargs):
    return subprocess.Popen([sys.executable, "-c", sys.argv[3], str(here), name, how], **kwargs)

def wait_for(name):
    while not (here / name).exists():
        time.sleep(0.02)

if case == "records":
    start("job", "records")
    service = start("service", "records", start_new_session=True)  # as W&B's service is started
    wait_for("job.ready"), wait_for("service.ready")
    left = _stop_jobs()
    print(left, (here / "job.recorded").exists(), (here / "service.heard").exists(), service.poll())
    service.kill()
else:  # a job that never ends: a second signal to the sweep stops the waiting
    job = start("job", "hangs")
    wait_for("job.ready")
    threading.Thread(target=lambda: (wait_for("job.heard"), os.kill(os.getpid(), signal.SIGINT))).start()
    print(_stop_jobs())
    job.kill()
"""


@pytest.mark.parametrize("case", ["records", "hangs"])
def test_an_interrupted_local_sweep_passes_the_signal_to_its_jobs_and_waits_for_them(tmp_path: Path, case: str) -> None:
    """The sweep's process passes SIGINT on to the processes under it that a terminal's Ctrl-C reaches (not a
    service in its own session, as W&B's is, which a job needs to close its run) and exits only once they have
    ended, however long a job takes to record itself; a second signal stops the waiting (a job that hangs)."""
    proc = subprocess.run(
        [sys.executable, "-c", _A_SWEEP, str(tmp_path), case, _A_JOB],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,  # its own process group, as a terminal gives a command
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if case == "records":  # nothing left, the job recorded, the service never heard the signal and still runs
        assert proc.stdout.split() == ["0", "True", "False", "None"], proc.stdout
    else:
        assert proc.stdout.split() == ["1"], proc.stdout


# --- DDP over two CPU processes ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One run with trainer=ddp on two gloo processes; Lightning re-runs run.py for rank 1 in the same folder."""
    out = tmp_path_factory.mktemp("ddp")
    run_dir = out / "run"
    proc = cli(
        [
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            f"out_root={out}",
            f"hydra.run.dir={run_dir}",
            *tiny("data.batch_size=32"),
        ],
        home=out,
    )
    return run_dir, proc.stdout


@pytest.mark.e2e
def test_ddp_rank_zero_alone_writes_results_wandb_and_summary(ddp_run: tuple[Path, str]) -> None:
    run_dir, stdout = ddp_run
    assert (run_dir / "train_ddp_process_1.log").exists()  # rank 1 really ran, as a child in this folder
    result = json.loads((run_dir / "results.json").read_text())
    assert result["status"] == "completed", result.get("error")
    assert math.isfinite(result["metrics"]["test/loss"]) and math.isfinite(result["metrics"]["train/loss"])
    runs = offline_runs(run_dir)
    assert len(runs) == 1
    assert runs[0].name.endswith((run_dir / "wandb_id").read_text()) and result["wandb"]["id"] in runs[0].name
    assert stdout.count("test top-1 error") == 1  # one summary, from rank 0
    assert not list(run_dir.glob("error*.txt"))
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


def _evaluate_alone(run_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    """The checkpoint's test metrics from one process: over the whole test set, and over rank 0's half."""
    from resnext_lab.data.batches import shard
    from resnext_lab.job import check_job
    from resnext_lab.models import build
    from resnext_lab.module import ClassificationModule

    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    job = check_job(cfg)
    dm = job.datamodule
    dm.setup("test")
    module = ClassificationModule(build(job.spec), job.settings.optim, job.spec.num_classes)
    module.load_state_dict(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
    module.eval()
    with torch.no_grad():
        logits = module(dm.prepare_batch(dm.test_images, train=False))
    labels = dm.test_labels

    def metrics(index: torch.Tensor) -> dict[str, float]:
        out, y = logits[index], labels[index]
        return {
            "test/loss": float(F.cross_entropy(out, y)),
            "test/top1_err": 100.0 * float((out.argmax(1) != y).float().mean()),
            "test/top5_err": 100.0 * float((out.topk(5, dim=1).indices != y[:, None]).all(1).float().mean()),
        }

    everything = torch.arange(len(labels))
    return metrics(everything), metrics(shard(everything, 0, 2, drop_last=False))


@pytest.mark.e2e
def test_ddp_metrics_are_reduced_over_both_ranks(ddp_run: tuple[Path, str]) -> None:
    """Each rank tests a disjoint half of the 128 test images; results.json must hold the whole set's numbers."""
    run_dir, _ = ddp_run
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    whole, half = _evaluate_alone(run_dir)
    for key, value in whole.items():
        assert metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key
    # the check can fail: rank 0's half alone gives another mean loss
    assert half["test/loss"] != pytest.approx(whole["test/loss"], rel=1e-4, abs=1e-4)


@pytest.mark.e2e
def test_ddp_learning_rate_follows_the_global_batch(ddp_run: tuple[Path, str]) -> None:
    """trainer=ddp sets optim.scale_lr: lr 0.1 x (2 devices x 32 images) / 256."""
    run_dir, _ = ddp_run
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["optimizer_states"][0]["param_groups"][0]["initial_lr"] == pytest.approx(0.1 * 2 * 32 / 256)


# --- the trainer presets -------------------------------------------------------------------------


def compose(overrides: list[str]) -> Any:
    from resnext_lab import job

    return job.compose(overrides, hydra=True)


def test_paper_preset_is_8_gpus_of_32_images_at_lr_0_1() -> None:
    cfg = compose(["trainer=paper_8gpu"])
    assert (cfg.trainer.devices, cfg.trainer.strategy, cfg.trainer.accelerator) == (8, "ddp", "gpu")
    assert cfg.data.batch_size == 32
    assert cfg.optim.scale_lr and cfg.optim.lr * 8 * 32 / cfg.optim.base_batch_size == pytest.approx(0.1)


# --- SLURM ---------------------------------------------------------------------------------------

SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=gpu",
    "hydra.launcher.account=mylab",
    "hydra.launcher.timeout_min=240",
    "hydra.launcher.mem_gb=48",
    "hydra.launcher.array_parallelism=1",
    "trainer=ddp",
    "trainer.devices=4",
]


@pytest.fixture()
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`srun` and `sbatch` on PATH: submitit writes its real sbatch script and 'submits' job 4242."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'Submitted batch job 4242'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_slurm_preset_builds_the_requested_job_array(fake_slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hydra.utils import instantiate
    from submitit.core.utils import DelayedSubmission
    from submitit.slurm.slurm import SlurmJob

    sweep = fake_slurm / "sweep"
    cfg = compose([*SLURM, f"hydra.sweep.dir={sweep}"])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg  # what launcher.setup() keeps; launch() reads only the config
    monkeypatch.setattr(SlurmJob, "results", lambda self: ["not run"])  # nothing polls a cluster
    launcher.launch([["model.cardinality=1"], ["model.cardinality=2"]], initial_job_idx=0)

    script = (sweep / ".submitit" / "4242" / "4242_submission.sh").read_text()
    for line in (
        "--partition=gpu",
        "--account=mylab",
        "--gpus-per-node=4",
        "--ntasks-per-node=4",
        "--nodes=1",
        "--time=240",
        "--mem=48GB",
        "--cpus-per-task=8",
        "--array=0-1%1",
        "--signal=USR2@120",
        "--requeue",
    ):
        assert f"#SBATCH {line}\n" in script, line
    assert re.search(r"^srun .* -m submitit\.core\._submit ", script, re.M)

    # time-out or pre-emption: the job checkpoints into a resubmission of itself with the same arguments,
    # so the requeued job composes the same overrides into the same folder and resumes from last.ckpt
    delayed = DelayedSubmission.load(sweep / ".submitit" / "4242_1" / "4242_1_submitted.pkl")
    assert delayed._timeout_countdown == cfg.hydra.launcher.max_num_timeout == 5
    again = delayed._checkpoint_function()
    assert again is not None and again.args == delayed.args
    assert again.args[0] == ["model.cardinality=2"] and again.args[2] == 1  # overrides, job number


def test_a_slurm_job_that_stops_the_sweep_is_said_in_one_line(
    fake_slurm: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job's one-line stop (errors.Stop: a full disk, a bad setting) comes back as its result; the sweep's
    process says it and exits with its status, instead of submitit's traceback."""
    from hydra.utils import instantiate
    from submitit.slurm.slurm import SlurmJob

    from resnext_lab.errors import Stop

    cfg = compose([*SLURM, f"hydra.sweep.dir={fake_slurm / 'sweep'}"])
    launcher = instantiate(cfg.hydra.launcher)
    launcher.config = cfg
    line = "error: the disk is full: cannot write /scratch/sweep/model.cardinality=2; ..."
    monkeypatch.setattr(SlurmJob, "results", lambda self: [Stop(line, 2)] if self.job_id.endswith("_1") else ["done"])
    with pytest.raises(Stop) as stopped:
        launcher.launch([["model.cardinality=1"], ["model.cardinality=2"]], initial_job_idx=0)
    assert stopped.value.code == 2 and capsys.readouterr().err.splitlines() == [line]


def test_slurm_tasks_follow_the_devices_of_each_run() -> None:
    """Lightning's SLURM environment needs one task per device: both follow trainer.devices and num_nodes."""
    launcher = compose(
        ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"]
    ).hydra.launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (8, 8, 2)


DIVERGE_ON_ONE_RANK = """
import sys

import pytorch_lightning as pl
import torch
from resnext_lab.module import ClassificationModule, Diverged

class OneRankDiverges(ClassificationModule):
    def _step(self, batch, stage):
        loss = super()._step(batch, stage)
        if stage == "train" and self.global_rank == 1 and self.global_step == 2:
            loss = loss * float("nan")  # rank 1 alone: rank 0's loss stays finite
        return loss

net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
module = OneRankDiverges(net, {"lr": 0.1}, 3, check_finite_every_n_steps=1)
data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(64, 1, 2, 2), torch.randint(0, 3, (64,))),
                                   batch_size=4)
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
try:
    trainer.fit(module, data)
except Diverged as err:
    print(f"rank {trainer.global_rank}: diverged: {err}", flush=True)
    sys.exit(3)
print(f"rank {trainer.global_rank}: finished", flush=True)
"""


@pytest.mark.e2e
def test_a_nan_on_one_rank_stops_every_rank_at_once(tmp_path: Path) -> None:
    """The finite check is decided by an all-reduce: both gloo ranks raise Diverged at the same step, none hangs."""
    script = tmp_path / "diverge.py"
    script.write_text(DIVERGE_ON_ONE_RANK)
    env = {**cli_env(tmp_path), "MASTER_PORT": "29533"}
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    out = proc.stdout + proc.stderr
    assert "rank 0: diverged: training loss is not finite on another rank at step 2 (epoch 0)" in out, out[-3000:]
    assert "finished" not in out, out[-3000:]
    assert proc.returncode != 0


@pytest.mark.e2e
def test_ddp_spawn_inside_a_sweep_records_its_epochs(tmp_path: Path) -> None:
    """ddp_spawn trains in child processes, so the parent's Trainer never counts epochs: results.json still does."""
    cli(
        [
            "-m",
            "trainer=ddp",
            "trainer.strategy=ddp_spawn",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            f"out_root={tmp_path}",
            "name=spawn",
            *tiny("data.batch_size=32", "trainer.max_epochs=2"),
        ],
        home=tmp_path,
    )
    results = [json.loads(p.read_text()) for p in sorted((tmp_path / "spawn").glob("*/results.json"))]
    assert [(r["status"], r["epochs"]) for r in results] == [("completed", 2)]
