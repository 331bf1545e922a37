"""task=train: every config composes, and `run.py` behaves end to end as a sweep tool must.

Sweeps, exit statuses and the closing table are Hydra's multirun plus our callbacks, so most
tests here run `run.py` in a subprocess with a tiny model (27k params, 256 images, ~1 s an
epoch) and read what the jobs leave: results.json, the W&B offline run file, the CSV metrics.
The learning-rate schedule, parameter groups and lr scaling are tested as units at the end.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import ROOT, cli_env, find_job, job_dirs, tiny, wandb_records, wandb_summary, wandb_values
from omegaconf import DictConfig, OmegaConf, open_dict

from resnext_lab.config import OptimSettings, parse
from resnext_lab.data import build_datamodule
from resnext_lab.errors import ConfigError
from resnext_lab.hardware import resolve_precision
from resnext_lab.job import compose, validate
from resnext_lab.models import build, complexity, spec_from_config
from resnext_lab.module import ClassificationModule, param_groups, scaled_lr, schedule

CONF = ROOT / "conf"
GROUPS = ("model", "data", "optim", "trainer", "logger", "task", "scale")
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
ERROR_KEYS = ("test/top1_err", "test/top5_err", "val/top1_err")

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def results(job: Path) -> dict[str, Any]:
    return json.loads((job / "results.json").read_text())


def csv_rows(job: Path) -> list[dict[str, str]]:
    with (job / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def epochs_with(rows: list[dict[str, str]], column: str) -> list[int]:
    return [int(r["epoch"]) for r in rows if r.get(column)]


def show(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


# --- configs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_config() -> Iterator[Callable[..., DictConfig]]:
    yield lambda *overrides: compose(list(overrides))


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_composes_and_validates(
    compose_config: Callable[..., DictConfig], group: str, option: str
) -> None:
    cfg = compose_config(f"{group}={option}")
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert cfg.task in ("train", "complexity", "plan", "eval", "preregister")
    if (
        cfg.task == "eval"
    ):  # its run's settings come from the checkpoint's job (tests/test_eval.py); the split is its own
        assert cfg.data.split in ("test", "val", "train")
        with open_dict(cfg):
            del cfg.data["split"]
    validate(cfg)
    dm = build_datamodule(OmegaConf.to_container(cfg.data, resolve=True))  # validates; reads no file
    assert isinstance(cfg.logger.wandb.enabled, bool) and isinstance(cfg.logger.csv, bool)
    spec = spec_from_config(
        OmegaConf.to_container(cfg.model, resolve=True),
        num_classes=dm.num_classes,
        in_channels=dm.in_channels,
        image_size=dm.image_size,
    )
    assert complexity(spec)["params"] > 0


#: conf/model name -> (params in millions, GFLOPs) as the paper gives them (Tables 3, 4 and 7).
PAPER = {
    "resnet50": (25.5, 4.1),
    "resnext50_32x4d": (25.0, 4.2),
    "resnet101": (44.5, 7.8),
    "resnext101_32x4d": (44.2, 8.0),
    "resnet200": (None, 15.0),
    "resnet101_1x100d": (None, 15.1),
    "resnext101_2x64d": (None, 15.3),
    "resnext101_64x4d": (None, 15.3),
    "resnext29_8x64d": (34.4, None),
    "resnext29_16x64d": (68.1, None),
}
MODELS = sorted(f.stem for f in (CONF / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", MODELS)
def test_named_models_describe_their_networks(compose_config: Callable[..., DictConfig], name: str) -> None:
    """Each model config gives the paper's complexity; the small ones are built (the big ones only counted: slow)."""
    spec = spec_from_config(OmegaConf.to_container(compose_config(f"model={name}").model, resolve=True))
    counts = complexity(spec)
    params_m, gflops = PAPER.get(name, (None, None))
    if params_m is not None:
        assert counts["params"] / 1e6 == pytest.approx(params_m, rel=0.01)
    if gflops is not None:
        assert counts["flops"] / 1e9 == pytest.approx(gflops, rel=0.02)
    if counts["params"] > 2e6:
        return
    net = build(spec).eval()
    assert sum(p.numel() for p in net.parameters()) == counts["params"]
    with torch.no_grad():
        out = net(torch.randn(2, spec.in_channels, spec.image_size, spec.image_size))
    assert out.shape == (2, spec.num_classes)


# --- a sweep end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(run_cli: RunCli, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Two jobs, two epochs each, with W&B (offline) and CSV logging: the default `python run.py -m` path."""
    out = tmp_path_factory.mktemp("smoke")
    proc = run_cli(
        "-m", *tiny("model.cardinality=1,2", "trainer.max_epochs=2", "deterministic=true"), f"out_root={out}"
    )
    return proc, out


def test_smoke_sweep_writes_results_wandb_and_csv(smoke: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = smoke
    assert proc.returncode == 0, show(proc)
    # named after the swept overrides plus a hash of the shared ones, so a rerun finds it
    (sweep,) = (out / "sweeps").glob("model.cardinality=1,2__*")
    jobs = job_dirs(sweep)
    assert len(jobs) == 2, list(jobs)
    # each job's folder is named by what it sweeps alone
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [
        "model.cardinality=1",
        "model.cardinality=2",
        "report",
    ]
    for c in (1, 2):
        job = find_job(sweep, f"model.cardinality={c}")
        r = results(job)
        assert r["status"] == "completed" and r["error"] is None
        for key in ERROR_KEYS:
            assert 0 <= r["metrics"][key] <= 100, key
        assert r["model"]["cardinality"] == c and r["model"]["params"] > 0 and r["model"]["flops"] > 0
        assert r["seed"] == 0 and r["epochs"] == 2 and r["resumed"] is False
        assert f"model.cardinality={c}" in r["overrides"]
        assert {"torch", "pytorch-lightning", "hydra-core", "wandb", "torchmetrics"} <= set(r["versions"])
        used, why = resolve_precision("auto", cuda=False)  # what this machine's CPU gets, and why
        assert r["precision"] == {"used": used, "why": why}

        runs = list(job.glob("wandb/offline-run-*/run-*.wandb"))
        assert [p.name for p in runs] == [f"run-{r['wandb']['id']}.wandb"]
        summary = wandb_summary(runs[0])
        assert summary["test/top1_err"] == pytest.approx(r["metrics"]["test/top1_err"])
        assert summary["model/cardinality"] == c
        assert [h["epoch"] for h in wandb_values(runs[0], "history") if "val/top1_err" in h] == [0, 1]

        rows = csv_rows(job)
        assert epochs_with(rows, "val/top1_err") == [0, 1]
        last_val = [float(row["val/top1_err"]) for row in rows if row["val/top1_err"]][-1]
        assert last_val == pytest.approx(r["metrics"]["val/top1_err"])

    table = proc.stdout[proc.stdout.index(f"sweep {sweep} (2 jobs)") :].splitlines()
    assert "test top-1 err %" in table[1]
    assert sorted(line.split()[-1] for line in table[3:5]) == ["completed", "completed"]  # under the header's rule
    assert "did not complete" not in proc.stdout
    assert f"precision {used} ({why})" in proc.stderr
    # quiet: the warnings every job printed are gone (stated weights_only, a logging interval within the epoch)
    for known in ("`weights_only` was not set", "LeafSpec", "log_every_n_steps"):
        assert known not in proc.stderr, known
    # then the ablation report: one group per C (one seed: no CI yet), in <sweep>/report/
    report = proc.stdout[proc.stdout.index("ablation over seeds 0") :].splitlines()
    assert report[3].split()[0] == "model.cardinality=1" and report[3].endswith("baseline")
    assert report[4].split()[0] == "model.cardinality=2" and "(no CI: too few seeds)" in report[4]
    assert report[4].endswith("inconclusive")
    assert {"report.md", "report.csv"} <= {p.name for p in (sweep / "report").iterdir()}
    # and the same answer in W&B: one report run in the sweep's group, read back with W&B's own reader
    (run_dir,) = (sweep / "report").glob("wandb/offline-run-*")
    (record,) = [
        r.run for r in wandb_records(next(run_dir.glob("run-*.wandb"))) if r.WhichOneof("record_type") == "run"
    ]
    assert record.job_type == "report" and record.run_group == sweep.relative_to(out).as_posix()
    leet = subprocess.run(
        [str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = json.loads(leet.stdout)["summary"]
    assert summary["ablation"]["_type"] == "table-file" and summary["ablation"]["nrows"] == 2, leet.stdout[-2000:]
    table = json.loads((run_dir / "files" / summary["ablation"]["path"]).read_text())
    assert [row[0] for row in table["data"]] == ["1", "2"] and "verdict" in table["columns"]
    assert summary["verdicts"] == {"model.cardinality=1": "baseline", "model.cardinality=2": "inconclusive"}


def test_closing_table_orders_jobs_by_their_swept_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Folders sort as text (1, 16, 2, 32, 4, 64); the table lists C as swept, numerically, then seed."""
    from resnext_lab.report.closing import summarize_sweep

    for c in (1, 2, 4, 32, 64):
        for seed in (1, 0):
            job = tmp_path / f"model.cardinality={c},seed={seed}"
            job.mkdir()
            (job / "results.json").write_text(
                json.dumps(
                    {
                        "status": "completed",
                        "overrides": [f"model.cardinality={c}", f"seed={seed}", "data.limit_train=9"],
                        "model": {"cardinality": c, "width": 64 // c, "depth": 11, "params": 1000, "flops": 10**6},
                        "metrics": {"test/top1_err": 10.0 + seed},
                        "epochs": 1,
                    }
                )
            )
    assert summarize_sweep(tmp_path) == []
    rows = capsys.readouterr().out.splitlines()[3:]
    assert [row.split()[0] for row in rows] == [
        f"model.cardinality={c},seed={s}" for c in (1, 2, 4, 32, 64) for s in (0, 1)
    ]


@pytest.mark.e2e
def test_same_seed_same_metrics_other_seed_differs(
    run_cli: RunCli, tmp_path: Path, smoke: tuple[subprocess.CompletedProcess[str], Path]
) -> None:
    """deterministic=true: seed 0 repeats the smoke sweep's C=1 job exactly (another process, folder and logger)."""
    (sweep,) = (smoke[1] / "sweeps").glob("model.cardinality=1,2__*")
    first = results(find_job(sweep, "model.cardinality=1"))
    proc = run_cli(
        "-m",
        *tiny("model.cardinality=1", "trainer.max_epochs=2", "deterministic=true", "seed=0,1", "logger=csv"),
        f"out_root={tmp_path}",
        "name=seeds",
    )
    assert proc.returncode == 0, show(proc)
    same, other = (results(find_job(tmp_path / "seeds", f"seed={s}")) for s in (0, 1))
    keys = [*ERROR_KEYS, "train/loss", "val/loss", "test/loss"]
    assert {k: same["metrics"][k] for k in keys} == {k: first["metrics"][k] for k in keys}
    assert other["seed"] == 1 and other["metrics"]["train/loss"] != first["metrics"]["train/loss"]


@pytest.mark.e2e
def test_failed_job_is_recorded_and_the_sweep_goes_on(run_cli: RunCli, tmp_path: Path) -> None:
    proc = run_cli(
        "-m",
        *tiny("data.root=/nonexistent,null", "data.download=false"),
        f"out_root={tmp_path}",
        "name=faults",
        "sweep.skip_invalid=true",
    )
    assert proc.returncode == 1, show(proc)
    assert "Traceback" not in proc.stderr
    assert "warning: job data.root=/nonexistent: data.root: " in proc.stderr  # found before any job ran
    sweep = tmp_path / "faults"
    bad, good = find_job(sweep, "data.root=/nonexistent"), find_job(sweep, "data.root=null")
    failed = results(bad)
    assert failed["status"] == "failed"
    assert failed["error"].startswith("data.root: ") and "/nonexistent" in failed["error"]
    assert "\n" not in failed["error"]
    assert "Traceback" in (bad / "error.txt").read_text()
    ok = results(good)
    assert ok["status"] == "completed"
    # the failed job's W&B run was closed, so the next job logged to its own
    runs = list(good.glob(f"wandb/offline-run-*/run-{ok['wandb']['id']}.wandb"))
    assert len(runs) == 1 and "test/top1_err" in wandb_summary(runs[0])
    summary = proc.stdout[proc.stdout.index("1 job(s) did not complete:") :].splitlines()
    assert summary[1].strip().startswith(f"{bad.name}: failed: data.root: ")


@pytest.mark.e2e
def test_diverged_job_is_detected_and_the_sweep_goes_on(run_cli: RunCli, tmp_path: Path) -> None:
    proc = run_cli(
        "-m",
        *tiny("optim.lr=1e30,0.1", "trainer.check_finite_every_n_steps=1", "logger=csv"),
        f"out_root={tmp_path}",
        "name=nan",
    )
    assert proc.returncode == 1, show(proc)
    assert "Traceback" not in proc.stderr
    sweep = tmp_path / "nan"
    diverged, ok = (results(find_job(sweep, f"optim.lr={lr}")) for lr in ("1e+30", "0.1"))
    assert diverged["status"] == "diverged"
    assert re.fullmatch(r"training loss is (nan|-?inf) at step \d+ \(epoch 0\)", diverged["error"]), diverged["error"]
    assert ok["status"] == "completed"  # ran after the diverged job: Hydra keeps the overrides' order
    assert ok["started"] >= diverged["started"]
    assert "1 job(s) did not complete:" in proc.stdout and ": diverged: training loss is " in proc.stdout


@pytest.mark.e2e
def test_rerun_with_other_settings_in_a_finished_folder_is_refused(run_cli: RunCli, tmp_path: Path) -> None:
    """A named sweep's folder is fixed: a rerun with other shared settings must not skip or resume its jobs."""
    args = [*tiny("model.cardinality=1", "logger=csv"), f"out_root={tmp_path}", "name=same"]
    first = run_cli("-m", *args)
    assert first.returncode == 0, show(first)
    path = find_job(tmp_path / "same", "model.cardinality=1") / "results.json"
    before = path.read_bytes()
    proc = run_cli("-m", *args, "optim.lr=0.05")
    assert proc.returncode == 2, show(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "optim.lr=0.05" in errors[0] and "name=" in errors[0], show(proc)
    assert path.read_bytes() == before


def _kill_after_first_checkpoint(
    start_cli: Callable[..., Any], tmp_path: Path
) -> tuple[Any, list[str], Path, Path, int]:
    """Start a sweep of a 1- and a 4-epoch job and kill it once the 4-epoch job has saved a checkpoint of an
    epoch before its last: (killed process, its arguments, its folder, that checkpoint, its epoch). The sweep is frozen
    (SIGSTOP) the moment the checkpoint appears, so nothing runs while it is read; on a machine fast enough to
    save the last epoch first, it is tried again with 4x the images per epoch."""
    for images in (256, 1024, 4096, 16384):
        name = f"resume{images}"
        args = [
            "-m",
            *tiny("trainer.max_epochs=1,4", "logger=csv", f"data.limit_train={images}"),
            f"out_root={tmp_path}",
            f"name={name}",
        ]
        sweep = tmp_path / name
        proc = start_cli(*args)
        deadline = time.monotonic() + 180
        ckpt = None
        while ckpt is None and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint of the 4-epoch job within 180 s"
            time.sleep(0.02)
            for path in sweep.glob("*/checkpoints/last.ckpt"):
                if "trainer.max_epochs=4" in OmegaConf.load(path.parent.parent / ".hydra" / "overrides.yaml"):
                    ckpt = path
        if ckpt is None:  # the sweep ended before the checkpoint was seen
            continue
        os.killpg(proc.pid, signal.SIGSTOP)
        epoch = torch.load(ckpt, map_location="cpu", weights_only=False)["epoch"]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if epoch < 3:
            return proc, args, sweep, ckpt, epoch
    pytest.fail("every try saved the 4-epoch job's last epoch before it could be killed")


def test_killed_sweep_resumes_and_skips_completed_jobs(
    run_cli: RunCli, start_cli: Callable[..., Any], tmp_path: Path
) -> None:
    first, args, sweep, ckpt, saved_epoch = _kill_after_first_checkpoint(start_cli, tmp_path)
    done, killed = find_job(sweep, "trainer.max_epochs=1"), ckpt.parent.parent
    assert results(done)["status"] == "completed" and results(killed)["status"] == "running"
    done_stat, done_bytes = (done / "results.json").stat(), (done / "results.json").read_bytes()

    proc = run_cli(*args)
    assert proc.returncode == 0, show(proc)
    assert f"held by pid {first.pid}" in proc.stderr and "taken over" in proc.stderr  # the killed sweep's lock
    assert (done / "results.json").stat().st_mtime_ns == done_stat.st_mtime_ns
    assert (done / "results.json").read_bytes() == done_bytes
    assert f"skipping {done}" in proc.stderr
    r = results(killed)
    assert r["status"] == "completed" and r["resumed"] is True and r["epochs"] == 4
    assert f"resuming from {ckpt}" in proc.stderr
    # every epoch validated; those before the kill's checkpoint exactly once: training went on, not over
    val_epochs = Counter(epochs_with(csv_rows(killed), "val/top1_err"))
    assert set(val_epochs) == set(range(4))
    assert all(val_epochs[e] == 1 for e in range(saved_epoch + 1)), val_epochs
    # the best over the run's epochs, those before the resume included (a re-validated epoch counts once)
    last_val = {int(row["epoch"]): float(row["val/top1_err"]) for row in csv_rows(killed) if row["val/top1_err"]}
    assert r["metrics"]["best/val/top1_err"] == pytest.approx(min(last_val.values()))


# --- bad input, and a single run that fails: one line, non-zero exit, nothing completed ----------

#: name -> (overrides, what the one error line names). Each runs as a single run and, where it is a
#: setting, as a one-job sweep (-m): both must stop before any training with exit 2.
BAD_INPUT = {
    "unknown key": (["model.nope=1"], "model.nope"),
    "no epochs": (["trainer.max_epochs=0"], "trainer.max_epochs=0"),
    "zero lr": (["optim.lr=0"], "optim.lr=0"),
    "momentum 1.5": (["optim.momentum=1.5"], "optim.momentum=1.5: must be a number in [0, 1)"),
    "seed not an integer": (["seed=abc"], "seed='abc': must be an integer >= 0"),
    "negative seed": (["seed=-1"], "seed=-1"),
    "zero devices": (["trainer.devices=0"], "trainer.devices=0"),
    "unknown precision": (["trainer.precision=fp8"], "trainer.precision='fp8'"),
    "batch fraction above 1": (["trainer.limit_train_batches=1.5"], "trainer.limit_train_batches=1.5"),
    "progress bar not a bool": (["trainer.enable_progress_bar=maybe"], "trainer.enable_progress_bar='maybe'"),
    "deterministic not a bool": (["deterministic=3"], "deterministic=3"),
    "zero cardinality": (["model.cardinality=0"], "model.cardinality=0"),
    "zero batch": (["data.batch_size=0"], "data.batch_size=0"),
    "augment not a bool": (["data.augment=often"], "data.augment='often'"),
    "missing data": (["data.root=/nonexistent", "data.download=false"], "data.root"),
    "val_size above the data": (["data.val_size=70000"], "data.val_size=70000: must be smaller than the 60000"),
    "batch above limit_train": (["data.limit_train=10"], "data.batch_size=64: larger than the 10 training images"),
    "out_root under a file": (["out_root={file}/out"], "out_root="),
    "out_root under /proc": (["out_root=/proc/forbidden/out"], "out_root='/proc/forbidden/out'"),
    "negative bar interval": (["trainer.progress_bar_interval_s=-1"], "trainer.progress_bar_interval_s=-1"),
    "packed: no slots": (
        ["-m", "hydra/launcher=packed", "hydra.launcher.jobs_per_device=0"],
        "hydra.launcher.jobs_per_device=0",
    ),
    "packed: bad devices": (["-m", "hydra/launcher=packed", "hydra.launcher.devices=gpu"], "hydra.launcher.devices="),
    "diverging run": (["optim.lr=1e30", "trainer.check_finite_every_n_steps=1", "logger=csv"], "error: diverged: "),
}
#: Cases that are not bad settings (a run that fails), or already a sweep: run once, as given. The data and
#: model cases under -m take the path of "zero cardinality" and "missing data" (check_job), tested under -m.
SINGLE = {
    "diverging run",
    "packed: no slots",
    "packed: bad devices",
    "unknown key",
    "zero batch",
    "augment not a bool",
    "out_root under a file",
}
CASES = [(name, False) for name in BAD_INPUT] + [(name, True) for name in BAD_INPUT if name not in SINGLE]
#: The fast layer's cases (`make test`): one of each kind (a setting, the data, the output folder, a run that
#: fails), as a single run and as a sweep; `make test-all` runs every case.
FAST_CASES = {("zero lr", False), ("zero lr", True), ("missing data", True), ("out_root under a file", False),
              ("diverging run", False)}  # fmt: skip


@pytest.fixture(scope="module")
def bad_runs(
    wandb_home: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[tuple[str, bool], Any]:
    """Every bad-input run that a selected test checks (the layer's, -k's), two at a time (they mostly wait on
    imports); each test checks one of them."""
    selected = {
        (item.callspec.params["case"], item.callspec.params["sweep"])
        for item in request.session.items
        if "bad_runs" in getattr(item, "fixturenames", ()) and hasattr(item, "callspec")
    }
    from concurrent.futures import ThreadPoolExecutor

    base = tmp_path_factory.mktemp("bad")
    (base / "file").write_text("not a folder")

    def run(case: tuple[str, bool]) -> tuple[tuple[str, bool], Any]:
        name, sweep = case
        args = [o.format(file=base / "file") for o in BAD_INPUT[name][0]]
        out_root = next((a.split("=", 1)[1] for a in args if a.startswith("out_root=")), None)
        if out_root is None:
            out_root = str(base / f"{name.replace(' ', '_')}{'-m' if sweep else ''}")
            args.append(f"out_root={out_root}")
        flags = [a for a in args if a.startswith("-")] + (["-m"] if sweep else [])  # -m goes first
        args = [a for a in args if not a.startswith("-")]
        proc = subprocess.run(
            [sys.executable, "run.py", *flags, *tiny(*args)],
            cwd=ROOT,
            env=cli_env(wandb_home),
            capture_output=True,
            text=True,
            timeout=300,
        )
        return case, (proc, Path(out_root))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run, [case for case in CASES if case in selected]))


@pytest.mark.parametrize(
    ("case", "sweep"),
    [pytest.param(n, m, id=f"{n}{' -m' if m else ''}", marks=() if (n, m) in FAST_CASES else pytest.mark.e2e)
     for n, m in CASES],
)  # fmt: skip
def test_bad_input_gives_one_line_and_fails(bad_runs: dict[tuple[str, bool], Any], case: str, sweep: bool) -> None:
    proc, out_root = bad_runs[(case, sweep)]
    setting = BAD_INPUT[case][1]
    assert proc.returncode == (1 if case in ("diverging run", "unknown key") else 2), show(proc)  # 1: Hydra's own
    assert "Traceback" not in proc.stderr, show(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if case == "unknown key":  # Hydra's own message, short
        assert setting in lines[0] and len(lines) <= 8, show(proc)
        return
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and setting in errors[0], show(proc)
    if case != "diverging run":  # stopped before any job: nothing trained, no job folder
        assert not list(out_root.rglob("results.json")), show(proc)
        assert not (out_root / "runs").exists() and not (out_root / "sweeps").exists(), show(proc)


@pytest.mark.e2e
def test_a_sweep_with_an_invalid_job_runs_nothing(run_cli: RunCli, tmp_path: Path) -> None:
    """Every job is composed and validated first: one line per invalid job, exit 2, nothing trained."""
    proc = run_cli("-m", *tiny("model.cardinality=0,1,-2"), f"out_root={tmp_path}", "name=invalid")
    assert proc.returncode == 2, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: job model.cardinality=0: model.cardinality=0: must be an integer >= 1",
        "error: job model.cardinality=-2: model.cardinality=-2: must be an integer >= 1",
    ], show(proc)
    assert "2 of 3 job(s) invalid, nothing was run" in proc.stderr
    assert not (tmp_path / "invalid").exists()

    proc = run_cli("-m", *tiny("optim.lr=-1", "model.cardinality=1,2"), f"out_root={tmp_path}", "name=all_invalid")
    assert proc.returncode == 2 and "2 of 2 job(s) invalid" in proc.stderr, show(proc)
    assert not (tmp_path / "all_invalid").exists()


# --- the optimiser ---------------------------------------------------------------------------------------------


def lr_factors(optim: OptimSettings, max_epochs: int, epochs: tuple[float, ...], per_epoch: int = 10) -> list[float]:
    """The schedule's lr over the base lr at each of `epochs`, stepped per optimiser step as training does."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = schedule(opt, optim, per_epoch, max_epochs)
    factors = [opt.param_groups[0]["lr"]]
    for _ in range(max_epochs * per_epoch):
        opt.step()
        scheduler.step()
        factors.append(opt.param_groups[0]["lr"])
    return [factors[round(e * per_epoch)] for e in epochs]


def test_step_schedule_divides_at_milestones() -> None:
    optim = OptimSettings(schedule="step", milestones=(30, 60, 90), gamma=0.1)
    factors = lr_factors(optim, 100, (0, 29.9, 30, 59, 60, 90, 99))
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.001, 0.001])


def test_cosine_schedule_and_warmup() -> None:
    cosine = OptimSettings(schedule="cosine")
    assert lr_factors(cosine, 10, (0, 5, 10)) == pytest.approx([1, 0.5, 0])
    warm = OptimSettings(schedule="cosine", warmup_epochs=2, warmup_start=0.1)
    assert lr_factors(warm, 12, (0, 1, 2, 7, 12)) == pytest.approx([0.1, 0.55, 1, 0.5, 0])
    step = OptimSettings(schedule="step", milestones=(3,), warmup_epochs=1, warmup_start=0.0)
    assert lr_factors(step, 5, (0, 0.5, 1, 3)) == pytest.approx([0, 0.5, 1, 0.1])
    assert lr_factors(OptimSettings(schedule="constant"), 5, (3,)) == [1]


def test_no_decay_for_bn_and_biases() -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    groups = param_groups(net, OptimSettings(weight_decay=5e-4, no_decay_bn_bias=True))
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert [tuple(p.shape) for p in groups[0]["params"]] == [(4, 1, 3, 3), (2, 4)]
    assert len(groups[1]["params"]) == 4  # conv bias, BN weight and bias, fc bias
    everything = param_groups(net, OptimSettings(weight_decay=5e-4))
    assert len(everything) == 1 and len(everything[0]["params"]) == 6


def test_lr_scales_with_the_global_batch() -> None:
    assert scaled_lr(OptimSettings(lr=0.1), 512) == 0.1
    assert scaled_lr(OptimSettings(lr=0.1, scale_lr=True, base_batch_size=256), 512) == pytest.approx(0.2)
    dm = build_datamodule({"name": "fashion_mnist", "batch_size": 32})
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    optim = {
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "scale_lr": True,
        "base_batch_size": 256,
        "schedule": "step",
        "milestones": [1],
        "warmup_epochs": 0,
    }
    module = ClassificationModule(net, optim, num_classes=10)
    module.trainer = SimpleNamespace(world_size=4, datamodule=dm, max_epochs=2, estimated_stepping_batches=20)
    configured = module.configure_optimizers()
    opt, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 4 * 32 / 256)
    for _ in range(10):  # one epoch of steps: the milestone
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 4 * 32 / 256 * 0.1)


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"lr": 0}, "optim.lr"),
        ({"lr": True}, "optim.lr"),
        ({"momentum": -1}, "optim.momentum"),
        ({"schedule": "linear"}, "optim.schedule"),
        ({"milestones": [60, 30]}, "optim.milestones"),
        ({"gamma": 0}, "optim.gamma"),
        ({"warmup_start": 2}, "optim.warmup_start"),
        ({"base_batch_size": 0}, "optim.base_batch_size"),
        ({"momentum": 0, "nesterov": True}, "optim.nesterov"),
        ({"momentum": 1.0}, "optim.momentum"),
        ({"weight_decay": "none"}, "optim.weight_decay"),
    ],
)
def test_bad_optim_settings_are_named(change: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError, match=f"^{setting}="):
        parse(OptimSettings, change, "optim")


def test_loss_checks_raise_diverged() -> None:
    from resnext_lab.module import Diverged

    module = ClassificationModule(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)), {"lr": 0.1}, 3, check_finite_every_n_steps=1
    )
    module.log = lambda *a, **k: None  # no trainer to log to
    with torch.no_grad():
        module.net[1].weight.fill_(math.inf)
    batch = (torch.ones(2, 1, 2, 2), torch.tensor([0, 1]))
    module.trainer = SimpleNamespace(global_step=0, current_epoch=0)  # type: ignore[assignment]
    with pytest.raises(Diverged, match="training loss is nan at step 0"):
        module.training_step(batch, 0)
    # between checked steps, the epoch's mean loss is checked at its end
    module.metrics["train_"].reset()
    module.metrics["train_"].update(torch.zeros(2, 3), torch.tensor([0, 1]), torch.tensor(math.inf))
    module.trainer = SimpleNamespace(current_epoch=3)  # type: ignore[assignment]
    with pytest.raises(Diverged, match="training loss is inf at the end of epoch 3"):
        module.on_train_epoch_end()


@pytest.mark.parametrize("classes", [10, 3])
def test_epoch_errors_agree_with_torchmetrics(classes: int) -> None:
    """Top-1/top-k errors as torchmetrics' micro accuracy counts them, ties included; the loss weighted by batch."""
    from torchmetrics.classification import MulticlassAccuracy

    from resnext_lab.module import EpochErrors

    gen = torch.Generator().manual_seed(0)
    top_k = min(5, classes)
    ours = EpochErrors(top_k)
    refs = [MulticlassAccuracy(classes, top_k=k, average="micro") for k in (1, top_k)]
    losses, sizes = [], []
    for size in (7, 64, 1):
        logits = torch.randint(0, 4, (size, classes), generator=gen).float()  # many ties
        target = torch.randint(0, classes, (size,), generator=gen)
        loss = F.cross_entropy(logits, target)
        ours.update(logits, target, loss)
        for ref in refs:
            ref.update(logits, target)
        losses.append(float(loss) * size)
        sizes.append(size)
    got = ours.compute()
    assert float(got["top1_err"]) == pytest.approx(100 * (1 - float(refs[0].compute())), abs=1e-4)
    assert float(got["top5_err"]) == pytest.approx(100 * (1 - float(refs[1].compute())), abs=1e-4)
    assert float(got["loss"]) == pytest.approx(sum(losses) / sum(sizes), rel=1e-6)
    assert float(got["top1_err"]) > float(got["top5_err"])  # the two counts differ


class _Linear(pl.LightningModule):
    """The smallest trainable LightningModule, for tests of callbacks."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.lin(batch[0]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_throughput_leaves_out_the_validation_inside_the_epoch() -> None:
    """Lightning validates inside the training epoch; images/s must describe training alone."""
    import time

    from resnext_lab.callbacks import Throughput

    class SlowValidation(_Linear):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            time.sleep(0.5)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2), torch.zeros(8)), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[Throughput()],
    )
    trainer.fit(SlowValidation(), data, data)
    seconds = trainer.callback_metrics["perf/epoch_time_s"].item()
    assert 0 < seconds < 1.0  # the two validation batches alone sleep 1 s: counted, they would make it 1 s or more
    assert trainer.callback_metrics["perf/images_per_s"].item() == pytest.approx(8 / seconds, rel=1e-3)


@pytest.mark.parametrize(("interval_s", "shown_mid_epoch"), [(3600.0, 1), (0.0, 10)])
def test_progress_bar_redraws_at_most_every_interval(interval_s: float, shown_mid_epoch: int) -> None:
    """After 10 of 20 steps the bar shows step 10 when redrawn every step, still step 1 with an hour's interval."""

    from resnext_lab.callbacks import TimedProgressBar

    shown: dict[int, int] = {}

    class Look(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            shown[args[-1]] = trainer.progress_bar_callback.train_progress_bar.n

    bar = TimedProgressBar(interval_s)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(20, 2)), batch_size=1)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[bar, Look()],
    )
    trainer.fit(_Linear(), data)
    assert shown[9] == shown_mid_epoch
    assert shown[19] == 20  # the last step is always drawn


def test_precision_auto_is_bf16_where_the_cpu_computes_it_natively(monkeypatch: pytest.MonkeyPatch) -> None:
    """The capability query is torch's own (private) one: if it changes, this test says so."""
    from resnext_lab.hardware import native_bf16_cpu, resolve_precision

    assert isinstance(torch.cpu._is_amx_tile_supported(), bool)
    assert isinstance(torch.cpu._is_avx512_bf16_supported(), bool)
    assert native_bf16_cpu() in (None, "AMX", "AVX512-BF16")
    for amx, avx512_bf16, expected in (
        (False, False, "32-true"),
        (False, True, "bf16-mixed"),
        (True, False, "bf16-mixed"),
    ):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        precision, why = resolve_precision("auto", cuda=False)
        assert precision == expected and why.startswith("auto: ")
        assert resolve_precision("32-true", cuda=False) == ("32-true", "set by trainer.precision")  # explicit wins
        assert resolve_precision("auto", cuda=True)[0] == "bf16-mixed"


def test_best_validation_error_is_the_lowest_epoch_and_survives_a_resume(tmp_path: Path) -> None:
    """The module tracks best/val/top1_err; the sanity check does not count; a checkpoint carries it."""
    from resnext_lab.module import ClassificationModule

    def module() -> ClassificationModule:
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        return ClassificationModule(net, {"lr": 0.5, "schedule": "constant"}, num_classes=3)

    x, y = torch.randn(48, 4), torch.arange(48) % 3
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    seen: list[float] = []

    class Look(pl.Callback):
        def on_validation_end(self, trainer: pl.Trainer, *args: Any) -> None:
            if not trainer.sanity_checking:
                seen.append(float(trainer.callback_metrics["val/top1_err"]))

    trainer = pl.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Look()],
    )
    first = module()
    trainer.fit(first, data, data)
    assert len(seen) == 4
    assert float(trainer.callback_metrics["best/val/top1_err"]) == pytest.approx(min(seen))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    resumed = module()
    resumed.load_state_dict(torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"])
    assert float(resumed.best_val.min_value) == pytest.approx(min(seen))
    old = torch.load(tmp_path / "last.ckpt", weights_only=False)  # as written before the module tracked it
    old["state_dict"] = {k: v for k, v in old["state_dict"].items() if not k.startswith("best_val.")}
    fresh = module()
    fresh.on_load_checkpoint(old)
    fresh.load_state_dict(old["state_dict"])  # strict: the missing state was filled in
    assert math.isinf(float(fresh.best_val.min_value))
