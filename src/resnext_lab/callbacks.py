"""Lightning and Hydra callbacks: throughput per epoch, and the sweep's closing table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig


class Throughput(pl.Callback):
    """Logs `perf/epoch_time_s` and `perf/images_per_s` of each training epoch (one sync per epoch)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()
        self._images = 0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._images += len(batch[1])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(pl_module)
        seconds = time.perf_counter() - self._start
        images = self._images * trainer.world_size
        pl_module.log("perf/epoch_time_s", seconds)
        pl_module.log("perf/images_per_s", images / max(seconds, 1e-9))

    @staticmethod
    def _sync(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)


class SweepSummary(HydraCallback):
    """At the end of a training multirun: one table of every job in the sweep folder, failures last.

    Exits with status 1 when any job failed or diverged, after the table is printed.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("task") != "train":
            return
        from resnext_lab.sweep import summarize_sweep

        if summarize_sweep(Path(config.hydra.sweep.dir)):
            raise SystemExit(1)
