"""The `data` config node, validated once into a frozen `DataSettings`.

Every field is checked here, before any file is read, so a typo in a value
fails at start-up with one line naming `data.<field>` instead of deep inside a
training loop. Fields a config leaves out take the dataset's own defaults (the
same values as `conf/data/<name>.yaml`), which keeps tests and scripts short.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from resnext_lab.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """The validated `data` node; see `conf/data/*.yaml` for what each field means."""

    name: str
    root: Path | None
    download: bool
    batch_size: int
    eval_batch_size: int
    val_size: int
    split_seed: int
    augment: bool
    limit_train: int | None
    limit_eval: int | None
    num_workers: int
    pin_memory: bool
    persistent_workers: bool
    num_classes: int
    in_channels: int
    image_size: int


def parse_settings(
    cfg: Mapping[str, Any],
    defaults: Mapping[str, Any],
    fixed: Mapping[str, int] | None = None,
) -> DataSettings:
    """Validate `cfg` (a plain dict or an OmegaConf node) into `DataSettings`.

    `defaults` fills fields the config leaves out. `fixed` names shape fields the
    dataset itself determines (Fashion-MNIST is always 28x28x1, 10 classes): the
    config may repeat them, because the model config reads them from the data
    node, but may not change them.
    """

    fixed = fixed or {}

    def get(key: str) -> Any:
        return cfg[key] if key in cfg else fixed.get(key, defaults.get(key))

    for key, value in fixed.items():
        given = get(key)
        if given is not None and given != value:
            raise ConfigError(f"data.{key}={given!r}: {cfg.get('name')} has {key}={value}; leave it at {value}")
    batch_size = _integer("batch_size", get("batch_size"), minimum=1)
    eval_batch_size = _integer("eval_batch_size", get("eval_batch_size"), minimum=1, nullable=True)
    return DataSettings(
        name=str(get("name")),
        root=_root(get("root")),
        download=_boolean("download", get("download")),
        batch_size=batch_size,
        eval_batch_size=batch_size if eval_batch_size is None else eval_batch_size,
        val_size=_integer("val_size", get("val_size"), minimum=0),
        split_seed=_integer("split_seed", get("split_seed"), minimum=0),
        augment=_boolean("augment", get("augment")),
        limit_train=_integer("limit_train", get("limit_train"), minimum=1, nullable=True),
        limit_eval=_integer("limit_eval", get("limit_eval"), minimum=1, nullable=True),
        num_workers=_integer("num_workers", get("num_workers"), minimum=0),
        pin_memory=_boolean("pin_memory", get("pin_memory")),
        persistent_workers=_boolean("persistent_workers", get("persistent_workers")),
        num_classes=_integer("num_classes", get("num_classes"), minimum=2),
        in_channels=_integer("in_channels", get("in_channels"), minimum=1),
        image_size=_integer("image_size", get("image_size"), minimum=8),
    )


def _integer(key: str, value: Any, *, minimum: int, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        accepted = f"an integer >= {minimum}" + (" or null" if nullable else "")
        raise ConfigError(f"data.{key}={value!r}: must be {accepted}")
    return int(value)


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"data.{key}={value!r}: must be true or false")
    return value


def _root(value: Any) -> Path | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(f"data.root={value!r}: must be a directory path or null")
    return Path(value).expanduser()
