"""Training jobs that differ only in `seed`, as one stacked network (a launcher's `hydra.launcher.stack=N`).

Each seed stays its own job, with what a lone job leaves in its folder: results.json (with `stacked`: the
stack's seeds and size), `csv/metrics.csv` with the lone job's columns, its W&B run in the sweep's group, and
`checkpoints/last.ckpt` in the lone job's format, written every epoch, so that a rerun resumes it stacked or
alone. A seed that goes non-finite is recorded as diverged and frozen; the others train on. A seed completed
before is skipped. Seeds whose checkpoints are at different points (a kill between two seeds' checkpoint
writes, or a stack that differs from the last run's) train in separate stacks, one per point; a point with
one seed trains it alone (tasks/train.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger

from resnext_lab import interrupts, results
from resnext_lab.callbacks import AtomicCheckpointIO, csv_logger, ctrl_c_as_interrupt, quiet
from resnext_lab.errors import stop
from resnext_lab.hardware import resolve_precision
from resnext_lab.job import check_job
from resnext_lab.models import stack
from resnext_lab.module import Diverged
from resnext_lab.overrides import check_same_job
from resnext_lab.stacked import StackedDataModule, StackedModule, lone_checkpoint, stack_checkpoints
from resnext_lab.tasks.train import (
    CHECKPOINT,
    _auto,
    _stop_if_unwritable,
    _trainer,
    error_text,
    print_summary,
    train_task,
)
from resnext_lab.tasks.train import resume_point as lone_resume_point
from resnext_lab.tracking import wandb_group, wandb_logger

log = logging.getLogger("resnext_lab")


@dataclasses.dataclass
class StackJob:
    """One seed's job: its task config, its whole config (hydra node included), its folder and overrides."""

    cfg: DictConfig
    config: DictConfig
    run_dir: Path
    overrides: list[str]


def train_stack(jobs: Sequence[StackJob]) -> list[dict[str, Any]]:
    """Train the seeds of `jobs` (one sweep cell) stacked; each job's results.json, in order.

    Completed seeds are skipped (their results.json returned); the others are grouped by the point their
    checkpoints are at, and each group trains as one stack (alone where it has one seed).
    """
    out: list[dict[str, Any] | None] = [None] * len(jobs)
    points: dict[Any, list[tuple[int, Path | None]]] = {}
    for k, job in enumerate(jobs):
        job.run_dir.mkdir(parents=True, exist_ok=True)
        previous = results.load(job.run_dir)
        if previous and job.cfg.resume is True:
            reusable = previous.get("status") == "completed" or (job.run_dir / CHECKPOINT).exists()
            check_same_job(previous, job.overrides, job.run_dir, reusable)
            if previous.get("status") == "completed":
                log.info("skipping %s: completed before (%s)", job.run_dir, results.FILE)
                out[k] = previous
                continue
        path, point = _resume_point(job) if job.cfg.resume else (None, None)
        points.setdefault(point, []).append((k, path))
    for members in points.values():
        if len(members) == 1:
            k, _ = members[0]
            HydraConfig.instance().set_config(jobs[k].config)  # the lone task reads its job from Hydra
            out[k] = train_task(jobs[k].cfg)
        else:
            done = _StackRun([jobs[k] for k, _ in members], [p for _, p in members]).run()
            for (k, _), result in zip(members, done, strict=True):
                out[k] = result
    return [r for r in out if r is not None]


def _resume_point(job: StackJob) -> tuple[Path | None, Any]:
    """The job's checkpoint that loads (tasks.train.resume_point, which sets aside those that do not), and the
    point it is at: (epoch, global step), None for a fresh start."""
    path, set_aside = lone_resume_point(job.run_dir)
    if set_aside:
        log.warning("%s: %d checkpoint(s) set aside", job.run_dir, len(set_aside))
    if path is None:
        return None, None
    ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    return path, (int(ckpt.get("epoch", -1)), int(ckpt.get("global_step", -1)))


class SliceLogger(Logger):
    """Seed `index`'s view of a stacked run's logs: its `s<index>/` metrics under their lone names (so that its
    metrics.csv and W&B run hold the lone job's columns), and the stack's shared metrics (epoch, throughput)."""

    _SLICE = re.compile(r"s\d+/")

    def __init__(self, inner: Logger, index: int) -> None:
        super().__init__()
        self.inner, self.prefix = inner, f"s{index}/"

    @property
    def name(self) -> str | None:
        return self.inner.name

    @property
    def version(self) -> Any:
        return self.inner.version

    @property
    def save_dir(self) -> str | None:
        return self.inner.save_dir

    @property
    def log_dir(self) -> str | None:
        return getattr(self.inner, "log_dir", None)

    @property
    def experiment(self) -> Any:
        return self.inner.experiment

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        mine = {k[len(self.prefix) :]: v for k, v in metrics.items() if k.startswith(self.prefix)}
        shared = {k: v for k, v in metrics.items() if not self._SLICE.match(k)}
        if mine or any(k != "epoch" for k in shared):
            self.inner.log_metrics({**shared, **mine}, step)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.inner.log_hyperparams(params, *args, **kwargs)

    def save(self) -> None:
        self.inner.save()

    def finalize(self, status: str) -> None:
        self.inner.finalize(status)


class StackedLastCheckpoint(pl.Callback):
    """Every epoch, each seed's `checkpoints/last.ckpt` in the lone job's format (stacked.lone_checkpoint),
    written whole or not at all (AtomicCheckpointIO): a rerun resumes each seed, stacked or alone. A diverged
    seed keeps its last finite checkpoint, as a lone job that diverged does."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self.io = AtomicCheckpointIO()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stacked = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        diverged = getattr(pl_module, "diverged", {})
        for i, path in enumerate(self.paths):
            if i not in diverged:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.io.save_checkpoint(lone_checkpoint(stacked, i), path)


class _StackRun:
    """One stack: the seeds' bookkeeping (as tasks/train.py keeps a lone job's) around one stacked fit."""

    def __init__(self, jobs: Sequence[StackJob], resume_from: Sequence[Path | None]) -> None:
        self.jobs, self.resume_from = list(jobs), list(resume_from)
        self.seeds = [int(job.cfg.seed) for job in jobs]
        self.outcomes: list[dict[str, Any]] = [{} for _ in jobs]
        self.wandb_runs: list[Any] = []
        self.module: Any = None  # the StackedModule, once built: which seeds diverged
        stacked = {"seeds": self.seeds, "size": len(self.seeds)}
        self.bases = [
            {
                "status": "running",
                "error": None,
                "overrides": job.overrides,
                "experiment": job.cfg.get("experiment_name"),
                "scale": job.cfg.get("scale_name"),
                "seed": int(job.cfg.seed),
                "stacked": stacked,
                "task": "train",
                "versions": results.versions(),
                "git_commit": results.git_commit(),
                "placement": results.placement(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            for job in jobs
        ]
        self.start = time.perf_counter()

    def record(self, k: int, status: str, error: str | None) -> dict[str, Any]:
        result = {
            **self.bases[k],
            **self.outcomes[k],
            "status": status,
            "error": error,
            "wall_time_s": round(time.perf_counter() - self.start, 2),  # the stack's: every seed trained in it
        }
        results.write(self.jobs[k].run_dir, result)
        return result

    def run(self) -> list[dict[str, Any]]:
        with interrupts.job_running():
            try:
                diverged = self._fit()
            except KeyboardInterrupt:
                self._interrupted()
            except Exception as err:  # every seed recorded, never lost (as tasks/train.py records a lone job)
                if interrupts.pending():
                    self._interrupted()
                self._finish_wandb(exit_code=1)
                for k, job in enumerate(self.jobs):
                    _stop_if_unwritable(err, job.run_dir, lambda why, k=k: self.record(k, "interrupted", why))
                status = "diverged" if isinstance(err, Diverged) else "failed"
                # every seed diverged (the stack's Diverged): each says when its own loss went non-finite
                texts = dict(getattr(self.module, "diverged", {})) if status == "diverged" else {}
                out = []
                for k, job in enumerate(self.jobs):
                    (job.run_dir / "error.txt").write_text(traceback.format_exc())
                    out.append(self.record(k, status, texts.get(k, error_text(err))))
                log.error("%s (stack of seeds %s): %s", status, self.seeds, error_text(err))
                return out
        out = []
        for k, job in enumerate(self.jobs):
            if k in diverged:
                log.error("diverged: seed %s: %s", self.seeds[k], diverged[k])
                out.append(self.record(k, "diverged", diverged[k]))
            else:
                result = self.record(k, "completed", None)
                print_summary(result, job.run_dir)
                out.append(result)
        return out

    def _interrupted(self) -> None:
        self._finish_wandb(exit_code=255)
        why = f"interrupted by {interrupts.name()}"
        with contextlib.suppress(OSError):
            for k in range(len(self.jobs)):
                self.record(k, "interrupted", why)
        folders = ", ".join(str(job.run_dir) for job in self.jobs)
        stop(
            f"interrupted ({interrupts.name()}): jobs {folders} (stacked) are resumable: run the same command again "
            "to resume them from their last checkpoints",
            interrupts.status(),
        )

    def _finish_wandb(self, exit_code: int) -> None:
        for run in self.wandb_runs:
            with contextlib.suppress(Exception):
                run.finish(exit_code=exit_code)
        self.wandb_runs = []

    def _fit(self) -> dict[int, str]:
        """Train, validate and test the stack; each seed's outcome as it becomes known; the diverged seeds."""
        checked = [check_job(job.cfg) for job in self.jobs]
        for c in checked:
            c.datamodule.shuffle_seed = c.settings.run.seed
        infos = [c.model_info() for c in checked]
        for k, job in enumerate(self.jobs):
            self.bases[k]["model"] = infos[k]
            results.write(job.run_dir, self.bases[k])
        first = checked[0]
        run, t, logger = first.settings.run, first.settings.trainer, first.settings.logger
        pl.seed_everything(self.seeds[0], workers=True, verbose=False)
        cuda = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
        precision, why = resolve_precision(t.precision, cuda)
        channels_last = bool(_auto(t.channels_last, True))
        benchmark = bool(_auto(t.benchmark, cuda and not run.deterministic))
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        net = drawn = stack(first.spec, self.seeds)
        if t.compile:
            net = torch.compile(net)
        module = StackedModule(
            net, first.settings.optim, first.spec.num_classes, channels_last, t.check_finite_every_n_steps
        )
        self.module = module
        # each seed augments from where its lone job's global RNG would be, once its network is drawn
        dm = StackedDataModule([c.datamodule for c in checked], getattr(drawn, "rngs", None))
        log.info(
            "%s x %d seeds %s stacked | %s params each | %s",
            first.spec.name,
            len(self.seeds),
            self.seeds,
            f"{infos[0]['params']:,}",
            first.datamodule.describe(),
        )
        resumed = self.resume_from[0] is not None
        for k, path in enumerate(self.resume_from):
            self.outcomes[k]["precision"] = {"used": precision, "why": why}
            if path is not None:
                self.outcomes[k]["checkpoint"] = {
                    "resumed_from": str(path.relative_to(self.jobs[k].run_dir)),
                    "set_aside": [],
                }
            self.outcomes[k].update(resumed=resumed, metrics_csv="csv/metrics.csv" if logger.csv else None)
        loggers: list[Any] = []
        if logger.csv:
            loggers += [SliceLogger(csv_logger(job.run_dir, keep_rows=resumed), k) for k, job in enumerate(self.jobs)]
        wandb_loggers: list[Any] = []
        if logger.wandb.enabled:
            for k, job in enumerate(self.jobs):
                group = wandb_group(job.cfg, job.config.hydra.sweep.dir)
                config = OmegaConf.to_container(job.cfg, resolve=True)
                wl, info = wandb_logger(config, job.run_dir, logger.wandb, group, job.run_dir.name, own_run=True)
                self.wandb_runs.append(wl.experiment)
                self.outcomes[k]["wandb"] = info
                wandb_loggers.append(wl)
                loggers.append(SliceLogger(wl, k))
        quiet()
        last = StackedLastCheckpoint([job.run_dir / CHECKPOINT for job in self.jobs])
        trainer = _trainer(t, run.deterministic, self.jobs[0].run_dir, precision, benchmark, loggers, last)
        with tempfile.TemporaryDirectory(prefix="resnext-lab-stack-resume-") as tmp:  # the stacked form, for Lightning
            ckpt_path = None
            if resumed:
                log.info("resuming seeds %s from %s", self.seeds, [str(p) for p in self.resume_from])
                ckpt_path = Path(tmp) / "stacked.ckpt"
                lone = [torch.load(p, map_location="cpu", weights_only=False) for p in self.resume_from]
                torch.save(stack_checkpoints(lone), ckpt_path)
            with ctrl_c_as_interrupt(trainer):
                trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=False)
                fitted = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
                trainer.test(module, datamodule=dm, verbose=False)
        tested = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1 and "test/" in k}
        diverged = dict(getattr(module, "diverged", {}))
        epochs = int(trainer.current_epoch)
        for k in range(len(self.jobs)):
            metrics = _slice_metrics({**fitted, **tested}, k)
            if k not in diverged:
                self.outcomes[k].update(metrics=metrics)
            self.outcomes[k].update(epochs=epochs)
        for k, wl in enumerate(wandb_loggers):
            run_ = wl.experiment
            run_.summary.update(
                {
                    **self.outcomes[k].get("metrics", {}),
                    **{
                        f"model/{key}": infos[k][key]
                        for key in ("params", "flops", "cardinality", "width", "depth", "residual", "block")
                    },
                }
            )
            self.outcomes[k]["wandb"]["dir"] = str(Path(run_.dir).parent)
        self._finish_wandb(exit_code=0)
        return diverged


def _slice_metrics(metrics: Mapping[str, float], k: int) -> dict[str, float]:
    """Seed k's metrics under their lone names, with the stack's shared ones (throughput)."""
    prefix = f"s{k}/"
    mine = {name[len(prefix) :]: v for name, v in metrics.items() if name.startswith(prefix)}
    shared = {name: v for name, v in metrics.items() if not SliceLogger._SLICE.match(name)}
    return {**shared, **mine}
