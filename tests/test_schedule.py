"""`module.schedule`: torch's schedulers give, step for step, the learning rates of the epoch formula they replace."""

from __future__ import annotations

import dataclasses
import io
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from resnext_lab.config import OptimSettings
from resnext_lab.module import ClassificationModule, schedule, sgd

sched = torch.optim.lr_scheduler

BASE_LRS = (0.1, 0.02)  # two parameter groups: the schedule scales each by the same factor


def reference_factor(epoch: float, optim: OptimSettings, max_epochs: int) -> float:
    """The lr multiplier at a fractional epoch, as the module computed it before it used torch's schedulers."""
    warmup = optim.warmup_epochs
    if warmup > 0 and epoch < warmup:
        return optim.warmup_start + (1 - optim.warmup_start) * epoch / warmup
    if optim.schedule == "step":
        return optim.gamma ** sum(epoch >= m for m in optim.milestones)
    if optim.schedule == "cosine":
        span = max(max_epochs - warmup, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(max(epoch - warmup, 0.0) / span, 1.0)))
    return 1.0


def optimizer() -> torch.optim.SGD:
    return torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in BASE_LRS], lr=1.0)


def lrs(opt: torch.optim.Optimizer) -> list[float]:
    return [group["lr"] for group in opt.param_groups]


def run(opt: torch.optim.Optimizer, scheduler: sched.LRScheduler, steps: int) -> list[list[float]]:
    """The learning rates of the next `steps` optimiser steps, each stepped as training does."""
    seen = []
    for _ in range(steps):
        seen.append(lrs(opt))
        opt.step()
        scheduler.step()
    return seen


# (optim settings, steps per epoch, max_epochs)
CASES: list[tuple[dict[str, Any], int, int]] = [
    ({"schedule": "cosine"}, 10, 6),
    ({"schedule": "cosine"}, 1, 5),
    ({"schedule": "cosine", "warmup_epochs": 2, "warmup_start": 0.1}, 10, 12),
    ({"schedule": "cosine", "warmup_epochs": 2, "warmup_start": 0.0}, 10, 12),
    ({"schedule": "cosine", "warmup_epochs": 0.5, "warmup_start": 0.1}, 10, 4),  # ends on a step
    ({"schedule": "cosine", "warmup_epochs": 0.5, "warmup_start": 0.1}, 7, 4),  # ends between steps 3 and 4
    ({"schedule": "cosine", "warmup_epochs": 0.5, "warmup_start": 0.0}, 7, 4),
    ({"schedule": "cosine", "warmup_epochs": 0.3, "warmup_start": 0.1}, 10, 3),  # 0.3 * 10 is not 3 in floats
    ({"schedule": "cosine", "warmup_epochs": 0.5, "warmup_start": 0.0}, 1, 4),  # a warm-up of one step
    ({"schedule": "cosine", "warmup_epochs": 0.05, "warmup_start": 0.1}, 10, 3),  # under one step
    ({"schedule": "cosine", "warmup_epochs": 1, "warmup_start": 1.0}, 10, 3),
    ({"schedule": "cosine", "warmup_epochs": 3, "warmup_start": 0.1}, 10, 3),  # the whole run
    ({"schedule": "cosine", "warmup_epochs": 4, "warmup_start": 0.0}, 10, 3),  # longer than the run
    ({"schedule": "step", "milestones": (2, 3.5), "gamma": 0.1}, 10, 5),
    ({"schedule": "step", "milestones": (0.3, 0.7, 1.1), "gamma": 0.5}, 10, 2),
    ({"schedule": "step", "milestones": (1, 3), "gamma": 0.1}, 7, 4),
    ({"schedule": "step", "milestones": (1, 1.5, 3), "warmup_epochs": 1.5, "warmup_start": 0.1}, 10, 5),
    ({"schedule": "step", "milestones": (0.5, 2, 2), "warmup_epochs": 1, "warmup_start": 0.0}, 7, 4),
    ({"schedule": "step", "milestones": (), "warmup_epochs": 0.5, "warmup_start": 0.1}, 3, 3),
    ({"schedule": "step", "milestones": (30, 60, 90), "gamma": 0.1}, 3, 100),
    ({"schedule": "constant"}, 10, 3),
    ({"schedule": "constant", "warmup_epochs": 1.5, "warmup_start": 0.1}, 10, 3),
    ({"schedule": "constant", "warmup_epochs": 0.5, "warmup_start": 0.0}, 5, 3),
]


def ids(case: tuple[dict[str, Any], int, int]) -> str:
    settings, per_epoch, epochs = case
    return ",".join(f"{k}={v}" for k, v in settings.items()) + f",P={per_epoch},E={epochs}"


@pytest.mark.parametrize("case", CASES, ids=[ids(c) for c in CASES])
def test_every_step_matches_the_epoch_formula(case: tuple[dict[str, Any], int, int]) -> None:
    settings, per_epoch, epochs = case
    optim = OptimSettings(**settings)
    opt = optimizer()
    steps = epochs * per_epoch
    # every lr training uses, and the one the last step leaves
    seen = [*run(opt, schedule(opt, optim, per_epoch, epochs), steps), lrs(opt)]
    for step, got in enumerate(seen):
        factor = reference_factor(step / per_epoch, optim, epochs)
        assert got == pytest.approx([lr * factor for lr in BASE_LRS], rel=1e-6, abs=1e-12), f"step {step}"


def pieces(scheduler: sched.LRScheduler) -> list[type]:
    return [type(s) for s in getattr(scheduler, "_schedulers", [scheduler])]


def test_torch_schedulers_where_they_can_say_it() -> None:
    def built(per_epoch: int = 10, epochs: int = 5, **settings: Any) -> list[type]:
        return pieces(schedule(optimizer(), OptimSettings(**settings), per_epoch, epochs))

    assert built(schedule="cosine") == [sched.CosineAnnealingLR]
    assert built(schedule="step", milestones=(2,)) == [sched.MultiStepLR]
    assert built(schedule="constant") == [sched.ConstantLR]
    assert built(schedule="cosine", warmup_epochs=1, warmup_start=0.1) == [sched.LinearLR, sched.CosineAnnealingLR]
    # LinearLR cannot start at 0: the first step is a ConstantLR at 0
    zero = built(schedule="step", milestones=(2,), warmup_epochs=1, warmup_start=0.0)
    assert zero == [sched.ConstantLR, sched.LinearLR, sched.MultiStepLR]
    # a cosine whose warm-up ends between two steps starts a fraction of a step in: a LambdaLR says that
    assert built(7, schedule="cosine", warmup_epochs=0.5) == [sched.LinearLR, sched.LambdaLR]
    # but not when it ends on a step up to rounding (0.3 * 10 is 3.0000000000000004)
    assert built(schedule="cosine", warmup_epochs=0.3) == [sched.LinearLR, sched.CosineAnnealingLR]


@pytest.mark.parametrize(
    ("settings", "per_epoch", "epochs", "stop"),
    [
        ({"schedule": "cosine", "warmup_epochs": 1, "warmup_start": 0.1}, 10, 4, 5),
        ({"schedule": "cosine", "warmup_epochs": 1, "warmup_start": 0.1}, 10, 4, 10),
        ({"schedule": "cosine", "warmup_epochs": 1, "warmup_start": 0.1}, 10, 4, 23),
        ({"schedule": "cosine", "warmup_epochs": 0.5, "warmup_start": 0.0}, 7, 4, 11),
        ({"schedule": "cosine"}, 10, 3, 12),
        ({"schedule": "step", "milestones": (1, 2), "warmup_epochs": 0.5, "warmup_start": 0.0}, 10, 3, 1),
        ({"schedule": "step", "milestones": (1, 2), "warmup_epochs": 0.5, "warmup_start": 0.0}, 10, 3, 15),
        ({"schedule": "constant", "warmup_epochs": 1, "warmup_start": 0.1}, 10, 2, 14),
    ],
)
def test_a_resumed_schedule_continues_where_it_stopped(
    settings: dict[str, Any], per_epoch: int, epochs: int, stop: int
) -> None:
    """As a checkpoint resumes: the optimiser's state, then the scheduler's, loaded into fresh ones."""
    optim, steps = OptimSettings(**settings), epochs * per_epoch
    opt = optimizer()
    scheduler = schedule(opt, optim, per_epoch, epochs)
    before = run(opt, scheduler, stop)
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)  # as train.py resumes its own checkpoints
    resumed = optimizer()
    resumed_scheduler = schedule(resumed, optim, per_epoch, epochs)
    resumed.load_state_dict(saved["optimizer"])
    resumed_scheduler.load_state_dict(saved["scheduler"])
    after = [*run(resumed, resumed_scheduler, steps - stop), lrs(resumed)]
    for step, got in enumerate(before + after):
        factor = reference_factor(step / per_epoch, optim, epochs)
        assert got == pytest.approx([lr * factor for lr in BASE_LRS], rel=1e-6, abs=1e-12), f"step {step}"


@pytest.mark.parametrize(
    ("settings", "stop"),
    [
        ({"schedule": "step", "milestones": (1, 2), "warmup_epochs": 0.5, "warmup_start": 0.0}, 3),
        ({"schedule": "step", "milestones": (1, 2), "warmup_epochs": 0.5, "warmup_start": 0.0}, 15),
        ({"schedule": "cosine", "warmup_epochs": 1, "warmup_start": 0.1}, 12),
        ({"schedule": "cosine"}, 12),
    ],
)
def test_a_checkpoint_of_the_lambda_schedule_resumes(settings: dict[str, Any], stop: int) -> None:
    """A run checkpointed when the schedule was one LambdaLR over the epoch formula resumes on the same lrs."""
    optim, per_epoch, epochs = OptimSettings(**settings), 10, 3
    net = torch.nn.Linear(2, 2)
    old_opt = sgd(net, optim)
    old = sched.LambdaLR(old_opt, lambda step: reference_factor(step / per_epoch, optim, epochs))
    before = run(old_opt, old, stop)
    checkpoint = {"state_dict": {}, "optimizer_states": [old_opt.state_dict()], "lr_schedulers": [old.state_dict()]}
    module = ClassificationModule(net, dataclasses.asdict(optim), num_classes=2)
    module.trainer = SimpleNamespace(  # type: ignore[assignment]
        world_size=1, max_epochs=epochs, estimated_stepping_batches=epochs * per_epoch
    )
    module.on_load_checkpoint(checkpoint)
    configured = module.configure_optimizers()
    opt, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    # as Lightning restores: the optimisers, then the schedulers
    opt.load_state_dict(checkpoint["optimizer_states"][0])
    scheduler.load_state_dict(checkpoint["lr_schedulers"][0])
    after = [*run(opt, scheduler, epochs * per_epoch - stop), lrs(opt)]
    for step, got in enumerate(before + after):
        assert got == pytest.approx([0.1 * reference_factor(step / per_epoch, optim, epochs)], rel=1e-6), step
