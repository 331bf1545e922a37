"""The ResNeXt design space: specs, networks in three block forms, exact complexity.

The spec and complexity need no torch; the network names load it on first use,
so counting a sweep's params and FLOPs stays instant.
"""

import importlib
from typing import Any

from resnext_lab.errors import ConfigError
from resnext_lab.models.complexity import complexity, flops, params, solve_width
from resnext_lab.models.spec import BLOCKS, Model, ModelSpec, reference_spec, spec_from_config

__all__ = [
    "BLOCKS",
    "ConfigError",
    "Model",
    "ModelSpec",
    "ResNeXt",
    "build",
    "complexity",
    "convert",
    "flops",
    "params",
    "reference_spec",
    "solve_width",
    "spec_from_config",
    "stack",
]


def __getattr__(name: str) -> Any:
    if name in ("ResNeXt", "build", "convert"):
        from resnext_lab.models import network

        return getattr(network, name)
    if name == "stack":  # the submodule, callable as its `stack` (see models/stack.py)
        return importlib.import_module("resnext_lab.models.stack")
    raise AttributeError(f"module 'resnext_lab.models' has no attribute {name!r}")
