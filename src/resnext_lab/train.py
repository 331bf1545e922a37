"""task=train: one run from a composed config to results.json.

A job never takes its sweep down: every exception is recorded in results.json
(status failed, or diverged for a NaN/inf loss) and, inside a multirun, the job
returns so the launcher goes on; the sweep's summary exits non-zero at the end.
A completed job is skipped when the sweep runs again; an interrupted one resumes
from its last checkpoint (saved every epoch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from resnext_lab import interrupts, results
from resnext_lab.errors import ConfigError, first_line

log = logging.getLogger("resnext_lab")

CHECKPOINT = "checkpoints/last.ckpt"


class RunFailed(Exception):
    """A single run failed or diverged: run.py prints this one line (the traceback is in error.txt)."""


def _auto(value: Any, default: Any) -> Any:
    return default if value == "auto" else value


# --- the run -------------------------------------------------------------------------------------


def _sweep_group(cfg: DictConfig) -> str:
    from hydra.core.hydra_config import HydraConfig

    from resnext_lab.sweep import wandb_group

    hc = HydraConfig.get()
    multirun = hc.mode is not None and hc.mode.name == "MULTIRUN"
    return wandb_group(cfg, hc.sweep.dir if multirun else None)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return (
        HydraConfig.initialized() and HydraConfig.get().mode is not None and HydraConfig.get().mode.name == "MULTIRUN"
    )


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path.cwd()


def process_rank() -> int:
    """This process's global rank, known before any Trainer exists; 0 when it runs alone.

    Under DDP every rank runs this task: `strategy=ddp` re-runs the command line for ranks > 0 (LOCAL_RANK)
    and SLURM starts one task per device (SLURM_PROCID). Only rank 0 writes results.json, wandb_id and the
    summary; Lightning keeps checkpoints, the CSV log and the W&B run on rank 0 itself.
    """
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


def build_run(cfg: DictConfig) -> tuple[Any, dict[str, Any]]:
    """Validate everything and build the data module and spec (nothing trains yet): the job, and what
    results.json says of its model."""
    from resnext_lab.config import check_job
    from resnext_lab.models import complexity

    job = check_job(cfg)
    job.datamodule.shuffle_seed = job.settings.run.seed
    spec = job.spec
    model_info = {**spec.summary(), **complexity(spec)}
    if cfg.model.get("width") == "auto":  # what the width was solved against: the report's complexity check
        ref = dict(cfg.model.get("reference") or {})
        ref_spec = dataclasses.replace(
            spec, cardinality=int(ref.get("cardinality", 1)), width=int(ref.get("width", 64))
        )
        model_info["reference"] = {
            "cardinality": ref_spec.cardinality,
            "width": ref_spec.width,
            "match": str(cfg.model.get("match", "params")),
            **complexity(ref_spec),
        }
    return job, model_info


def train_task(cfg: DictConfig) -> dict[str, Any]:
    """One job: skip it if done, else build, fit and test it; results.json says how it went at every step.

    Settings are checked before Hydra starts the job (sweep.OutputFolder) and again in build_run,
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
    if previous and cfg.resume is True:
        from resnext_lab.sweep import check_same_job

        reusable = previous.get("status") == "completed" or (run_dir / CHECKPOINT).exists()
        check_same_job(previous, _overrides(), run_dir, reusable)
        if previous.get("status") == "completed":
            log.info("skipping %s: completed before (%s)", run_dir, results.FILE)
            return previous
    base = {
        "status": "running",
        "error": None,
        "overrides": _overrides(),
        "experiment": cfg.get("experiment_name"),
        "scale": cfg.get("scale_name"),
        "seed": cfg.seed,
        "task": "train",
        "versions": results.versions(),
        "git_commit": results.git_commit(),
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
        job, model_info = build_run(cfg)
        base["model"] = model_info
        if rank == 0:
            results.write(run_dir, base)
        _fit(cfg, run_dir, job, model_info, outcome)
        status, error = "completed", None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: recorded, resumable, and the run ends (interrupts.py)
        _finish_wandb(exit_code=255)
        with contextlib.suppress(OSError):  # a full disk must not hide the interrupt
            record("interrupted", f"interrupted by {interrupts.name()}")
        from resnext_lab.errors import stop

        stop(
            f"interrupted ({interrupts.name()}): job {run_dir} is resumable: {_how_to_resume(run_dir)} to resume it "
            "from its last checkpoint",
            interrupts.status(),
        )
    except Exception as err:  # recorded, never lost: see the module docstring
        from resnext_lab.module import Diverged

        _stop_if_unwritable(err, run_dir, lambda why: record("interrupted", why))
        status = "diverged" if isinstance(err, Diverged) else "failed"
        error = one_line(err)
        _finish_wandb(exit_code=1)
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


def _stop_if_unwritable(err: BaseException, run_dir: Path, record: Any = None) -> None:
    """End the run in one line (exit 2) when `err` means that the job's folder cannot be written: the disk
    is full, a quota, read-only, removed. What was written stays; the job is recorded as interrupted where
    anything can still be written, so that the same command resumes it."""
    from resnext_lab.errors import fail
    from resnext_lab.files import output_fault

    fault = output_fault(err, run_dir)
    if fault is None:
        return
    why, remedy = fault
    with contextlib.suppress(Exception):  # W&B and results.json may not be writable either
        _finish_wandb(exit_code=1)
    if record is not None:
        with contextlib.suppress(OSError):
            record(f"{why}: {one_line(err)}")
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


def one_line(err: BaseException) -> str:
    """The error as results.json and the sweep table show it: user errors as worded, others with their type."""
    from resnext_lab.module import Diverged

    text = first_line(err)
    if isinstance(err, ConfigError | Diverged) or text == type(err).__name__:
        return text
    return f"{type(err).__name__}: {text}"


def _finish_wandb(exit_code: int) -> None:
    """Close a W&B run left open by a failed job, or the next job of the sweep would log into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def _fit(cfg: DictConfig, run_dir: Path, job: Any, model_info: dict[str, Any], outcome: dict[str, Any]) -> None:
    """Train, validate and test; `outcome` gets resumed, metrics, epochs and the W&B run as they become known."""
    import pytorch_lightning as pl
    import torch

    from resnext_lab.hardware import resolve_precision
    from resnext_lab.models import build
    from resnext_lab.module import ClassificationModule

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
    loggers: list[Any] = [_csv_logger(run_dir, keep_rows=resumed)] if logger.csv else []
    wl, wandb_info = _wandb_logger(cfg, run_dir, logger.wandb) if logger.wandb.enabled else (None, None)
    if wl is not None:
        loggers.append(wl)
        outcome["wandb"] = wandb_info
    _quiet()
    trainer = _trainer(t, run.deterministic, run_dir, precision, benchmark, loggers)
    if resumed:
        log.info("resuming from %s", resume_from)
    elif set_aside:
        log.info("starting again: no checkpoint of %s loads", run_dir)
    outcome.update(resumed=resumed, metrics_csv="csv/metrics.csv" if logger.csv else None)
    with _ctrl_c_as_interrupt(trainer):
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
        import wandb

        wandb.finish()


def resume_point(run_dir: Path) -> tuple[Path | None, list[dict[str, str]]]:
    """The newest checkpoint of the job that loads, and each one that does not, moved aside (kept, never
    deleted) to `checkpoints/set-aside/` so that no rerun trips on it again: [{path, error}], paths relative
    to `run_dir`. (None, ...) when none loads: the job starts again."""
    import torch

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
            error = one_line(err)
            log.warning("%s does not load (%s): moved to %s", path, error, aside)
            set_aside.append({"path": str(aside.relative_to(run_dir)), "error": error})
    return None, set_aside


#: Known-harmless messages that every job would print, by their exact text. Anything else still shows.
_HARMLESS_WARNINGS = (
    # Lightning 2.6's own pytree helper, at every step, against torch >= 2.10
    (
        FutureWarning,
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
        "treespec.is_leaf()` instead.",
    ),
)
#: Lightning's lines on Ctrl-C and SIGTERM: the run's own one line (interrupts.py) says what happened and what to do.
_REPLACED_LOG_LINES = ("Received SIGTERM: ", "Detected KeyboardInterrupt, attempting graceful shutdown")


class _Replaced(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(line in str(record.msg) for line in _REPLACED_LOG_LINES)


def _quiet() -> None:
    """Filter the known-harmless messages, each by its exact text (set once per process; filters do not pile up)."""
    import re
    import warnings

    for category, message in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.trainer.connectors.signal_connector"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _Replaced) for f in target.filters):
            target.addFilter(_Replaced())


def _wandb_logger(cfg: DictConfig, run_dir: Path, w: Any) -> tuple[Any, dict[str, Any]]:
    """The run's WandbLogger (resuming the run id kept in `wandb_id`) and what results.json says of it."""
    from pytorch_lightning.loggers import WandbLogger

    from resnext_lab.tracking import wandb_mode

    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
    if process_rank() == 0:  # WandbLogger starts no run on other ranks; their id would clobber this one
        id_file.write_text(run_id)
    mode = wandb_mode(w.mode)
    logger = WandbLogger(
        project=w.project,
        entity=w.entity,
        group=_sweep_group(cfg),
        name=run_dir.name if _in_multirun() else None,
        tags=list(w.tags),
        job_type=w.job_type,
        save_dir=str(run_dir),
        id=run_id,
        resume="allow",
        mode=mode,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    return logger, {"id": run_id, "mode": mode, "project": w.project}


def _trainer(t: Any, deterministic: bool, run_dir: Path, precision: str, benchmark: bool, loggers: list[Any]) -> Any:
    """The Lightning Trainer of the `trainer` settings, with our callbacks and no checkpointing of its own."""
    import pytorch_lightning as pl

    from resnext_lab.callbacks import AtomicCheckpointIO, EpochLogInterval, LastCheckpoint, Throughput, TimedProgressBar

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
        callbacks=[LastCheckpoint(run_dir / CHECKPOINT), Throughput(), EpochLogInterval(), *bar],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )


@contextlib.contextmanager
def _ctrl_c_as_interrupt(trainer: Any) -> Iterator[None]:
    """Lightning turns Ctrl-C into `sys.exit(1)` after its own shutdown; give it back as KeyboardInterrupt,
    so that the job is recorded as interrupted (and resumable), not left at "running"."""
    try:
        yield
    except SystemExit as exit_:
        if trainer.interrupted:
            raise KeyboardInterrupt from exit_
        raise


def _csv_logger(run_dir: Path, keep_rows: bool) -> Any:
    """`csv/metrics.csv`, flushed at every logging step so that a killed run keeps its rows.

    Lightning's CSV writer deletes an existing metrics.csv when it starts; a resumed run
    (`keep_rows`) puts the earlier rows back and appends to them.
    """
    import csv

    from pytorch_lightning.loggers import CSVLogger

    logger = CSVLogger(save_dir=str(run_dir), name="csv", version="", flush_logs_every_n_steps=1)
    path = Path(logger.log_dir) / "metrics.csv"
    if keep_rows and process_rank() == 0 and path.is_file():
        rows = path.read_text()
        writer = logger.experiment  # deletes metrics.csv
        path.write_text(rows)
        writer.metrics_keys = next(csv.reader([rows.partition("\n")[0]]), [])
    return logger


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
