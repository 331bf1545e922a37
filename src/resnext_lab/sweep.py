"""Hydra's callbacks: the run or sweep folder checked, held and pinned before jobs start, every job of a
sweep checked before the first, task=plan dispatched with the whole sweep, and the closing table and
report after the last job.

Kept free of torch and Lightning: Hydra loads these callbacks for every command, `task=complexity` included.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, open_dict, read_write

from resnext_lab import prereg
from resnext_lab.cli import run_task
from resnext_lab.errors import ConfigError, fail
from resnext_lab.evaluation import expand_sweep
from resnext_lab.folders import hold_folder, release_folder, unwritable
from resnext_lab.job import check_job, check_sweep, scales
from resnext_lab.overrides import RUN_INVARIANT, hydra_quote, split_overrides
from resnext_lab.prereg import located
from resnext_lab.tasks.plan import plan_before_training


class OutputFolder(HydraCallback):
    """Checks the run or sweep folder before Hydra creates it, and pins a sweep's folder for its jobs.

    Hydra creates the folder before any job code runs, so an unwritable `out_root`
    would otherwise end in a traceback. The sweep folder is named after the swept
    overrides (`hydra.overrides.task` of the whole sweep); each job's config is composed
    again from that job's own overrides and would name a different folder, so the
    resolved name is passed to every job as a `hydra.sweep.dir` override.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("task") == "plan":  # before Hydra makes the run's folder: a plan writes nothing
            run_task(config)
            raise SystemExit(0)
        if config.get("task") == "preregister":  # the experiment's whole sweep, as with -m
            run_task(config, jobs=check_sweep(config, kwargs.get("config_name")))
            raise SystemExit(0)
        self._check(config, str(config.hydra.run.dir))
        if config.get("task") == "train":
            try:
                check_job(config)
            except ConfigError as err:
                fail(str(err))
            check_preregistration(config, [(list(config.hydra.overrides.task), config)])
            hold_folder(Path(str(config.hydra.run.dir)))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_folder(Path(str(config.hydra.run.dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_folder(Path(str(config.hydra.sweep.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("task") in ("plan", "preregister"):  # the whole sweep at once: its jobs are not launched
            run_task(config, jobs=check_sweep(config, kwargs.get("config_name")))
            raise SystemExit(0)
        sweep_dir = str(config.hydra.sweep.dir)
        self._check(config, sweep_dir)
        if config.get("task") == "eval":  # ckpt_path=SWEEP_DIR: one job per run of that sweep
            expanded = expand_sweep(list(config.hydra.overrides.task))
            if expanded is not None:
                with read_write(config.hydra):
                    config.hydra.overrides.task = expanded
        if config.get("task") == "train":
            if Path(sweep_dir).is_dir():  # a sweep that runs there refuses this one before the checks
                hold_folder(Path(sweep_dir))
            jobs = check_sweep(config, kwargs.get("config_name"))
            check_preregistration(config, jobs)
            if config.get("experiment_name"):
                plan_before_training(config, jobs, Path(sweep_dir))
            hold_folder(Path(sweep_dir))  # after the checks: a sweep stopped by them creates no folder
        # job folders are named by what varies inside the sweep; what all jobs share names the sweep folder
        _, fixed = split_overrides(list(config.hydra.overrides.task))
        exclude = sorted(RUN_INVARIANT | {o.split("=", 1)[0].lstrip("+~") for o in fixed})
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={hydra_quote(sweep_dir)}")
            config.hydra.overrides.hydra.append(
                f"hydra.job.config.override_dirname.exclude_keys=[{','.join(hydra_quote(k) for k in exclude)}]"
            )

    @staticmethod
    def _check(config: DictConfig, folder: str) -> None:
        if config.get("experiment_name") and not config.get("scale_name"):
            fail(
                f"scale={config.hydra.runtime.choices.get('scale')!r}: experiment={config.experiment_name} "
                f"needs scale={'|'.join(s for s in scales() if s != 'none')}"
            )
        reason = unwritable(Path(folder))
        if reason:
            fail(f"out_root={config.get('out_root')!r}: cannot write the output folder {folder}: {reason}")


def check_preregistration(config: DictConfig, jobs: list[tuple[list[str], Any]]) -> None:
    """A pre-registered experiment's jobs against its pre-registration (prereg.py): one line and exit 2 at the
    first difference; a pilot is said so."""
    path = located(config.hydra)
    if path is None or not path.is_file():
        return
    if not jobs:  # a sweeper whose jobs cannot be listed before they run
        print(
            f"warning: the sweep's jobs cannot be listed before they run: not checked against {path}", file=sys.stderr
        )
        return
    try:
        kind = prereg.check_sweep(path, jobs, config)
    except ConfigError as err:
        fail(f"experiment={config.get('experiment_name')} scale={config.get('scale_name')} {err}")
    if kind == "pilot":
        print(
            f"pilot of {path}: its settings are not checked, and no confirmatory report may use its seeds",
            file=sys.stderr,
            flush=True,
        )


class SweepSummary(HydraCallback):
    """At the end of a training multirun: one table of every job in the sweep folder, failures last.

    Exits with status 1 when any job failed or diverged, after the table is printed.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("task") != "train":
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        from resnext_lab.report.closing import summarize_sweep, write_sweep_report  # pandas, scipy: at the end only

        bad = summarize_sweep(sweep_dir)
        write_sweep_report(sweep_dir, config)
        if bad:
            raise SystemExit(1)
