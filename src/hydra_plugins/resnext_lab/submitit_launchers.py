"""Hydra's submitit launchers (`hydra/launcher=local`, `hydra/launcher=slurm`) with the project's one-line stops.

A job that must end the sweep (an output folder that cannot be written, SIGINT or SIGTERM, a bad setting: see
`resnext_lab.errors.Stop`) raises a SystemExit. In a submitit job that leaves no result, and the sweep's process
ended in submitit's UncompletedJobError and a traceback. Here the job returns its Stop as its result, and the
sweep's process, once every job has ended, prints the first one's line and exits with its status, as the basic
and packed launchers do. Where the disk is full submitit cannot write a result at all: the sweep's process finds
that out itself (files.fail_unwritable) and says so in one line.

Ctrl-C. Local jobs run under submitit's job controllers, which on Ctrl-C kill their job a second after asking it
to stop, before it has recorded anything, and print tracebacks. Here the controllers ignore SIGINT (a shell trap
before they start); each job handles Ctrl-C as the basic launcher's would (recorded as interrupted, resumable),
and the sweep's process says so in one line once every job has ended; a SIGINT or SIGTERM to the sweep's process
alone is passed on to its jobs. A job inherits the controllers' trap, so until its handler is installed it cannot
hear the signal: the sweep's process leaves a file (`.submitit/interrupted`) before passing the signal on, which
a job that starts late reads. SLURM jobs do not see the terminal's Ctrl-C: the sweep's process stops waiting,
says that they go on, and how to stop them.
conf/hydra/launcher/{local,slurm}.yaml select these classes.

Stacked seeds (`hydra.launcher.stack=N`, hydra_plugins/resnext_lab/stacks.py): jobs whose overrides differ only
in `seed` go to one submitit job (one array task on SLURM), up to N at a time, and train as one stacked network;
each keeps its own folder, results.json and JobReturn. A pre-empted or timed-out stack is requeued whole, as a
lone job is, and resumes each seed from its own checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import psutil
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, setup_globals
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from omegaconf import OmegaConf

from hydra_plugins.resnext_lab.stacks import resolve_size, run_stack, stack_setting, sweep_stacks
from resnext_lab import interrupts
from resnext_lab.errors import Stop, stop
from resnext_lab.files import fail_unwritable

_IGNORE_INT = "trap '' INT"


class _OneLineStops(submitit_launcher.BaseSubmititLauncher):
    def __init__(self, **params: Any) -> None:
        self.stack = stack_setting(params.pop("stack", 1))  # ours, not an executor parameter of submitit's
        super().__init__(**params)

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn | list[JobReturn] | Stop:  # type: ignore[override]
        try:
            if isinstance(args[2] if len(args) > 2 else kwargs.get("job_num"), list):  # a stack (_launch_stacks)
                return self._run_stack(*args, **kwargs)
            return super().__call__(*args, **kwargs)
        except Stop as stopped:  # the job printed its line in its own log; the sweep's process says it again
            return stopped

    def _run_stack(
        self,
        sweep_overrides: list[list[str]],
        job_dir_key: str,
        job_num: list[int],
        job_id: str,
        singleton_state: dict[Any, Any],
    ) -> list[JobReturn]:
        """In the submitit job: the stack's jobs composed as submitit's own __call__ composes one, then trained
        as one stacked network (stacks.run_stack)."""
        assert self.hydra_context is not None and self.config is not None
        Singleton.set_state(singleton_state)
        setup_globals()
        loader = self.hydra_context.config_loader
        jobs = [(o, n, loader.load_sweep_config(self.config, o)) for o, n in zip(sweep_overrides, job_num, strict=True)]
        return run_stack(self.hydra_context, self.config, jobs)

    def _launch_stacks(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any] | None:
        """Each job's result, where the sweep has stacks to run (None: every job alone, submitit's own launch).
        Submitit's launch, with one submitit job per stack."""
        import submitit
        from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

        if self.stack == 1:
            return None
        assert self.hydra_context is not None and self.config is not None
        loader = self.hydra_context.config_loader
        configs = []
        for overrides in job_overrides:
            try:
                configs.append(loader.load_sweep_config(self.config, list(overrides)))
            except Exception:  # noqa: BLE001  (the job itself reports what is wrong with it)
                configs.append(None)
        size, why = resolve_size(self.stack, job_overrides, configs, os.cpu_count() or 1)
        submitit_launcher.log.info(f"stacked seeds: {why}")
        units = sweep_stacks(job_overrides, configs, size)
        if all(len(u) == 1 for u in units):
            return None
        params = self.params
        init_keys = {"max_num_timeout", "submitit_folder"}
        init = {"folder": params["submitit_folder"]}
        init.update({f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k == "max_num_timeout"})
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init)
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in base else f"{self._EXECUTOR}_{k}": v for k, v in params.items() if k not in init_keys}
        )
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        job_params = []
        for unit in units:
            nums = [initial_job_idx + i for i in unit]
            for i in unit:
                submitit_launcher.log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}")
            if len(unit) == 1:
                job_params.append((list(job_overrides[unit[0]]), "hydra.sweep.dir", nums[0], f"job_id_for_{nums[0]}"))
            else:
                stacked = [list(job_overrides[i]) for i in unit]
                job_params.append((stacked, "hydra.sweep.dir", nums, f"job_id_for_{nums[0]}"))
        state = Singleton.get_state()
        jobs = executor.map_array(self, *zip(*[(*p, state) for p in job_params], strict=True))
        returns: list[Any] = [None] * len(job_overrides)
        for unit, job in zip(units, jobs, strict=True):
            result = job.results()[0]
            for k, i in enumerate(unit):
                returns[i] = result[k] if isinstance(result, list) else result
        return returns

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from submitit.core.utils import UncompletedJobError

        assert self.config is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        try:
            with interrupts.job_running():  # Ctrl-C while the jobs run: _interrupted
                returns = self._launch_stacks(job_overrides, initial_job_idx)
                if returns is None:
                    returns = super().launch(job_overrides, initial_job_idx)
        except KeyboardInterrupt:
            self._interrupted(sweep_dir)
        except UncompletedJobError as err:  # on a full disk submitit cannot write the job's result either
            fail_unwritable(err, sweep_dir)
        stopped = [r for r in returns if isinstance(r, Stop)]
        if stopped:
            stop(stopped[0].line, int(stopped[0].code or 2))
        return returns

    def _interrupted(self, sweep_dir: Path) -> NoReturn:
        """SLURM's jobs run on, where the terminal's Ctrl-C does not reach them."""
        stop(
            f"interrupted ({interrupts.name()}): this process stopped waiting; the sweep's SLURM jobs go on "
            f"(squeue --me lists them, scancel stops them) and write to {sweep_dir}: run the same command again "
            "once they have ended",
            interrupts.status(),
        )


class LocalLauncher(_OneLineStops, submitit_launcher.LocalLauncher):
    _EXECUTOR = "local"

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn | Stop:  # type: ignore[override]
        # in the job's own process, as run.py does (not on SLURM, where submitit's handlers requeue pre-empted jobs)
        interrupts.install()
        try:
            if self._interrupted_file().exists():
                signal.raise_signal(signal.SIGINT)  # the sweep's, sent before this job could hear it: as if now
        except Stop as stopped:
            return stopped
        return super().__call__(*args, **kwargs)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup = list(self.params.get("setup") or [])
        self.params["setup"] = setup if _IGNORE_INT in setup else [_IGNORE_INT, *setup]  # controllers ignore Ctrl-C
        with contextlib.suppress(OSError):  # an earlier run's; a folder that cannot be written is said later
            self._interrupted_file().unlink(missing_ok=True)
        return super().launch(job_overrides, initial_job_idx)

    def _interrupted(self, sweep_dir: Path) -> NoReturn:
        """Ctrl-C reached the jobs too; a signal to this process alone (`timeout`, `kill`) is passed on as
        Ctrl-C to the processes under it, and this process says so once they have all ended, every job
        recorded (a Ctrl-C again stops the waiting)."""
        with contextlib.suppress(OSError):  # a full disk: the jobs that can hear the signal still stop
            self._interrupted_file().parent.mkdir(parents=True, exist_ok=True)
            self._interrupted_file().touch()
        left = _stop_jobs()
        running = f"; {left} job process(es) still recording themselves" if left else ""
        stop(
            f"interrupted ({interrupts.name()}): the sweep's running jobs are stopped and record themselves as "
            f"interrupted in {sweep_dir}{running}; finished jobs are kept: run the same command again to resume",
            interrupts.status(),
        )

    def _interrupted_file(self) -> Path:
        """Left by an interrupted sweep's process for its jobs that had not installed their handler yet,
        beside the jobs' submitit folders (`<sweep>/.submitit/interrupted`)."""
        return Path(str(self.params["submitit_folder"])).parent / "interrupted"


def _stop_jobs() -> int:
    """Pass SIGINT on to every process under this one that the terminal's Ctrl-C would reach (those in this
    process group: W&B's service runs in its own session, and a job needs it to close its run), those that
    start meanwhile too, and wait until all have ended. Returns how many were left when a second signal
    stopped the waiting (0: all ended)."""
    again: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: again.append(signum)) for s in interrupts.SIGNALS}
    try:
        signalled: set[int] = set()
        while alive := _descendants(os.getpid(), os.getpgrp()):
            if again:
                return len(alive)
            for pid in set(alive) - signalled:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGINT)
                signalled.add(pid)
            time.sleep(0.1)
        return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _descendants(pid: int, group: int) -> list[int]:
    """Every live process under `pid` in process group `group` (psutil: /proc on Linux, the kernel's own calls
    elsewhere); none once `pid` is gone. A zombie has ended and waits to be reaped: not counted."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    found = []
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE and os.getpgid(child.pid) == group:
                found.append(child.pid)
        except (psutil.Error, ProcessLookupError):  # gone meanwhile
            continue
    return found


class SlurmLauncher(_OneLineStops, submitit_launcher.SlurmLauncher):
    _EXECUTOR = "slurm"
