"""`build_datamodule`: the datamodule a `data` node names, every field checked, no file read yet."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

from resnext_lab.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from resnext_lab.data.fashion_mnist import FashionMNISTDataModule
from resnext_lab.data.imagenet import ImageNetDataModule
from resnext_lab.errors import ConfigError

#: `data.name` -> datamodule class.
DATAMODULES: dict[str, type[pl.LightningDataModule]] = {
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "imagenet": ImageNetDataModule,
}


def build_datamodule(cfg: Mapping[str, Any]) -> pl.LightningDataModule:
    """The datamodule that `cfg` (the `data` config node) names, with every field validated.

    Nothing is read from disk yet: that happens in Lightning's `setup`, so a
    missing data set is reported after the config and model were checked.
    """
    name = cfg.get("name") if isinstance(cfg, Mapping) else None
    if not isinstance(name, str) or name not in DATAMODULES:
        raise ConfigError(f"data.name={name!r}: must be one of {', '.join(DATAMODULES)}")
    return DATAMODULES[name](cfg)
