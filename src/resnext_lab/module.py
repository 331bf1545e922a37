"""The one LightningModule: cross-entropy, SGD with the paper's schedules, top-1/top-5 error.

Errors are logged as the paper reports them, in percent: `train/top1_err`,
`val/top1_err`, `val/top5_err`, `test/top1_err`, `test/top5_err`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric, MinMetric

from resnext_lab.config import OptimSettings, parse
from resnext_lab.errors import ConfigError


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def scaled_lr(optim: OptimSettings, global_batch: int) -> float:
    """`optim.lr`, times global batch / `base_batch_size` when `scale_lr` (the linear scaling rule)."""
    return optim.lr * global_batch / optim.base_batch_size if optim.scale_lr else optim.lr


def param_groups(net: nn.Module, optim: OptimSettings) -> list[dict[str, Any]]:
    """SGD parameter groups: with `no_decay_bn_bias`, BN weights and all biases (the 1-d tensors) get no decay."""
    decay, no_decay = [], []
    for p in net.parameters():
        (no_decay if optim.no_decay_bn_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def sgd(net: nn.Module, optim: OptimSettings, global_batch: int = 0) -> torch.optim.SGD:
    """The run's optimiser: SGD over `param_groups` at `scaled_lr`, with `optim`'s momentum and Nesterov."""
    return torch.optim.SGD(
        param_groups(net, optim), lr=scaled_lr(optim, global_batch), momentum=optim.momentum, nesterov=optim.nesterov
    )


def _first_step(epoch: float, steps_per_epoch: int) -> int | None:
    """The first optimiser step `s` at which `s / steps_per_epoch >= epoch` (None: never)."""
    if not math.isfinite(epoch):
        return None
    s = max(0, math.ceil(epoch * steps_per_epoch))
    # the same comparison as the epochs it stands for, so that rounding cannot move a boundary by a step
    while s > 0 and (s - 1) / steps_per_epoch >= epoch:
        s -= 1
    while s / steps_per_epoch < epoch:
        s += 1
    return s


def schedule(
    optimizer: torch.optim.Optimizer, optim: OptimSettings, steps_per_epoch: int, max_epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The run's learning-rate schedule, stepped once per optimiser step.

    A linear warm-up from `optim.warmup_start` * lr over `optim.warmup_epochs` (fractional epochs allowed),
    then `optim.schedule`: step (times gamma from each milestone epoch on, counting milestones inside the
    warm-up), cosine (to zero at `max_epochs`, over the epochs after the warm-up) or constant. Epochs are
    `step / steps_per_epoch`; a phase starts at the first step that reaches its epoch.
    """
    sched = torch.optim.lr_scheduler
    per_epoch = max(1, steps_per_epoch)
    warmup = optim.warmup_epochs
    pieces: list[sched.LRScheduler] = []
    starts: list[int] = []  # the step at which each piece after the first takes over
    end = _first_step(warmup, per_epoch) if warmup > 0 else 0  # the first step after the warm-up
    if end != 0:
        span = warmup * per_epoch  # the warm-up in steps, maybe fractional: factor start + (1 - start) * s / span
        if optim.warmup_start > 0:
            pieces.append(sched.LinearLR(optimizer, optim.warmup_start, 1.0, total_iters=span))
        else:  # LinearLR cannot start at 0: step 0 at 0, then linear from step 1 on
            pieces.append(sched.ConstantLR(optimizer, 0.0, total_iters=1))
            if end is None or end > 1:
                starts.append(1)
                pieces.append(sched.LinearLR(optimizer, 1 / span, 1.0, total_iters=span - 1))
        if end is None:  # a warm-up that never ends
            return pieces[0] if len(pieces) == 1 else sched.SequentialLR(optimizer, pieces, starts)
        starts.append(end)
    if optim.schedule == "step":
        reached = (_first_step(m, per_epoch) for m in optim.milestones)
        # milestones inside the warm-up all apply when it ends
        pieces.append(sched.MultiStepLR(optimizer, [max(s - end, 0) for s in reached if s is not None], optim.gamma))
    elif optim.schedule == "cosine":
        steps = max_epochs * per_epoch - end
        if math.isclose(end, warmup * per_epoch, rel_tol=1e-12, abs_tol=1e-12) and steps > 0:
            pieces.append(sched.CosineAnnealingLR(optimizer, T_max=steps))
        else:
            # a warm-up ending between two steps (or after the run): the cosine starts at that fraction of a
            # step, which CosineAnnealingLR, counted from the piece's first step, cannot express
            span_epochs = max(max_epochs - warmup, 1e-8)

            def cosine(k: int) -> float:
                done = min(max((end + k) / per_epoch - warmup, 0.0) / span_epochs, 1.0)
                return 0.5 * (1 + math.cos(math.pi * done))

            pieces.append(sched.LambdaLR(optimizer, cosine))
    else:
        pieces.append(sched.ConstantLR(optimizer, 1.0, total_iters=0))
    return pieces[0] if len(pieces) == 1 else sched.SequentialLR(optimizer, pieces, starts)


class EpochErrors(Metric):
    """A stage's top-1 and top-k errors (%) and mean loss, accumulated on the device in one update per step.

    Counts what torchmetrics' `MulticlassAccuracy(average="micro")` counts (top-1 by argmax,
    top-k by `topk`), but one update of three in-place sums replaces three metrics' updates:
    on the host that is about a third of the time per step (docs/PERFORMANCE.md). The states
    are summed over ranks. A NaN or infinite loss stays in the mean, so divergence shows.
    """

    full_state_update = False

    def __init__(self, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.add_state("hits", torch.zeros(2, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("loss_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor, loss: Tensor) -> None:
        top1 = logits.argmax(1) == target
        topk = (logits.topk(self.top_k, dim=1).indices == target[:, None]).any(1)
        self.hits += torch.stack((top1.sum(), topk.sum()))
        self.loss_sum += loss.detach().double() * target.numel()
        self.count += target.numel()

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp(min=1)
        errors = 100.0 * (1.0 - self.hits / n)
        return {"top1_err": errors[0].float(), "top5_err": errors[1].float(), "loss": (self.loss_sum / n).float()}


class ClassificationModule(pl.LightningModule):
    """Trains `net` on (images, labels) batches."""

    def __init__(
        self,
        net: nn.Module,
        optim: OptimSettings | Mapping[str, Any],
        num_classes: int,
        channels_last: bool = False,
        check_finite_every_n_steps: int = 50,
    ) -> None:
        super().__init__()
        self.net = net
        self.optim = optim if isinstance(optim, OptimSettings) else parse(OptimSettings, optim, "optim")
        self.channels_last = channels_last
        self.check_every = max(1, int(check_finite_every_n_steps))
        # accumulated on the device and logged once per epoch; ModuleDict keys may not be "train"
        self.metrics = nn.ModuleDict({stage: EpochErrors(min(5, num_classes)) for stage in ("train_", "val_", "test_")})
        # the lowest validation error of the run so far, logged as best/val/top1_err; saved in the checkpoint,
        # so a resumed run remembers the epochs before it
        self.best_val = MinMetric()
        self.best_val.persistent(True)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.metrics[f"{stage}_"].update(logits.detach(), y, loss)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        if self.global_step % self.check_every == 0:
            here = not bool(torch.isfinite(loss))  # the one host sync, every check_finite_every_n_steps
            if self._on_any_rank(here):  # decided together: a rank that raised alone would leave the others waiting
                where = f"{loss.item()}" if here else "not finite on another rank"
                raise Diverged(f"training loss is {where} at step {self.global_step} (epoch {self.current_epoch})")
        return loss

    def _on_any_rank(self, flag: bool) -> bool:
        """`flag` or-ed over all ranks (one all-reduce under DDP; the flag itself on one device)."""
        strategy = getattr(self.trainer, "strategy", None)
        return bool(strategy.reduce_boolean_decision(flag, all=False)) if strategy is not None else flag

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_errors(self, stage: str) -> dict[str, Tensor]:
        """Log the epoch's errors in percent and its mean loss (all reduced over ranks); return them."""
        metric = self.metrics[f"{stage}_"]
        values = metric.compute()
        metric.reset()
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=name == "top1_err")
        return values

    def on_train_epoch_end(self) -> None:
        loss = self._log_errors("train")["loss"]
        if not torch.isfinite(loss):
            raise Diverged(f"training loss is {loss.item()} at the end of epoch {self.current_epoch}")

    def on_validation_epoch_end(self) -> None:
        values = self._log_errors("val")
        if not self.trainer.sanity_checking:
            self.best_val.update(values["top1_err"])
            self.log("best/val/top1_err", self.best_val.compute())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a checkpoint written before best_val existed resumes with no best yet
        for key, value in self.best_val.state_dict(prefix="best_val.").items():
            checkpoint["state_dict"].setdefault(key, value)
        # a checkpoint written when the schedule was one LambdaLR keeps only its step count: configure_optimizers
        # brings the schedule to that step and puts its state in place of the old one
        states = checkpoint.get("lr_schedulers") or []
        if states and "lr_lambdas" in states[0] and "_schedulers" not in states[0]:
            self._legacy_schedule = (states, int(states[0]["last_epoch"]))

    def on_test_epoch_end(self) -> None:
        self._log_errors("test")

    def configure_optimizers(self) -> dict[str, Any]:
        opt = self.optim
        global_batch = self.trainer.world_size * _batch_size(self.trainer) if opt.scale_lr else 0
        optimizer = sgd(self.net, opt, global_batch)
        max_epochs = max(1, self.trainer.max_epochs or 1)
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // max_epochs)
        scheduler = schedule(optimizer, opt, steps_per_epoch, max_epochs)
        legacy, self._legacy_schedule = getattr(self, "_legacy_schedule", None), None
        if legacy is not None:
            states, steps = legacy
            with warnings.catch_warnings():  # stepped without optimiser steps, on purpose
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(steps):
                    scheduler.step()
            states[0] = scheduler.state_dict()
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _batch_size(trainer: pl.Trainer) -> int:
    """The per-device training batch: our datamodules keep it in `settings`, others as `batch_size`."""
    dm = trainer.datamodule
    size = getattr(getattr(dm, "settings", None), "batch_size", None) or getattr(dm, "batch_size", None)
    if not size:
        raise ConfigError("optim.scale_lr=true: the datamodule does not say its batch size; set optim.scale_lr=false")
    return int(size)
