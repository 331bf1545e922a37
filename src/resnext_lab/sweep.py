"""Hydra's side of a sweep: folder names and job identity (the resolvers, the rerun check), the output folder
checked and pinned before jobs start, the closing table after.

Kept free of torch and Lightning: Hydra loads these callbacks for every command, `task=complexity` included.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from resnext_lab.errors import fail, first_line

#: Overrides that do not change what a job computes: left out of job folder names and of the check that a
#: rerun finds the same job in its folder.
RUN_INVARIANT = frozenset(
    {
        "name",
        "out_root",
        "resume",
        "experiment",
        "scale",
        "trainer.accelerator",
        "trainer.enable_progress_bar",
        "trainer.progress_bar_interval_s",
        "logger.wandb.mode",
        "sweep.skip_invalid",
        "report.baseline",
        "report.min_effect",
        "report.test",
        "report.exclude",
        "report.alpha",
        "sweep.confirm",
    }
)


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Command-line overrides as (swept, fixed); fixed leaves out run-invariant and hydra.* settings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept, fixed = [], []
    for text, parsed in zip(overrides, OverridesParser.create().parse_overrides(list(overrides)), strict=True):
        key = parsed.key_or_group
        if key in RUN_INVARIANT or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        (swept if parsed.is_sweep_override() else fixed).append(text)
    return swept, fixed


def comparable(overrides: Sequence[str]) -> list[str]:
    """A job's overrides as they decide what it computes (for the rerun check)."""
    swept, fixed = split_overrides(overrides)
    return sorted(swept + fixed)


def check_same_job(previous: Mapping[str, Any], overrides: Sequence[str], run_dir: Path, reusable: bool) -> None:
    """A folder's finished or resumable job must be this one: never skip or resume another config's run.

    `reusable`: the folder holds something a rerun would take over (a completed run or a checkpoint).
    """
    if not reusable:
        return  # nothing to reuse: this job starts afresh in the folder
    before, now = comparable(previous.get("overrides") or []), comparable(overrides)
    if before != now:
        changed = sorted(set(before) ^ set(now))
        fail(
            f"{run_dir} holds a run with other settings ({', '.join(changed)}); "
            "give the sweep another name=..., or out_root=..., or resume=false to train it again there"
        )


# --- folder names: the resolvers of conf/config.yaml's hydra.sweep.dir and subdir -----------------------------


_UNSAFE = re.compile(r"[^A-Za-z0-9_.,=+-]+")


def _safe(text: str, limit: int = 120) -> str:
    """A folder name from override text; long names keep a hash so they stay unique."""
    name = _UNSAFE.sub("_", text).strip("_") or "default"
    if len(name) > limit:
        name = f"{name[: limit - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def sweep_dir(name: Any, experiment: Any, scale: Any, overrides: Sequence[str] | None) -> str:
    """The sweep's folder: `<experiment>/<scale>`, else `name`, else `sweeps/<swept overrides>[__<hash>]`.

    The hash stands for the overrides all jobs share, so the same sweep over other
    settings gets its own folder; jobs are then named by what they sweep alone.
    """
    if experiment:
        return f"{experiment}/{scale or 'default'}"
    if name:
        return _safe(str(name))
    swept, fixed = split_overrides(list(overrides or ()))
    folder = _safe("_".join(sorted(swept)) or "default")
    if fixed:
        folder += "__" + hashlib.sha1("\n".join(sorted(fixed)).encode()).hexdigest()[:8]
    return "sweeps/" + folder


def job_dir(override_dirname: str) -> str:
    return _safe(override_dirname)


def register_resolvers() -> None:
    for name, fn in (("sweep_dir", sweep_dir), ("job_dir", job_dir)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


COLUMNS = ("job", "C", "d", "depth", "params", "GFLOPs", "test top-1 err %", "epochs", "status")


def _row(run_dir: Path, sweep_dir: Path, result: dict[str, Any]) -> tuple[str, ...]:
    m, model = result.get("metrics") or {}, result.get("model") or {}
    err = m.get("test/top1_err")
    return (
        str(run_dir.relative_to(sweep_dir)),
        str(model.get("cardinality", "?")),
        str(model.get("width", "?")),
        str(model.get("depth", "?")),
        f"{model['params']:,}" if "params" in model else "?",
        f"{model['flops'] / 1e9:.3f}" if "flops" in model else "?",
        f"{err:.2f}" if isinstance(err, int | float) else "-",
        str(result.get("epochs", "-")),
        str(result.get("status", "?")),
    )


def _value_key(text: str) -> tuple[int, float, str]:
    """Numbers by value, before any text; text as written."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def override_values(job: Sequence[str]) -> dict[str, str]:
    """A job's `key=value` overrides as {key: value}, in command-line order."""
    return dict(o.split("=", 1) for o in job if "=" in o)


def varying_keys(parsed: Sequence[Mapping[str, str]]) -> list[str]:
    """The keys whose values differ between jobs, in command-line order."""
    keys: list[str] = list(dict.fromkeys(k for job in parsed for k in job))
    return [k for k in keys if len({job.get(k) for job in parsed}) > 1]


def job_order(overrides: Sequence[Sequence[str]]) -> list[int]:
    """Indices of jobs sorted by their swept values: keys in command-line order, numbers numerically."""
    parsed = [override_values(job) for job in overrides]
    swept = varying_keys(parsed)
    return sorted(range(len(parsed)), key=lambda i: [_value_key(parsed[i].get(k, "")) for k in swept])


def summarize_sweep(sweep_dir: Path) -> list[str]:
    """Print the sweep's table, jobs in the order of their swept values; return the jobs that did not complete."""
    from resnext_lab.results import load_sweep

    found = load_sweep(sweep_dir)
    jobs = [(found[i].pop("_dir"), found[i]) for i in job_order([r.get("overrides") or [] for r in found])]
    rows, bad = [], []
    for run_dir, result in jobs:
        rows.append(_row(run_dir, sweep_dir, result))
        if result.get("status") != "completed":
            bad.append(f"{run_dir.relative_to(sweep_dir)}: {result.get('status')}: {result.get('error') or ''}")
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(COLUMNS)]
    lines = [
        f"sweep {sweep_dir} ({len(rows)} jobs)",
        "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    if bad:
        lines.append(f"{len(bad)} job(s) did not complete:")
        lines += [f"  {b}" for b in bad]
    print("\n".join(lines), flush=True)
    return bad


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides, as Hydra's basic sweeper will launch them (None for sweeps it cannot expand).

    The sweeper's `params` come first, then the command line's overrides; a later override of the same
    key replaces the earlier; the jobs are the product of every key's values.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    node = config.hydra.sweeper.get("params")
    params = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    texts = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(texts):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                return None
            choices[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def check_sweep(config: DictConfig, config_name: str | None) -> list[tuple[list[str], DictConfig]]:
    """Compose and validate every job of a training sweep before the first starts; exit 2 if any is invalid.

    With `sweep.skip_invalid=true` the invalid jobs are only listed: they run, fail at once, are recorded
    as failed, and the sweep exits 1 at the end. Returns the valid jobs' (overrides, composed config).
    """
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from resnext_lab.config import check_job, validate
    from resnext_lab.errors import ConfigError, first_line

    jobs = sweep_jobs(config)
    if not jobs:
        return []
    # where configs are found: a job composes with the command line's hydra.searchpath, as the launcher's will
    searchpath = [o for o in config.hydra.overrides.hydra if o.split("=", 1)[0].lstrip("+~") == "hydra.searchpath"]
    invalid, composed = [], []
    for overrides in jobs:
        try:
            cfg = compose(config_name=config_name, overrides=[*searchpath, *overrides])
            validate(cfg)  # settings first: cheap, no torch import
            composed.append((overrides, cfg))
        except (ConfigError, HydraException, OmegaConfBaseException) as err:  # one line each
            invalid.append((overrides, first_line(err)))
    for overrides, cfg in composed if not invalid else ():
        try:
            check_job(cfg, check_data=cfg.get("task") != "plan")  # a plan may be for data that lives elsewhere
        except ConfigError as err:
            invalid.append((overrides, first_line(err)))
    if not invalid:
        return composed
    swept, _ = split_overrides(list(config.hydra.overrides.task))
    varying = {o.split("=", 1)[0] for o in swept} | set((config.hydra.sweeper.get("params") or {}).keys())
    lines = []
    for overrides, reason in invalid:
        named = [o for o in overrides if o.split("=", 1)[0] in varying]
        lines.append(f"job {' '.join(named)}: {reason}" if named else reason)
    if config.get("sweep", {}).get("skip_invalid"):
        for line in lines:
            print(f"warning: {line} (sweep.skip_invalid=true: it will be recorded as failed)", file=sys.stderr)
        bad = [o for o, _ in invalid]
        return [(o, c) for o, c in composed if o not in bad]
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    print(
        f"{len(invalid)} of {len(jobs)} job(s) invalid, nothing was run: fix them, or set sweep.skip_invalid=true "
        "to run the valid ones and record the others as failed",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(2)


def unwritable(folder: Path) -> str | None:
    """Why `folder` cannot be created and written, else None: tried for real, then cleaned up.

    Permission bits say little to root (containers, cluster nodes), so the nearest existing
    ancestor gets a temporary folder made in it and removed again.
    """
    path = folder.absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return None
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".resnext-write-check-").cleanup()
    except OSError as err:
        return f"cannot create a folder in {existing} ({err.strerror or type(err).__name__})"
    return None


#: The file in a run's or sweep's folder that its process holds while it runs (filelock: flock), saying who it is.
LOCK = ".lock"
_held: dict[str, tuple[Any, Path]] = {}  # folder -> (its FileLock, the nearest folder above it that existed before)


def _holder(path: Path) -> dict[str, Any]:
    """What a lock file says of its holder: pid, host, since, command ({} when empty or unreadable)."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _other_rank() -> bool:
    """A DDP process other than rank zero (Lightning starts ranks > 0 with the run's own command line)."""
    rank = next((os.environ[k] for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID") if k in os.environ), "0")
    return rank.isdigit() and int(rank) > 0


def hold_folder(folder: Path) -> None:
    """Hold `folder` for as long as this run or sweep runs: a second one started on it refuses at once (exit 2),
    naming the holder's pid. The lock is an flock on `<folder>/.lock`, which the kernel drops however its
    process ends, so a lock left by a killed run is free and taken over (said in one line). The file names the
    holder while it runs and is emptied when it ends. Jobs do not take it: a sweep's jobs run under its lock,
    whichever launcher runs them, and so do the ranks > 0 of a DDP run.
    """
    from filelock import FileLock, Timeout

    if _other_rank() or str(folder) in _held:
        return
    path = Path(folder) / LOCK
    me = {
        "pid": os.getpid(),
        "host": platform.node(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }

    def claim(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)

    existed = next(p for p in (path.parent.absolute(), *path.parent.absolute().parents) if p.exists())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        left = _holder(path)  # a killed holder's; a holder that ended emptied the file
        lock = FileLock(path, on_acquired=claim, preserve_lock_file=True)
        lock.acquire(blocking=False)
    except Timeout:
        holder = _holder(path)
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
        fail(
            f"{folder} is in use by another run ({who}): wait for it to end, or give this one another "
            "name=... or out_root=..."
        )
    except OSError as err:
        from resnext_lab.files import output_fault

        why, remedy = output_fault(err, path.parent) or (f"cannot lock it ({first_line(err)})", "check the folder")
        fail(f"{why}: cannot write {folder}: {remedy}, then run the same command again")
    if left.get("pid") not in (None, os.getpid()):
        print(
            f"note: {folder} was held by pid {left['pid']} on {left.get('host', '?')}, which ended without "
            "letting go (killed?); taken over",
            file=sys.stderr,
            flush=True,
        )
    _held[str(folder)] = (lock, existed)
    atexit.register(release_folder, folder)


def release_folder(folder: Path) -> None:
    """Let go of a folder held by hold_folder, emptying its lock file (a later run sees that it ended). A folder
    that hold_folder created and that holds nothing else (the run stopped before it began: a launcher's bad
    setting, a refused plan) is removed again."""
    lock, existed = _held.pop(str(folder), (None, None))
    if lock is None:
        return
    path = Path(folder) / LOCK
    with contextlib.suppress(OSError):
        os.truncate(path, 0)
    lock.release()
    with contextlib.suppress(OSError):
        if existed != path.parent.absolute() and os.listdir(folder) == [LOCK]:
            path.unlink()
            for empty in (path.parent.absolute(), *path.parent.absolute().parents):
                if empty == existed:
                    break
                empty.rmdir()  # only an empty folder: the first that is not ends it


def hydra_quote(value: str) -> str:
    """`value` as a quoted override value: Hydra reads backslashes literally except before a quote."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return f"'{escaped}'"


class OutputFolder(HydraCallback):
    """Checks the run or sweep folder before Hydra creates it, and pins a sweep's folder for its jobs.

    Hydra creates the folder before any job code runs, so an unwritable `out_root`
    would otherwise end in a traceback. The sweep folder is named after the swept
    overrides (`hydra.overrides.task` of the whole sweep); each job's config is composed
    again from that job's own overrides and would name a different folder, so the
    resolved name is passed to every job as a `hydra.sweep.dir` override.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("task") == "plan":
            _print_plan(config, [(list(config.hydra.overrides.task), config)])
        self._check(config, str(config.hydra.run.dir))
        if config.get("task") == "train":
            from resnext_lab.config import check_job, validate
            from resnext_lab.errors import ConfigError

            try:
                validate(config)  # settings first: cheap, no torch import
                check_job(config)
            except ConfigError as err:
                fail(str(err))
            hold_folder(Path(str(config.hydra.run.dir)))

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_folder(Path(str(config.hydra.run.dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        release_folder(Path(str(config.hydra.sweep.dir)))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("task") == "plan":
            _print_plan(config, check_sweep(config, kwargs.get("config_name")))
        sweep_dir = str(config.hydra.sweep.dir)
        self._check(config, sweep_dir)
        if config.get("task") == "train":
            if Path(sweep_dir).is_dir():  # a sweep that runs there refuses this one before the checks
                hold_folder(Path(sweep_dir))
            jobs = check_sweep(config, kwargs.get("config_name"))
            if config.get("experiment_name"):
                _plan_before_training(config, jobs, Path(sweep_dir))
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
                "needs scale=smoke, proxy or paper"
            )
        reason = unwritable(Path(folder))
        if reason:
            fail(f"out_root={config.get('out_root')!r}: cannot write the output folder {folder}: {reason}")


def _print_plan(config: DictConfig, jobs: list[tuple[list[str], DictConfig]]) -> None:
    """task=plan: print every job's complexity and estimated time, then stop: nothing runs, nothing is written."""
    from resnext_lab.errors import ConfigError
    from resnext_lab.plan import plan_sweep

    try:
        print(plan_sweep(jobs, config.get("plan") or {}, config.hydra), flush=True)
    except ConfigError as err:
        fail(str(err))
    raise SystemExit(0)


#: A sweep that its plan prices above this on this machine trains only with sweep.confirm=true (make: CONFIRM=1).
CONFIRM_ABOVE_S = 3600


def _plan_before_training(config: DictConfig, jobs: list[tuple[list[str], DictConfig]], sweep_dir: Path) -> None:
    """A paper table's sweep prints its plan, timed on this machine, before its first job; one priced above an
    hour stops there (exit 2) unless sweep.confirm=true. A rerun prices the jobs it has left."""
    from resnext_lab.errors import ConfigError
    from resnext_lab.plan import estimate
    from resnext_lab.results import load_sweep

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


class SweepSummary(HydraCallback):
    """At the end of a training multirun: one table of every job in the sweep folder, failures last.

    Exits with status 1 when any job failed or diverged, after the table is printed.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("task") != "train":
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        bad = summarize_sweep(sweep_dir)
        write_sweep_report(sweep_dir, config)
        if bad:
            raise SystemExit(1)


def wandb_group(config: DictConfig, sweep_dir: Any) -> str:
    """The W&B group of a sweep's runs: `logger.wandb.group`, else the sweep folder under out_root ("runs" alone)."""
    if config.logger.wandb.get("group"):
        return str(config.logger.wandb.group)
    if sweep_dir is None:
        return "runs"
    return Path(str(sweep_dir)).as_posix().split(f"{config.out_root}/", 1)[-1]


def write_sweep_report(sweep_dir: Path, config: DictConfig) -> None:
    """The ablation report of the sweep in `<sweep>/report/`, printed in short; a failure to write it is one line."""
    from resnext_lab.errors import ConfigError, first_line
    from resnext_lab.report.ablation import to_terminal, write_ablation
    from resnext_lab.tracking import log_report_run

    settings = config.get("report") or {}
    try:
        report, written = write_ablation(
            sweep_dir,
            None,
            settings.get("baseline"),
            settings.get("min_effect"),
            test=settings.get("test") or "difference",
            exclude=settings.get("exclude"),
            alpha=settings.get("alpha") or 0.05,
        )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return
    except Exception as err:  # the sweep's jobs are done and recorded: a report bug must not hide that
        from resnext_lab.files import output_fault

        if fault := output_fault(err, sweep_dir):  # a full disk: one line, exit 2, as in a job
            fail(
                f"{fault[0]}: cannot write the report in {sweep_dir / 'report'}: {fault[1]}, then run the same "
                "command again (the jobs are done and kept)"
            )
        print(f"warning: the ablation report failed: {type(err).__name__}: {first_line(err)}", file=sys.stderr)
        return
    try:
        run = log_report_run(
            report,
            [p for p in written if p.suffix == ".png"],
            written[0].parent,
            config.logger.wandb,
            wandb_group(config, sweep_dir),
        )
    except Exception as err:  # W&B unreachable or misconfigured: the files are the report
        run = None
        print(f"warning: the W&B report run failed: {type(err).__name__}: {first_line(err)}", file=sys.stderr)
    print(to_terminal(report), flush=True)
    print(f"report: {written[0]} (and report.csv, plots)" + (f"; W&B report run: {run}" if run else ""), flush=True)
