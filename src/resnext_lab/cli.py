"""What run.py needs around Hydra: resolvers for deterministic sweep folders, task dispatch, one-line errors."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from resnext_lab.errors import ConfigError, fail

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
    from resnext_lab.sweep import split_overrides

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


def normalize_argv(argv: list[str]) -> list[str]:
    """`+experiment=X` means `experiment=X`: the group is already in the defaults (as null)."""
    return [a.replace("+experiment=", "experiment=", 1) if a.startswith("+experiment=") else a for a in argv]


def complexity_task(cfg: DictConfig) -> dict[str, Any]:
    from resnext_lab.models.complexity import complexity
    from resnext_lab.models.spec import spec_from_config

    spec = spec_from_config(OmegaConf.to_container(cfg.model, resolve=True))
    row = {**spec.summary(), **complexity(spec)}
    print(f"{spec.name}: {row['params'] / 1e6:.2f}M params, {row['flops'] / 1e9:.3f} GFLOPs (multiply-adds)")
    print(json.dumps(row), flush=True)
    return row


def run_task(cfg: DictConfig) -> Any:
    """Dispatch on `task`; a user error prints one line and exits 2, a failed training run exits 1."""
    try:
        if cfg.task == "complexity":
            return complexity_task(cfg)
        if cfg.task == "train":
            from resnext_lab.train import RunFailed, train_task

            try:
                return train_task(cfg)
            except RunFailed as err:
                fail(str(err), status=1)
        raise ConfigError(f"task={cfg.task!r}: must be one of train, complexity, plan")
    except ConfigError as err:
        fail(str(err))
