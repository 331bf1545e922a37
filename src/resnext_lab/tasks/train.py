"""task=train: one run from a composed config to results.json.

A job never takes its sweep down: every exception is recorded in results.json
(status failed, or diverged for a NaN/inf loss) and, inside a multirun, the job
returns so the launcher goes on; the sweep's summary exits non-zero at the end.
A completed job is skipped when the sweep runs again; an interrupted one resumes
from its last checkpoint (saved every epoch).
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from resnext_lab import interrupts, prereg, provenance, results
from resnext_lab.callbacks import (
    AtomicCheckpointIO,
    EpochLogInterval,
    LastCheckpoint,
    StopOnSignal,
    Throughput,
    TimedProgressBar,
    csv_logger,
    ctrl_c_as_interrupt,
    quiet,
)
from resnext_lab.errors import ConfigError, fail, first_line, stop
from resnext_lab.files import output_fault
from resnext_lab.hardware import process_rank, resolve_precision
from resnext_lab.job import check_job
from resnext_lab.models import build
from resnext_lab.module import ClassificationModule, Diverged
from resnext_lab.overrides import check_same_job
from resnext_lab.tracking import finish_wandb, tensorboard_logger, wandb_group, wandb_logger

log = logging.getLogger("resnext_lab")

CHECKPOINT = "checkpoints/last.ckpt"


class RunFailed(Exception):
    """A single run failed or diverged: run.py prints this one line (the traceback is in error.txt)."""


def _auto(value: Any, default: Any) -> Any:
    return default if value == "auto" else value


# --- the run -------------------------------------------------------------------------------------


def _in_multirun() -> bool:
    return (
        HydraConfig.initialized() and HydraConfig.get().mode is not None and HydraConfig.get().mode.name == "MULTIRUN"
    )


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()


def train_task(cfg: DictConfig) -> dict[str, Any]:
    """One job: skip it if done, else build, fit and test it; results.json says how it went at every step.

    Settings are checked before Hydra starts the job (sweep.OutputFolder) and again here (job.check_job),
    inside the bookkeeping, so that a job that runs with a bad setting (sweep.skip_invalid) is recorded.
    Two things end the whole run or sweep at once, in one line, the job recorded as interrupted (resumable):
    an output folder that cannot be written (exit 2: the jobs after it could not write either) and
    SIGINT or SIGTERM (exit 130 or 143).
    """
    run_dir = _run_dir()
    with interrupts.job_running():
        try:
            return _train(cfg, run_dir)
        except OSError as err:  # before the job's own bookkeeping: its folder, its earlier results.json
            _stop_if_unwritable(err, run_dir)
            raise


def _train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    rank = process_rank()  # ranks > 0 train but write nothing: see process_rank
    previous = results.load(run_dir)
    declared = prereg.job_record(cfg, HydraConfig.get()) if HydraConfig.initialized() else None
    if previous and cfg.resume is True:
        reusable = previous.get("status") == "completed" or (run_dir / CHECKPOINT).exists()
        check_same_job(previous, _overrides(), run_dir, reusable)
        if reusable and (other := prereg.other_settings(previous, declared)):
            fail(
                f"{run_dir} holds a run of other settings ({other}): its results stand; run this sweep with another out_root=..."
            )
        if previous.get("status") == "completed":
            log.info("skipping %s: completed before (%s)", run_dir, results.FILE)
            return previous
    git = provenance.git_state()
    if rank == 0:  # a dirty tree's diff, once in the sweep's folder
        provenance.save_diff(git, Path(HydraConfig.get().sweep.dir) if _in_multirun() else run_dir)
    base = {
        "status": "running",
        "error": None,
        "overrides": _overrides(),
        "experiment": cfg.get("experiment_name"),
        "scale": cfg.get("scale_name"),
        "seed": cfg.seed,
        "stacked": None,  # a lone job; a stacked one says with which seeds (tasks/train_stack.py)
        "task": "train",
        "versions": results.versions(),
        **git.record(),
        "prereg": declared,
        "placement": results.placement(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    start = time.perf_counter()
    outcome: dict[str, Any] = {}  # filled by _fit as it goes, so a failure keeps what was known

    def record(status: str, error: str | None) -> dict[str, Any]:
        result = {
            **base,
            **outcome,
            "status": status,
            "error": error,
            "wall_time_s": round(time.perf_counter() - start, 2),
        }
        if rank == 0:
            results.write(run_dir, result)
        return result

    try:
        job = check_job(cfg)
        job.datamodule.shuffle_seed = job.settings.run.seed
        model_info = job.model_info()
        base["model"] = model_info
        if rank == 0:
            results.write(run_dir, base)
        _fit(cfg, run_dir, job, model_info, outcome)
        status, error = "completed", None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: recorded, resumable, and the run ends (interrupts.py)
        _interrupted(run_dir, record)
    except Exception as err:  # recorded, never lost: see the module docstring
        if interrupts.pending():  # the signal's interrupt came out as another error (raised inside a library)
            _interrupted(run_dir, record)
        _stop_if_unwritable(err, run_dir, lambda why: record("interrupted", why))
        status = "diverged" if isinstance(err, Diverged) else "failed"
        error = error_text(err)
        finish_wandb(exit_code=1)
        error_file = run_dir / ("error.txt" if rank == 0 else f"error.rank{rank}.txt")
        error_file.write_text(traceback.format_exc())
        record(status, error)
        if not _in_multirun():  # run.py prints the one line and exits non-zero
            if isinstance(err, ConfigError):
                raise
            raise RunFailed(f"{status}: {error} (traceback in {error_file})") from err
        log.error("%s: %s", status, error)
    result = record(status, error)
    if rank == 0 and status == "completed":
        print_summary(result, run_dir)
    return result


def _interrupted(run_dir: Path, record: Callable[[str, str | None], Any]) -> NoReturn:
    """Record the job as interrupted (resumable) and end the run or sweep with the signal's status."""
    with contextlib.suppress(OSError):  # a full disk must not hide the interrupt
        record("interrupted", f"interrupted by {interrupts.name()}")
    with contextlib.suppress(Exception):  # nor a W&B service that is gone (a signal to every process killed it)
        finish_wandb(exit_code=255)
    stop(
        f"interrupted ({interrupts.name()}): job {run_dir} is resumable: {_how_to_resume(run_dir)} to resume it "
        "from its last checkpoint",
        interrupts.status(),
    )


def _stop_if_unwritable(err: BaseException, run_dir: Path, record: Any = None) -> None:
    """End the run in one line (exit 2) when `err` means that the job's folder cannot be written: the disk
    is full, a quota, read-only, removed. What was written stays; the job is recorded as interrupted where
    anything can still be written, so that the same command resumes it."""
    fault = output_fault(err, run_dir)
    if fault is None:
        return
    why, remedy = fault
    with contextlib.suppress(Exception):  # W&B and results.json may not be writable either
        finish_wandb(exit_code=1)
    if record is not None:
        with contextlib.suppress(OSError):
            record(f"{why}: {error_text(err)}")
    fail(
        f"{why}: cannot write {run_dir}; what was written is kept and the job is resumable: {remedy}, then "
        f"{_how_to_resume(run_dir)}"
    )


def _how_to_resume(run_dir: Path) -> str:
    """A sweep's folder is named after its overrides, so the same command finds the job; a single run's is
    named after the time it started, so its folder must be given."""
    if _in_multirun():
        return "run the same command again"
    return f"run the same command again with hydra.run.dir={run_dir}"


def error_text(err: BaseException) -> str:
    """The error as results.json and the sweep table show it: user errors as worded, others with their type."""
    text = first_line(err)
    if isinstance(err, ConfigError | Diverged) or text == type(err).__name__:
        return text
    return f"{type(err).__name__}: {text}"


def _fit(cfg: DictConfig, run_dir: Path, job: Any, model_info: dict[str, Any], outcome: dict[str, Any]) -> None:
    """Train, validate and test; `outcome` gets resumed, metrics, epochs and the W&B run as they become known."""
    run, t, logger = job.settings.run, job.settings.trainer, job.settings.logger
    pl.seed_everything(run.seed, workers=True, verbose=False)
    cuda = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
    precision, why = resolve_precision(t.precision, cuda)
    outcome["precision"] = {"used": precision, "why": why}
    channels_last = bool(_auto(t.channels_last, True))  # faster on CPUs too: docs/PERFORMANCE.md
    benchmark = bool(_auto(t.benchmark, cuda and not run.deterministic))
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    spec, dm = job.spec, job.datamodule
    net = build(spec)
    if t.compile:
        net = torch.compile(net)
    module = ClassificationModule(
        net, job.settings.optim, spec.num_classes, channels_last, t.check_finite_every_n_steps
    )
    log.info(
        "%s | %s params | %s GFLOPs | %s",
        spec.name,
        f"{model_info['params']:,}",
        f"{model_info['flops'] / 1e9:.3f}",
        dm.describe(),
    )
    log.info("precision %s (%s)", precision, why)

    last = run_dir / CHECKPOINT
    resume_from, set_aside = resume_point(run_dir) if run.resume else (None, [])
    resumed = resume_from is not None
    if resumed or set_aside:
        outcome["checkpoint"] = {
            "resumed_from": str(resume_from.relative_to(run_dir)) if resumed else None,
            "set_aside": set_aside,
        }
    loggers: list[Any] = [csv_logger(run_dir, keep_rows=resumed)] if logger.csv else []
    if logger.tensorboard:
        loggers.append(tensorboard_logger(run_dir))
    wl, wandb_info = None, None
    if logger.wandb.enabled:
        group = wandb_group(cfg, HydraConfig.get().sweep.dir if _in_multirun() else None)
        name = run_dir.name if _in_multirun() else None
        wl, wandb_info = wandb_logger(OmegaConf.to_container(cfg, resolve=True), run_dir, logger.wandb, group, name)
    if wl is not None:
        loggers.append(wl)
        outcome["wandb"] = wandb_info
    quiet()
    trainer = _trainer(t, run.deterministic, run_dir, precision, benchmark, loggers)
    if resumed:
        log.info("resuming from %s", resume_from)
    elif set_aside:
        log.info("starting again: no checkpoint of %s loads", run_dir)
    outcome.update(resumed=resumed, metrics_csv="csv/metrics.csv" if logger.csv else None)
    with ctrl_c_as_interrupt(trainer):
        # our own checkpoint, written by this job: it holds the loops' and optimiser's state, not only weights
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume_from) if resumed else None, weights_only=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        trainer.test(module, datamodule=dm, verbose=False)
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    epochs = int(trainer.current_epoch)
    if epochs == 0 and last.exists():  # ddp_spawn trains in child processes: this Trainer never counted epochs
        epochs = int(torch.load(last, map_location="cpu", weights_only=False, mmap=True)["epoch"]) + 1
    outcome.update(metrics=metrics, epochs=epochs)
    if wandb_info is not None and trainer.is_global_zero:
        wandb_run = wl.experiment
        wandb_run.summary.update(
            {
                **metrics,
                **{
                    f"model/{k}": model_info[k]
                    for k in ("params", "flops", "cardinality", "width", "depth", "residual", "block")
                },
            }
        )
        wandb_info["dir"] = str(Path(wandb_run.dir).parent)
        wandb_run.finish()


def resume_point(run_dir: Path) -> tuple[Path | None, list[dict[str, str]]]:
    """The newest checkpoint of the job that loads, and each one that does not, moved aside (kept, never
    deleted) to `checkpoints/set-aside/` so that no rerun trips on it again: [{path, error}], paths relative
    to `run_dir`. (None, ...) when none loads: the job starts again."""
    folder = run_dir / Path(CHECKPOINT).parent
    set_aside: list[dict[str, str]] = []
    for path in sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            torch.load(path, map_location="cpu", weights_only=False)  # our own file: see _fit
            return path, set_aside
        except Exception as err:  # torn, truncated, or not a checkpoint at all: whatever torch says
            aside = folder / "set-aside" / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}"
            aside.parent.mkdir(exist_ok=True)
            path.replace(aside)
            error = error_text(err)
            log.warning("%s does not load (%s): moved to %s", path, error, aside)
            set_aside.append({"path": str(aside.relative_to(run_dir)), "error": error})
    return None, set_aside


def _trainer(
    t: Any,
    deterministic: bool,
    run_dir: Path,
    precision: str,
    benchmark: bool,
    loggers: list[Any],
    last: pl.Callback | None = None,
) -> Any:
    """The Lightning Trainer of the `trainer` settings, with our callbacks and no checkpointing of its own.

    `last`: what saves the checkpoint a rerun resumes from (LastCheckpoint of the run's folder by default)."""
    bar = [TimedProgressBar(t.progress_bar_interval_s)] if t.enable_progress_bar else []
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=list(t.devices) if isinstance(t.devices, tuple) else t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        sync_batchnorm=t.sync_batchnorm,
        max_epochs=t.max_epochs,
        precision=precision,
        benchmark=benchmark,
        deterministic=deterministic,
        log_every_n_steps=t.log_every_n_steps,
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
        limit_test_batches=t.limit_test_batches,
        gradient_clip_val=t.gradient_clip_val,
        enable_progress_bar=t.enable_progress_bar,
        enable_model_summary=False,
        enable_checkpointing=False,  # LastCheckpoint writes the one checkpoint a rerun needs
        logger=loggers or False,
        callbacks=[
            last or LastCheckpoint(run_dir / CHECKPOINT),
            Throughput(),
            EpochLogInterval(),
            StopOnSignal(),
            *bar,
        ],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )


def print_summary(result: dict[str, Any], run_dir: Path) -> None:
    m, model = result.get("metrics", {}), result.get("model", {})
    w = result.get("wandb") or {}
    lines = [
        f"{model.get('name')}: test top-1 error {m.get('test/top1_err', float('nan')):.2f}%, "
        f"top-5 error {m.get('test/top5_err', float('nan')):.2f}%",
        f"  params {model.get('params', 0):,}  FLOPs {model.get('flops', 0) / 1e9:.3f} G  "
        f"epochs {result.get('epochs')}  wall time {result.get('wall_time_s', 0):.1f} s",
        f"  output {run_dir}",
    ]
    if w:
        lines.append(
            f"  W&B run {w.get('id')} ({w.get('mode')}): {w.get('dir')}"
            + ("  (upload: wandb sync DIR)" if w.get("mode") == "offline" else "")
        )
    print("\n".join(lines), flush=True)
