"""task=plan: every job of a sweep with its complexity and estimated wall time, before anything trains.

    python run.py -m task=plan model.cardinality=1,2,4,32,64 seed=0,1,2
    python run.py -m task=plan experiment=table3 scale=paper plan.device=h100
    make plan EXP=table3 SCALE=cpu

Each step's time comes from one of two models:

- `plan.device=here` (default): measured on this machine (`cost.calibrate`, `cost.overheads`).
- `plan.device=h100|a100|v100`: from exact FLOPs and a stated achieved throughput (`cost.THROUGHPUT`),
  with a floor per step for the host's share (small networks cannot fill a GPU), for budgeting a
  cluster run.

The sweep's wall time spreads the jobs over the launcher's slots (packed: jobs_per_device per device;
local/slurm: all at once, or array_parallelism) longest first. With stacked seeds (`hydra.launcher.stack`),
a stack is one unit: its step is timed as one step of the stacked network (`cost.calibrate(stack=S)`; on a
named device, S times the FLOPs against one floor per step), its fixed cost paid once, and each seed's line
shows its share. Nothing is written but the cache. A paper
table's training sweep prints its plan before its first job (`plan_before_training`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from resnext_lab.config import to_python
from resnext_lab.cost import (
    CACHE,
    JOB_OVERHEAD_S,
    STARTUP_S,
    THROUGHPUT,
    calibrate,
    calibrating,
    flop_step,
    overheads,
    steps,
    world_size,
)
from resnext_lab.errors import ConfigError, fail
from resnext_lab.hardware import cpu_name, resolve_devices, resolve_precision, training_device
from resnext_lab.job import check_job
from resnext_lab.models import complexity
from resnext_lab.overrides import comparable, job_order, override_values, stacks, varying_keys
from resnext_lab.render import terminal
from resnext_lab.results import load_sweep
from resnext_lab.stacking import stackable

#: Where a plan's step times come from: measured here, or a named GPU's stated throughput.
PLAN_DEVICES = ("here", *THROUGHPUT)


@dataclasses.dataclass
class JobPlan:
    overrides: list[str]
    name: str
    params: int
    flops: int
    deviation: float | None  # of the matched quantity from the width=auto reference
    epochs: int
    train_steps: int
    eval_batches: int  # per epoch (validation), the test pass adds test_batches once
    test_batches: int
    seconds: float
    devices: int = 1  # devices x nodes the job trains on (DDP)
    overhead_s: float = JOB_OVERHEAD_S  # of the seconds, those besides the steps
    startup_s: float = STARTUP_S  # per worker process, before its first job
    stack: int = 1  # seeds trained together with it as one stacked network (1: alone)
    unit: int = -1  # the stack it trains in (jobs of one unit run as one); -1: its own


def plan_jobs(
    configs: Sequence[tuple[list[str], Any]],
    device: str,
    slots: int,
    threads: int,
    packed: bool = False,
    stack: int = 1,
) -> list[JobPlan]:
    """One JobPlan per (overrides, composed config); with `stack` > 1, jobs that differ only in seed are priced
    as stacks of up to `stack` (overrides.stacks), each seed with its share of its stack's time."""
    cache: dict[str, Any] = {}
    if device == "here":
        try:
            cache = json.loads(CACHE.read_text())
        except (OSError, ValueError):
            cache = {}
    plans = []
    job_s, startup_s = JOB_OVERHEAD_S, STARTUP_S
    if device == "here" and configs:
        job_s, startup_s = overheads(configs[0][0], to_python(configs[0][1]), cache, packed)
    units = (
        stacks([o for o, _ in configs], stack, [stackable(c) for _, c in configs])
        if stack > 1
        else [[i] for i in range(len(configs))]
    )
    unit_of = {i: (u, len(unit)) for u, unit in enumerate(units) for i in unit}
    for index, (overrides, cfg) in enumerate(configs):
        unit, size = unit_of[index]
        job = check_job(cfg, check_data=False)
        spec = job.spec
        c = complexity(spec)
        resolved = to_python(cfg)
        train_steps, val_batches, test_batches = steps(resolved)
        batch = int(resolved["data"]["batch_size"])
        eval_batch = int(resolved["data"].get("eval_batch_size") or batch)
        deviation = None
        if job.reference is not None:
            deviation = c[job.match] / complexity(job.reference)[job.match] - 1
        if device == "here":
            where = training_device(resolved["trainer"])
            precision, _ = resolve_precision(str(resolved["trainer"]["precision"]), cuda=where == "cuda")
            channels_last = resolved["trainer"].get("channels_last", "auto") in ("auto", True)
            t_train, t_eval = calibrate(spec, batch, precision, channels_last, threads, cache, where, stack=size)
            t_eval *= eval_batch / batch
        else:
            t_train, t_eval = flop_step(c["flops"] * size, batch, device)
        epochs = int(resolved["trainer"]["max_epochs"])
        # the stack's time (its steps and one job's fixed cost), each seed's share of it
        seconds = (epochs * (train_steps * t_train + val_batches * t_eval) + test_batches * t_eval + job_s) / size
        plans.append(
            JobPlan(
                overrides,
                spec.name,
                c["params"],
                c["flops"],
                deviation,
                epochs,
                train_steps,
                val_batches,
                test_batches,
                seconds,
                world_size(resolved["trainer"]),
                job_s,
                startup_s,
                size,
                unit if size > 1 else -1,
            )
        )
    if device == "here":
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache))
    return plans


def sweep_seconds(plans: Sequence[JobPlan], slots: int) -> float:
    """Wall time of the jobs on `slots` parallel workers, each taking the longest job (or stack) left (LPT)."""
    finish = [plans[0].startup_s if plans else STARTUP_S] * max(1, slots)
    units: dict[Any, float] = {}
    for k, p in enumerate(plans):
        key = ("stack", p.unit) if p.unit >= 0 else ("job", k)
        units[key] = units.get(key, 0.0) + p.seconds
    for seconds in sorted(units.values(), reverse=True):
        i = finish.index(min(finish))
        finish[i] += seconds
    return max(finish)


def launcher_stack(hydra_cfg: Mapping[str, Any]) -> Any:
    """`hydra.launcher.stack` of the sweep's launcher (1: every job alone, where the launcher has none)."""
    return (hydra_cfg.get("launcher") or {}).get("stack", 1)


def launcher_slots(hydra_cfg: Mapping[str, Any], jobs: int, assumed_gpus: bool = False) -> tuple[int, int, str]:
    """(parallel jobs, CPU threads per job, description) of the sweep's launcher; `assumed_gpus`: for a named
    device, the packed launcher's devices are that many GPUs (one when it would find none here)."""
    launcher = hydra_cfg.get("launcher") or {}
    target = str(launcher.get("_target_", ""))
    cores = os.cpu_count() or 1
    if "PackedLauncher" in target:
        per = int(launcher.get("jobs_per_device", 2))
        gpus = resolve_devices(launcher.get("devices", "auto"))
        slots = min(jobs, per * max(1, len(gpus)))
        where = f"{max(1, len(gpus))} GPU(s)" if assumed_gpus else f"{len(gpus)} GPU(s)" if gpus else "the CPU"
        return slots, max(1, cores // slots), f"packed: {per} job(s) per device on {where}"
    if "submitit" in target.lower():
        parallel = int(launcher.get("array_parallelism") or jobs)
        return min(jobs, parallel), cores, f"submitit: {min(jobs, parallel)} job(s) at once"
    return 1, cores, "basic: one job after another"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def plan_text(plans: Sequence[JobPlan], device: str, slots: int, launcher: str, match: str = "params") -> str:
    order = job_order([p.overrides for p in plans])
    swept = _swept_names(plans)
    columns = ("job", "network", "params", "GFLOPs", "vs ref", "epochs", "steps", "estimate")
    rows = [
        (
            swept[i],
            plans[i].name,
            f"{plans[i].params:,}",
            f"{plans[i].flops / 1e9:.3f}",
            "-" if plans[i].deviation is None else f"{100 * plans[i].deviation:+.1f}%",
            plans[i].epochs,
            plans[i].train_steps,
            _duration(plans[i].seconds),
        )
        for i in order
    ]
    lines = [terminal(columns, rows, right=columns[2:])]
    total = sweep_seconds(plans, slots)
    job_sum = sum(p.seconds for p in plans)
    device_hours = sum(p.seconds * p.devices for p in plans) / 3600
    per_job = max(p.devices for p in plans)
    if device == "here":
        import torch  # a measured plan has timed networks with it already

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        where = f"measured here ({gpu or cpu_name()}, {os.cpu_count()} cores)"
        assumption = "step times timed on this machine (cached in " + str(CACHE) + ")"
        measured = (plans[0].overhead_s, plans[0].startup_s) != (JOB_OVERHEAD_S, STARTUP_S)  # else the fallback
        overhead = (
            f"{plans[0].overhead_s:.1f} s per job and {plans[0].startup_s:.1f} s per worker besides the steps, "
            + (
                "measured by running the first job for one step"
                if measured
                else "the fixed figures: running the first job for one step failed or took too long here"
            )
        )
    else:
        tflops, floor = THROUGHPUT[device]
        where = f"{per_job} {device.upper()}{'s' if per_job > 1 else ''} per job"
        overhead = f"{JOB_OVERHEAD_S:g} s per job and {STARTUP_S:g} s per worker besides the steps"
        assumption = (
            f"assumed {tflops:g} TFLOP/s achieved in training (6 FLOPs per multiply-add per image), "
            f"at least {floor * 1e3:g} ms per step, packed jobs not slowing each other; small grouped "
            "networks run far below it (a lower bound for them until measured: make gpu-check)"
        )
    lines += [
        f"{len(plans)} jobs on {where}; {launcher}; {assumption}; {overhead}",
        f"estimate: {_duration(total)} wall time for the sweep ({_duration(job_sum)} of job time"
        + (f", {device_hours:.1f} {device.upper()}-hours" if device != "here" else "")
        + ")",
    ]
    far = [swept[i] for i in order if plans[i].deviation is not None and abs(plans[i].deviation) > 0.05]
    if far:
        lines.append(f"warning: {match} more than 5% off the width=auto reference: {', '.join(far)}")
    return "\n".join(lines)


def _swept_names(plans: Sequence[JobPlan]) -> list[str]:
    parsed = [override_values(p.overrides) for p in plans]
    keys = varying_keys(parsed)
    return [",".join(f"{k}={job.get(k)}" for k in keys) or "the job" for job in parsed]


def estimate(
    configs: Sequence[tuple[list[str], Any]], settings: Mapping[str, Any], hydra_cfg: Mapping[str, Any]
) -> tuple[str, float]:
    """The plan of a sweep as printed text, and its estimated wall time in seconds."""
    device = settings.get("device", "here")
    if device not in PLAN_DEVICES:
        raise ConfigError(f"plan.device={device!r}: must be one of {', '.join(PLAN_DEVICES)}")
    slots, threads, launcher = launcher_slots(hydra_cfg, len(configs), assumed_gpus=device != "here")
    packed = "PackedLauncher" in str((hydra_cfg.get("launcher") or {}).get("_target_", ""))
    size, why = stack_size(launcher_stack(hydra_cfg), configs, device, threads)
    if size > 1 or why:
        launcher += f"; {why}"
    plans = plan_jobs(configs, device, slots, threads, packed, size)
    return plan_text(plans, device, slots, launcher), sweep_seconds(plans, slots)


def stack_size(setting: Any, configs: Sequence[tuple[list[str], Any]], device: str, threads: int) -> tuple[int, str]:
    """The stack size a sweep's plan prices, and what the plan says of it ("" for every job alone, as set).

    `auto` is decided here as the launcher decides it (stacking.auto_stack_size); on a named device, where no
    stacked step can be timed, the plan prices the seeds alone and says so."""
    if setting in (1, None):
        return 1, ""
    seeds = max((len(u) for u in stacks([o for o, _ in configs], len(configs) or 1)), default=1)
    if setting == "auto":
        if device != "here":
            return 1, f"hydra.launcher.stack=auto: priced alone (on {device} auto decides where the sweep runs)"
        from resnext_lab.stacking import auto_stack_size

        train = [cfg for _, cfg in configs if stackable(cfg)]
        return auto_stack_size(train[0], seeds, threads) if train else (1, "")
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError(f"hydra.launcher.stack={setting!r}: must be an integer >= 1 or auto")
    return setting, f"stacks of up to {setting} seeds (hydra.launcher.stack={setting}), each stack's step timed as one"


def plan_task(config: DictConfig, jobs: Sequence[tuple[list[str], Any]], hydra_cfg: Mapping[str, Any]) -> str:
    """task=plan: print every job's complexity and estimated time; nothing runs, nothing is written but the
    cache. `jobs`: the sweep's (overrides, composed config), or the one run's; `hydra_cfg`: its hydra node."""
    text, seconds = estimate(jobs, config.get("plan") or {}, hydra_cfg)
    if (config.get("report") or {}).get("sequential") is not None:  # priced at its maximum and expected cost
        from resnext_lab.report import sequential  # scipy and pandas, for a sequential sweep's plan only

        try:
            design = sequential.design_of(config.get("report"))
        except ConfigError as err:
            fail(str(err))
        if design is not None:
            text += "\n" + sequential.price(design, len({cfg.get("seed") for _, cfg in jobs}), seconds)
    print(text, flush=True)
    return text


#: A sweep that its plan prices above this on this machine trains only with sweep.confirm=true (make: CONFIRM=1).
CONFIRM_ABOVE_S = 3600


def plan_before_training(config: DictConfig, jobs: list[tuple[list[str], DictConfig]], sweep_dir: Path) -> None:
    """A paper table's sweep prints its plan, timed on this machine, before its first job; one priced above an
    hour stops there (exit 2) unless sweep.confirm=true. A rerun prices the jobs it has left."""
    if calibrating():  # one of the plan's own calibration sweeps: their one-step jobs need no plan
        return
    done = {
        tuple(comparable(r.get("overrides") or [])) for r in load_sweep(sweep_dir) if r.get("status") == "completed"
    }
    left = [(overrides, cfg) for overrides, cfg in jobs if tuple(comparable(overrides)) not in done]
    if not left:
        return
    try:
        text, seconds = estimate(left, {**(config.get("plan") or {}), "device": "here"}, config.hydra)
    except ConfigError as err:
        fail(str(err))
    if len(left) < len(jobs):
        text += f"\n({len(jobs) - len(left)} of {len(jobs)} jobs completed before: this plan is for the rest)"
    print(text, flush=True)
    if seconds > CONFIRM_ABOVE_S and not config.get("sweep", {}).get("confirm"):
        fail(
            f"sweep.confirm=false: the plan above prices this sweep at {seconds / 3600:.1f} h on this machine; "
            "start it with sweep.confirm=true (make: CONFIRM=1), or pick a smaller SCALE"
        )
