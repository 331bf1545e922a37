"""Around a job's Lightning Trainer: callbacks and plugins (throughput per epoch, the logging interval, the
checkpoint a rerun resumes from, written so that it cannot tear), the CSV log a resumed run appends to,
Ctrl-C recorded as an interruption (and never lost: StopOnSignal), and the known-harmless warnings filtered.

Hydra's callbacks (output folder checks, the sweep's closing table) live in `sweep.py`:
Hydra loads them for every command, and importing Lightning would cost seconds each time.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from resnext_lab import interrupts
from resnext_lab.files import write_atomic
from resnext_lab.hardware import process_rank, synchronize


class Throughput(pl.Callback):
    """Logs `perf/epoch_time_s` and `perf/images_per_s` of each training epoch, validation excluded.

    Lightning validates inside the training epoch, so the clock pauses from the start
    to the end of that validation. Syncs the GPU only at these few points, never per step.
    """

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        synchronize(pl_module.device)
        self._seconds = 0.0
        self._images = 0
        self._start: float | None = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._images += len(batch[1])

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._paused = getattr(self, "_start", None) is not None  # inside a training epoch, not a sanity check
        if self._paused:
            synchronize(pl_module.device)
            self._seconds += time.perf_counter() - self._start
            self._start = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(self, "_paused", False):
            self._paused = False
            self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is not None:
            synchronize(pl_module.device)
            self._seconds += time.perf_counter() - self._start
            self._start = None
        images = self._images * trainer.world_size
        pl_module.log("perf/epoch_time_s", self._seconds)
        pl_module.log("perf/images_per_s", images / max(self._seconds, 1e-9))


class StopOnSignal(pl.Callback):
    """Stop at the next batch once SIGINT or SIGTERM has arrived, as Ctrl-C would. The signal's own
    KeyboardInterrupt normally stops the job where it is; this catches the one Python drops, raised inside a
    finaliser (interrupts.py), which would otherwise let the job train on to "completed"."""

    def _check(self, *args: Any) -> None:
        if signum := interrupts.pending():
            raise interrupts.Interrupted(signum)

    on_train_batch_end = on_validation_batch_end = on_test_batch_end = _check


class TimedProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, redrawn at most every `interval_s` seconds instead of after every step.

    Redrawing after every step cost the host 0.5-1.2 ms per step (bar and metrics) against 2-3 ms
    for the rest of Lightning's loop on a small model (docs/PERFORMANCE.md); twice a second is as readable.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._drawn = -math.inf  # the first step draws, whatever the monotonic clock's origin (boot, on Linux)

    def _due(self, current: int, total: int | float | None) -> bool:
        now = time.monotonic()
        if current == total or now - self._drawn >= self.interval_s:
            self._drawn = now
            return True
        return False

    # Lightning's batch-end hooks redraw (and, in training, gather the metrics) at every step of its refresh
    # rate (1 here); each is called only when the interval has passed, or at the last batch.
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._due(batch_idx + 1, self.train_progress_bar.total):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._due(batch_idx + 1, self.val_progress_bar.total):
            super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._due(batch_idx + 1, self.test_progress_bar.total):
            super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._due(batch_idx + 1, self.predict_progress_bar.total):
            super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)


class LastCheckpoint(pl.Callback):
    """Saves `path` (the run's checkpoints/last.ckpt) at the end of every training epoch: a rerun resumes there.

    Lightning's ModelCheckpoint (2.6) writes its `last` file only when it also saves a top-k checkpoint,
    so with save_top_k=0 it appeared only once training had ended and a killed job started over.
    `trainer.save_checkpoint` writes from global rank zero (through AtomicCheckpointIO) and is called on every rank.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)  # the optimiser and loops too: a rerun resumes


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written whole or not at all: serialised in memory, written to a temporary file in the
    checkpoint's folder, flushed to disk, then renamed over the old one. A kill, a crash or a full disk
    during a save leaves the previous checkpoint as it was.

    Lightning's own save (2.6) writes a temporary file in /tmp, then copies it over the checkpoint in place:
    a kill or a full disk during the copy leaves half a file that no rerun can load.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)

        def write(handle: Any) -> None:
            handle.write(buffer.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())

        write_atomic(Path(path), write)


class EpochLogInterval(pl.Callback):
    """Caps Lightning's `log_every_n_steps` at the steps of one training epoch, so that an epoch shorter than
    the interval still logs (and Lightning does not warn that it would not)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # after the datamodule's setup, before Lightning first counts the epoch's batches (for the lr schedule)
        datamodule = getattr(trainer, "datamodule", None)
        if stage != "fit" or datamodule is None:
            return
        steps = len(datamodule.train_dataloader())
        limit = trainer.limit_train_batches
        if limit is not None:
            steps = min(steps, limit) if isinstance(limit, int) else int(steps * float(limit))
        trainer.log_every_n_steps = max(1, min(trainer.log_every_n_steps, steps))


@contextlib.contextmanager
def ctrl_c_as_interrupt(trainer: Any) -> Iterator[None]:
    """Lightning turns Ctrl-C into `sys.exit(1)` after its own shutdown; give it back as KeyboardInterrupt,
    so that the job is recorded as interrupted (and resumable), not left at "running"."""
    try:
        yield
    except SystemExit as exit_:
        if trainer.interrupted:
            raise KeyboardInterrupt from exit_
        raise


def csv_logger(run_dir: Path, keep_rows: bool) -> Any:
    """`csv/metrics.csv`, flushed at every logging step so that a killed run keeps its rows.

    Lightning's CSV writer deletes an existing metrics.csv when it starts; a resumed run
    (`keep_rows`) puts the earlier rows back and appends to them.
    """
    logger = CSVLogger(save_dir=str(run_dir), name="csv", version="", flush_logs_every_n_steps=1)
    path = Path(logger.log_dir) / "metrics.csv"
    if keep_rows and process_rank() == 0 and path.is_file():
        rows = path.read_text()
        writer = logger.experiment  # deletes metrics.csv
        path.write_text(rows)
        writer.metrics_keys = next(csv.reader([rows.partition("\n")[0]]), [])
    return logger


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


def quiet() -> None:
    """Filter the known-harmless messages, each by its exact text (set once per process; filters do not pile up)."""
    for category, message in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    for name in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.trainer.connectors.signal_connector"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _Replaced) for f in target.filters):
            target.addFilter(_Replaced())
