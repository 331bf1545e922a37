"""When seeds stack (`hydra.launcher.stack=auto`): the rule, and the measurement it reads.

The rule (`choose_stack`): of the stack sizes measured, take the one whose training step per seed is the
shortest, if that step is at least STACK_MARGIN shorter than the lone step; else every seed alone. The steps
are the plan's (cost.calibrate, cached): a lone step and a stack's step of the sweep's first training job, as
it would train here (device, precision, channels_last, threads per job), at S = 2, 4, 8, ... up to the
seeds of a cell. The margin keeps a shared or noisy machine from stacking on a difference it cannot measure
(on the project's 2-core CPU stacking is about even: docs/PERFORMANCE.md); small networks on a GPU, where one
process cannot fill the device, are where stacking wins.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: How much shorter a stack's step per seed must be than the lone step for `auto` to stack.
STACK_MARGIN = 0.10
#: The largest stack `auto` measures (a cell's seeds cap it too).
AUTO_MAX = 32


def stackable(cfg: Any) -> bool:
    """Whether a composed job may train in a stack: a training job (or its plan) of the grouped block form, the
    one form models.stack builds (the other two compute the same function: models/stack.py)."""
    if cfg is None or cfg.get("task") not in ("train", "plan"):
        return False
    model = cfg.get("model") or {}
    return str(model.get("block", "grouped")) == "grouped"


def choose_stack(step_s: Mapping[int, float], margin: float = STACK_MARGIN) -> int:
    """The stack size to run with, from {S: seconds per training step of S seeds stacked} (S = 1: lone):
    the S with the shortest step per seed where that is at least `margin` shorter than the lone step, else 1."""
    if 1 not in step_s:
        raise ValueError("choose_stack needs the lone step (S = 1)")
    lone = step_s[1]
    best = min(step_s, key=lambda s: (step_s[s] / s, s))
    return best if best > 1 and step_s[best] / best <= (1 - margin) * lone else 1


def sizes_to_measure(seeds: int, cap: int = AUTO_MAX) -> list[int]:
    """1, then 2, 4, 8, ... up to the seeds of a cell (and `cap`), with the cell's own count last."""
    top = min(seeds, cap)
    sizes = [1]
    s = 2
    while s <= top:
        sizes.append(s)
        s *= 2
    if top > 1 and top not in sizes:
        sizes.append(top)
    return sizes


def measured_steps(cfg: Any, seeds: int, threads: int) -> tuple[dict[int, float], str]:
    """{S: seconds per training step} of `cfg`'s network stacked S at a time, as the plan times a step here
    (cached in cost.CACHE), and where it was timed."""
    from resnext_lab.config import to_python
    from resnext_lab.cost import CACHE, calibrate
    from resnext_lab.hardware import resolve_precision, training_device
    from resnext_lab.job import check_job

    try:
        cache = json.loads(CACHE.read_text())
    except (OSError, ValueError):
        cache = {}
    spec = check_job(cfg, check_data=False).spec
    resolved = to_python(cfg)
    where = training_device(resolved["trainer"])
    precision, _ = resolve_precision(str(resolved["trainer"]["precision"]), cuda=where == "cuda")
    channels_last = resolved["trainer"].get("channels_last", "auto") in ("auto", True)
    batch = int(resolved["data"]["batch_size"])
    steps = {
        s: calibrate(spec, batch, precision, channels_last, threads, cache, where, stack=s)[0]
        for s in sizes_to_measure(seeds)
    }
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    CACHE.write_text(json.dumps(cache))
    return steps, where


def auto_stack_size(cfg: Any, seeds: int, threads: int = 1) -> tuple[int, str]:
    """`hydra.launcher.stack=auto`: the stack size for a sweep like `cfg` with `seeds` seeds per cell, and why
    (one line for the sweep's log)."""
    if seeds < 2:
        return 1, "hydra.launcher.stack=auto: one seed per cell"
    steps, where = measured_steps(cfg, seeds, threads)
    size = choose_stack(steps)
    per_seed = ", ".join(f"S={s} {1e3 * t / s:.1f} ms" for s, t in steps.items())
    verdict = f"stacks of {size}" if size > 1 else "every seed alone"
    return size, f"hydra.launcher.stack=auto: {verdict} (training step per seed on the {where}: {per_seed})"
