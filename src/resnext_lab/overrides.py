"""Job identity from overrides: which settings a sweep varies, the order of its jobs, its folder names
(the resolvers of conf/config.yaml's hydra.sweep.dir and subdir), the check that a rerun finds the same
job, and quoting for Hydra. Text only: no torch, no Lightning, no config composed.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from resnext_lab.errors import fail

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
        "report.sequential",
        "sweep.confirm",
    }
)


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Command-line overrides as (swept, fixed); fixed leaves out run-invariant and hydra.* settings."""
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


def expand(texts: Sequence[str]) -> list[list[str]] | None:
    """The jobs of a list of overrides as Hydra's basic sweeper expands them (None for a sweep it cannot expand):
    a later override of the same key replaces the earlier; the jobs are the product of every key's values."""
    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(list(texts)):
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                return None
            choices[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """Every job's overrides, as Hydra's basic sweeper will launch them (None for sweeps it cannot expand):
    the sweeper's `params` come first, then the command line's overrides."""
    node = config.hydra.sweeper.get("params")
    params = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    return expand([f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task))


def hydra_quote(value: str) -> str:
    """`value` as a quoted override value: Hydra reads backslashes literally except before a quote."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return f"'{escaped}'"


def stack_key(overrides: Sequence[str]) -> tuple[str, ...]:
    """What a job computes, its `seed` aside: jobs with the same key may train as one stacked network."""
    return tuple(o for o in comparable(overrides) if o.split("=", 1)[0].lstrip("+~") != "seed")


def stacks(
    job_overrides: Sequence[Sequence[str]], size: int, stackable: Sequence[bool] | None = None
) -> list[list[int]]:
    """The sweep's jobs as stacks: jobs whose overrides differ only in `seed`, up to `size` at a time; every
    other job alone (a list of one). `stackable[i]` false keeps job i alone (not a training job, or one that
    does not compose). Stacks of one seed's group are as even as `size` allows (5 seeds, size 4: 3 and 2), so
    that no stack is left much smaller than the others; the stacks keep the sweep's order of their first job.
    """
    if size < 1:
        raise ValueError(f"stack size {size}: must be >= 1")
    groups: dict[tuple[Any, ...], list[int]] = {}
    for i, overrides in enumerate(job_overrides):
        key: tuple[Any, ...] = stack_key(overrides) if stackable is None or stackable[i] else ("alone", i)
        groups.setdefault(key, []).append(i)
    out: list[list[int]] = []
    for members in groups.values():
        count = math.ceil(len(members) / size)
        base, extra = divmod(len(members), count)
        start = 0
        for k in range(count):
            n = base + (1 if k < extra else 0)
            out.append(members[start : start + n])
            start += n
    return sorted(out, key=lambda s: s[0])
