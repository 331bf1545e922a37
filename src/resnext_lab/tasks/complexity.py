"""task=complexity: the network's spec, params and FLOPs, counted exactly; nothing is built or trained."""

from __future__ import annotations

import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from resnext_lab.models import complexity, spec_from_config


def complexity_task(cfg: DictConfig) -> dict[str, Any]:
    """Print the model's params and FLOPs in one line, then its spec and counts as one JSON line."""
    spec = spec_from_config(OmegaConf.to_container(cfg.model, resolve=True))
    row = {**spec.summary(), **complexity(spec)}
    print(f"{spec.name}: {row['params'] / 1e6:.2f}M params, {row['flops'] / 1e9:.3f} GFLOPs (multiply-adds)")
    print(json.dumps(row), flush=True)
    return row
