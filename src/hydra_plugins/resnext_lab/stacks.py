"""Stacked seeds in a launcher (`hydra.launcher.stack=N`): the jobs of a sweep that differ only in `seed` run as
stacks of up to N seeds, each stack one process training one stacked network (resnext_lab/tasks/train_stack.py).

Shared by the packed and the submitit launchers. Each job of a stack still gets its own folder, set up by Hydra's
own `run_job` as for any job (its `.hydra/` files, its log file, the job callbacks), and its own JobReturn: the
launcher hands Hydra one per job, whatever ran stacked. A stack of one seed runs as a lone job.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, run_job
from hydra.types import HydraContext
from omegaconf import DictConfig, open_dict

from resnext_lab.errors import fail
from resnext_lab.overrides import stacks
from resnext_lab.stacking import stackable

#: `hydra.launcher.stack`: every job alone (the default), or up to N seeds per stack, or `auto`
AUTO = "auto"


def stack_setting(value: Any) -> int | str:
    """`hydra.launcher.stack`, checked: an integer >= 1, or auto (one line and exit 2 otherwise)."""
    if value == AUTO:
        return AUTO
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(
            f"hydra.launcher.stack={value!r}: must be an integer >= 1 (the most seeds trained as one stacked "
            "network; 1: every job alone) or auto (stacked where the plan measures stacking faster here)"
        )
    return value


def sweep_stacks(
    job_overrides: Sequence[Sequence[str]], configs: Sequence[DictConfig | None], size: int
) -> list[list[int]]:
    """The sweep's jobs as stacks of job indices (overrides.stacks): only training jobs that compose, of the
    block form that stacks (stacking.stackable), stack."""
    return stacks(job_overrides, size, [c is not None and c.get("task") == "train" and stackable(c) for c in configs])


def resolve_size(
    setting: int | str, job_overrides: Sequence[Sequence[str]], configs: Sequence[DictConfig | None], threads: int
) -> tuple[int, str]:
    """The stack size a sweep runs with, and why: `auto` asks the measured rule (resnext_lab.stacking) for the
    sweep's first training job, with the most seeds a cell of the sweep has and the threads each job gets."""
    if setting != AUTO:
        return int(setting), f"hydra.launcher.stack={setting}"
    first = next((c for c in configs if c is not None and c.get("task") == "train" and stackable(c)), None)
    if first is None:
        return 1, "hydra.launcher.stack=auto: no training job that stacks"
    from resnext_lab.stacking import auto_stack_size  # torch: only where a sweep asks for auto

    seeds = max(len(group) for group in sweep_stacks(job_overrides, configs, len(configs)))
    return auto_stack_size(first, seeds, threads)


def _prepare(cfg: DictConfig) -> None:
    """The task Hydra's run_job calls for each job of a stack: the folder and its files are set up; the
    training is the stack's (run_stack)."""
    return None


def run_stack(
    hydra_context: HydraContext, config: DictConfig, jobs: Sequence[tuple[list[str], int, DictConfig]]
) -> list[JobReturn]:
    """Run the jobs of one stack (overrides, job number, composed config) in this process; one JobReturn each.

    Hydra's run_job sets up each job's folder as it would for a lone job; then one stacked network trains every
    seed (tasks.train_stack), and each JobReturn gets its job's result, as a lone job's returns its
    results.json. A Stop (disk full, Ctrl-C) ends the sweep as it does for a lone job.
    """
    from resnext_lab.tasks.train_stack import StackJob, train_stack  # torch and Lightning: in the job's process

    prepared: list[tuple[JobReturn, DictConfig]] = []
    for _overrides, idx, sweep_config in jobs:
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        ret = run_job(
            hydra_context=hydra_context,
            task_function=_prepare,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        prepared.append((ret, sweep_config))
    files = _log_to_every_job(prepared)
    HydraConfig.instance().set_config(prepared[-1][1])  # as run_job sets it while a job runs (multirun, folders)
    try:
        stack = [
            StackJob(
                cfg=ret.cfg,
                config=sweep_config,
                run_dir=Path(str(sweep_config.hydra.runtime.output_dir)),
                overrides=list(ret.overrides or []),
            )
            for ret, sweep_config in prepared
        ]
        values: list[Any] = train_stack(stack)
        status = JobStatus.COMPLETED
    except Exception as err:  # noqa: BLE001  (as run_job keeps a job's exception: Hydra raises it at the end)
        values, status = [err] * len(prepared), JobStatus.FAILED
    finally:
        for handler in files:
            logging.getLogger().removeHandler(handler)
            handler.close()
        configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    for (ret, _), value in zip(prepared, values, strict=True):
        ret.status = status
        ret.return_value = value
    return [ret for ret, _ in prepared]


def _log_to_every_job(prepared: Sequence[tuple[JobReturn, DictConfig]]) -> list[logging.Handler]:
    """run_job points the job log file at the last job's folder; every other job of the stack gets the same
    lines in its own `<job name>.log`, so that each folder holds its log as a lone job's does."""
    handlers: list[logging.Handler] = []
    last = logging.getLogger().handlers
    formatter = next((h.formatter for h in last if isinstance(h, logging.FileHandler)), None)
    for _ret, sweep_config in prepared[:-1]:
        path = Path(str(sweep_config.hydra.runtime.output_dir)) / f"{sweep_config.hydra.job.name}.log"
        handler = logging.FileHandler(path, delay=True)
        if formatter is not None:
            handler.setFormatter(formatter)
        logging.getLogger().addHandler(handler)
        handlers.append(handler)
    return handlers
