"""Packing (`hydra/launcher=packed`): a sweep's small jobs run several at a time on each GPU of this machine.

A proxy job cannot fill a GPU: its kernels are small and between them the GPU waits for the
job's Python loop. `jobs_per_device` worker processes per GPU fill those gaps. Each worker sees
its one GPU as `cuda:0` (CUDA_VISIBLE_DEVICES), gets an equal share of the CPU cores as its
thread count (OMP_NUM_THREADS), and runs one job after another as Hydra's basic launcher does
in its single process: imports and CUDA start-up are paid once per worker, not once per job.
A worker that finishes a job takes the next one at once; there is no batch to wait for. The jobs
start longest first (by multiply-adds, `plan.work`), so that the last one does not run alone while
the other workers idle. Every job's config is composed before the first job starts, so a sweep runs
the conf/ it started with, whatever is edited while it runs. Without GPUs, `jobs_per_device` workers
share the CPU. A worker whose sweep process is killed interrupts its job as Ctrl-C would (recorded,
resumable) and exits.

Workers' output goes to `<sweep dir>/.packed/worker-<k>.log`; each job also writes its own
log in its folder, as in any sweep. What a job computes does not depend on the packing: the
same config, seed and folder as with any other launcher.

Stacked seeds (`hydra.launcher.stack=N`): jobs whose overrides differ only in `seed` go to a worker together,
up to N at a time, and train as one stacked network (hydra_plugins/resnext_lab/stacks.py); each still has its
own folder, results.json and JobReturn.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import psutil
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from hydra_plugins.resnext_lab.stacks import resolve_size, run_stack, stack_setting, sweep_stacks
from resnext_lab import interrupts
from resnext_lab.cost import work
from resnext_lab.errors import Stop, fail, stop
from resnext_lab.files import fail_unwritable
from resnext_lab.hardware import resolve_devices
from resnext_lab.results import record_lost_job

log = logging.getLogger("resnext_lab.packed")

CPU = -1  # the device of a worker that gets no GPU


class PackedLauncher(Launcher):
    """Runs a sweep's jobs on `jobs_per_device` worker processes per device; a free worker takes the next job."""

    def __init__(self, jobs_per_device: int = 2, devices: Any = "auto", stack: Any = 1) -> None:
        if isinstance(jobs_per_device, bool) or not isinstance(jobs_per_device, int) or jobs_per_device < 1:
            fail(f"hydra.launcher.jobs_per_device={jobs_per_device!r}: must be an integer >= 1")
        self.jobs_per_device = jobs_per_device
        self.devices = devices
        self.stack = stack_setting(stack)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function
        self.gpus = resolve_devices(self.devices)  # before the sweep starts: a bad value stops it here

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        """One job's config, as Hydra's basic launcher composes it."""
        assert self.hydra_context is not None and self.config is not None
        return self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))

    def run_one(self, overrides: Sequence[str], idx: int, sweep_config: DictConfig | None = None) -> JobReturn:
        """One job, in a worker: what Hydra's basic launcher does for each job of its sweep."""
        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        if sweep_config is None:
            sweep_config = self.compose(overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        ret = run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=sweep_config,
            job_dir_key="hydra.sweep.dir",
            job_subdir_key="hydra.sweep.subdir",
        )
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def run_unit(self, jobs: Sequence[tuple[list[str], int, DictConfig | None]]) -> list[JobReturn]:
        """One job alone, or a stack of seeds (stacks.run_stack): one JobReturn per job, in order."""
        if len(jobs) == 1:
            overrides, idx, config = jobs[0]
            return [self.run_one(overrides, idx, config)]
        assert self.hydra_context is not None and self.config is not None
        composed = [(o, idx, c if c is not None else self.compose(o)) for o, idx, c in jobs]
        return run_stack(self.hydra_context, self.config, composed)

    def _composed(self, job_overrides: Sequence[Sequence[str]]) -> list[DictConfig | None]:
        """Every job's config, composed before the first job starts: a sweep runs the conf/ it started with,
        whatever is edited while it runs. None for a job that does not compose (its worker reports why)."""
        configs: list[DictConfig | None] = []
        for overrides in job_overrides:
            try:
                configs.append(self.compose(overrides))
            except Exception:  # noqa: BLE001
                configs.append(None)
        return configs

    @staticmethod
    def _longest_first(configs: Sequence[DictConfig | None], units: Sequence[list[int]]) -> list[list[int]]:
        """The units (a job, or a stack of jobs), most work first (`plan.work`, a stack's summed over its seeds),
        so that no worker idles at the end while one long job runs alone. A job that did not compose counts as
        no work; where one does not check (`sweep.skip_invalid`), the sweep's order."""

        try:
            costs = [work(c) if c is not None else 0.0 for c in configs]
        except Exception:  # noqa: BLE001  (the job itself reports what is wrong with it)
            return list(units)
        return sorted(units, key=lambda u: -sum(costs[i] for i in u))  # stable: equal work keeps sweep order

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import cloudpickle

        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        gpus = self.gpus
        # interleaved, so that the first jobs spread over the GPUs; never more workers than jobs
        devices = [g for _ in range(self.jobs_per_device) for g in gpus] or [CPU] * self.jobs_per_device
        configs = self._composed(job_overrides)
        threads = max(1, (os.cpu_count() or 1) // len(devices[: len(job_overrides)]))
        size, why = resolve_size(self.stack, job_overrides, configs, threads)
        units = sweep_stacks(job_overrides, configs, size)
        devices = devices[: len(units)]
        threads = max(1, (os.cpu_count() or 1) // len(devices))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        where = f"on each of GPUs {', '.join(map(str, gpus))}" if gpus else "on the CPU"
        stacked = sum(len(u) > 1 for u in units)
        if self.stack != 1:
            log.info(f"stacked seeds: {why}")
        log.info(
            f"packed sweep: {len(job_overrides)} jobs, {self.jobs_per_device} at a time {where}, "
            f"{threads} CPU thread{'s' if threads > 1 else ''} each; worker logs in {sweep_dir / '.packed'}"
            + (
                f"; {sum(len(u) for u in units if len(u) > 1)} of them in {stacked} stacks of seeds ({why})"
                if stacked
                else ""
            )
        )
        payload = sweep_dir / ".packed" / "launcher.pkl"  # read by each worker as it starts: no pipe to fill
        try:
            payload.parent.mkdir(parents=True, exist_ok=True)
            # Hydra's global state (its config, the job runtime) goes with the launcher, as Hydra's own joblib and
            # ray launchers send it to their workers: Singleton.get_state/set_state
            payload.write_bytes(cloudpickle.dumps((self, Singleton.get_state())))
        except OSError as err:
            fail_unwritable(err, payload.parent)
        names = _swept(job_overrides)
        workers = [
            _Worker(k, device, threads, sweep_dir / ".packed" / f"worker-{k}.log", payload)
            for k, device in enumerate(devices)
        ]
        pending = deque(self._longest_first(configs, units))
        results: list[JobReturn | None] = [None] * len(job_overrides)
        start = time.perf_counter()
        try:
            with interrupts.job_running():  # Ctrl-C, SIGTERM: every running job is interrupted and recorded
                while pending or any(w.job is not None for w in workers):
                    for w in workers:
                        if w.job is None and pending:
                            unit = pending.popleft()
                            w.start_job(unit, [(list(job_overrides[i]), initial_job_idx + i, configs[i]) for i in unit])
                            for i in unit:
                                together = (
                                    f" (stacked with #{', #'.join(str(initial_job_idx + j) for j in unit if j != i)})"
                                )
                                log.info(
                                    f"\t#{initial_job_idx + i} {names[i]}: started on {w.where}"
                                    + (together if len(unit) > 1 else "")
                                )
                    busy = [w for w in workers if w.job is not None]
                    wait([c for w in busy for c in (w.conn, w.process.sentinel)])
                    for w in busy:
                        if not (w.conn.poll() or not w.process.is_alive()):
                            continue
                        unit, began = w.job  # type: ignore[misc]
                        replies = w.collect([job_overrides[i] for i in unit], sweep_dir)
                        if isinstance(replies, Stop):  # the job cannot go on, nor can the others (errors.Stop)
                            _halt(workers, names, signal.SIGINT)
                            print(replies.line, file=sys.stderr, flush=True)
                            raise replies
                        for i, reply in zip(unit, replies, strict=True):
                            results[i] = reply
                            done = sum(r is not None for r in results)
                            log.info(
                                f"\t#{initial_job_idx + i} {names[i]}: {_outcome(reply)} after "
                                f"{time.perf_counter() - began:.0f} s [{done}/{len(results)} done, "
                                f"{time.perf_counter() - start:.0f} s]"
                            )
                        _record_rss(sweep_dir, w, initial_job_idx + unit[-1], done)
        except KeyboardInterrupt:
            stopped = _halt(workers, names, interrupts.received())
            jobs = (
                f"{len(stopped)} running job(s) ({', '.join(stopped)}) recorded as interrupted"
                if stopped
                else "no job was running"
            )
            stop(
                f"interrupted ({interrupts.name()}): {jobs}; finished jobs are kept: run the same command again to "
                "resume",
                interrupts.status(),
            )
        finally:
            for w in workers:
                w.stop()
        return [r for r in results if r is not None]


def _halt(workers: Sequence[_Worker], names: Sequence[str], signum: int, timeout_s: float = 60) -> list[str]:
    """Interrupt every running job (as Ctrl-C would: recorded as interrupted, resumable) and wait for each to say
    so; the names of those jobs. A worker that got the signal itself ignores this second one."""
    busy = [w for w in workers if w.job is not None]
    for w in busy:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.process.pid, signum)
    deadline = time.monotonic() + timeout_s
    for w in busy:
        wait([w.conn, w.process.sentinel], timeout=max(0.0, deadline - time.monotonic()))
        if w.conn.poll() or not w.process.is_alive():
            with contextlib.suppress(EOFError, OSError, pickle.UnpicklingError):
                w.conn.recv_bytes()
            w.job = None
    return [names[i] for w in busy for i in w.last]


def _record_rss(sweep_dir: Path, worker: _Worker, job: int, done: int) -> None:
    """One line of `.packed/rss.jsonl` per finished job: the resident memory of the worker that ran it, as it
    waits for the next (what `make soak` reads: a worker must not grow from job to job)."""
    import json

    try:
        rss_kb = psutil.Process(worker.process.pid).memory_info().rss // 1024
    except psutil.Error:  # the worker is gone
        return
    line = json.dumps({"job": job, "worker": worker.number, "pid": worker.process.pid, "rss_kb": rss_kb, "done": done})
    with contextlib.suppress(OSError), (sweep_dir / ".packed" / "rss.jsonl").open("a") as out:
        out.write(line + "\n")


class _Worker:
    """One worker process bound to one device, with the pipe its jobs go through."""

    def __init__(self, number: int, device: int, threads: int, log_path: Path, payload: Path) -> None:
        self.number, self.device, self.log_path, self.payload = number, device, log_path, payload
        self.env = {"OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": "" if device == CPU else str(device)}
        self.where = "the CPU" if device == CPU else f"GPU {device}"
        self.job: tuple[list[int], float] | None = None
        self.last: list[int] = []  # the indices of the last jobs it was given (one, or a stack)
        self._spawn()

    def _spawn(self) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no CUDA state inherited
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve,
            args=(child, self.env, str(self.log_path), str(self.payload)),
            name=f"packed-worker-{self.number}",
            daemon=False,
        )
        self.process.start()
        child.close()

    def start_job(self, unit: list[int], jobs: list[tuple[list[str], int, DictConfig | None]]) -> None:
        """Give the worker one job, or a stack of jobs (`unit`: their indices in the sweep)."""
        if not self.process.is_alive():
            self._spawn()
        self.job = (unit, time.perf_counter())
        self.last = unit
        self.conn.send_bytes(pickle.dumps(jobs))

    def collect(self, unit: Sequence[Sequence[str]], sweep_dir: Path) -> list[JobReturn] | Stop:
        """Each job's JobReturn, or the Stop that ended them (errors.Stop: the sweep ends). A worker that died
        in a job (killed, out of memory) fails every job it was running: in its results.json when it has one
        (the sweep's table then reports it, as any failed training job), else as a failed JobReturn, which
        Hydra raises at the end of the sweep."""
        import cloudpickle

        self.job = None
        try:
            return cloudpickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            self.process.join(timeout=5)
            code = self.process.exitcode
            why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            error = f"worker {self.number} ended ({why}) during the job; its output: {self.log_path}"
            replies: list[JobReturn] = []
            for overrides in unit:
                log.error(f"\t{' '.join(filter_overrides(list(overrides)))}: {error}")
                if record_lost_job(sweep_dir, list(overrides), error):
                    replies.append(_job_return(overrides, JobStatus.COMPLETED, {"status": "failed", "error": error}))
                else:
                    replies.append(_job_return(overrides, JobStatus.FAILED, RuntimeError(error)))
            return replies

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError):
                self.conn.send_bytes(b"")
            self.process.join(timeout=30 if self.job is None else 10)  # interrupted jobs record it
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)


def _serve(conn: Connection, env: dict[str, str], log_path: str, payload: str) -> None:
    """A worker's life: set its device and threads before torch starts, then run jobs until told to stop."""
    import cloudpickle

    os.environ.update(env)
    out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(out, 1)
    os.dup2(out, 2)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    launcher, state = cloudpickle.loads(Path(payload).read_bytes())
    Singleton.set_state(state)
    setup_globals()
    interrupts.install()
    threading.Thread(target=_interrupt_when_orphaned, args=(os.getppid(),), daemon=True).start()
    try:
        while message := conn.recv_bytes():
            jobs = pickle.loads(message)
            try:
                rets = launcher.run_unit(jobs)
            except Stop as stopped:  # the job ended the sweep (errors.Stop): the sweep's process says why
                conn.send_bytes(cloudpickle.dumps(stopped))
                return
            conn.send_bytes(cloudpickle.dumps([_picklable(ret) for ret in rets]))
    except (KeyboardInterrupt, Stop, EOFError, BrokenPipeError):  # the sweep was stopped, or its process is gone
        return


def _picklable(ret: JobReturn) -> JobReturn:
    """`ret`, with an exception that does not pickle replaced by its text."""
    import cloudpickle

    try:
        cloudpickle.dumps(ret)
    except Exception as err:
        try:
            ret.return_value  # noqa: B018  (a failed job's value is its exception, raised on access)
        except Exception as exc:
            ret.return_value = RuntimeError(f"{type(exc).__name__}: {exc} ({err})")
    return ret


def _interrupt_when_orphaned(parent: int) -> None:
    """Interrupt this worker, as Ctrl-C would, once the sweep's process is gone (killed, it could not stop
    its workers): the running job is recorded as interrupted, resumable, and the worker exits."""
    while os.getppid() == parent:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGINT)


def _job_return(overrides: Sequence[str], status: JobStatus, value: Any) -> JobReturn:
    ret = JobReturn(overrides=list(overrides), status=status)
    ret.return_value = value
    return ret


def _outcome(ret: JobReturn) -> str:
    """What became of a job: the task's own `status` when it returns one (training runs do), else Hydra's."""
    value = ret.return_value if ret.status == JobStatus.COMPLETED else None
    return str(value.get("status")) if isinstance(value, dict) and value.get("status") else ret.status.name.lower()


def _swept(job_overrides: Sequence[Sequence[str]]) -> list[str]:
    """Each job's overrides that differ between jobs (all of them when there is one job), for the log."""
    jobs = [filter_overrides(list(o)) for o in job_overrides]
    shared = set.intersection(*(set(j) for j in jobs)) if len(jobs) > 1 else set()
    return [" ".join(o for o in j if o not in shared) for j in jobs]
