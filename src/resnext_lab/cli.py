"""What run.py needs around Hydra: the task dispatch, and one-line errors (folders and checks: sweep.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from resnext_lab.config import TASKS
from resnext_lab.errors import ConfigError, fail
from resnext_lab.tasks.complexity import complexity_task
from resnext_lab.tasks.plan import plan_task
from resnext_lab.tasks.preregister import preregister_task


def run_task(cfg: DictConfig, jobs: Sequence[tuple[list[str], Any]] | None = None) -> Any:
    """Run `cfg.task` (train, eval, plan, complexity); a user error prints one line and exits 2, a failed training run exits 1.

    `jobs`: for task=plan and task=preregister, every job of the sweep as (overrides, composed config); the sweep's callback
    passes them before any job is launched (a plan prices the sweep as a whole). Alone, the plan is the
    one run's.
    """
    try:
        if cfg.task == "complexity":
            return complexity_task(cfg)
        hydra = cfg.hydra if "hydra" in cfg else HydraConfig.get()
        if cfg.task == "plan":
            return plan_task(cfg, jobs or [(list(hydra.overrides.task), cfg)], hydra)
        if cfg.task == "eval":
            from resnext_lab.tasks.eval import eval_task  # torch and Lightning: for scoring only

            return eval_task(cfg)
        if cfg.task == "preregister":
            return preregister_task(cfg, jobs or [(list(hydra.overrides.task), cfg)], hydra)
        if cfg.task == "train":
            from resnext_lab.tasks.train import RunFailed, train_task  # torch and Lightning: for training only

            try:
                return train_task(cfg)
            except RunFailed as err:
                fail(str(err), status=1)
        raise ConfigError(f"task={cfg.task!r}: must be one of {', '.join(TASKS)}")
    except ConfigError as err:
        fail(str(err))
