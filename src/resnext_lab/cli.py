"""What run.py needs around Hydra: the command line, task dispatch, one-line errors (folders: sweep.py)."""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from resnext_lab.errors import ConfigError, fail


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
