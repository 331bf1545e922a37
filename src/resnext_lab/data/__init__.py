"""Data sets for the ablations: Fashion-MNIST, CIFAR-10/100 in memory, ImageNet from folders.

`build_datamodule(cfg.data)` is the one entry point. Every datamodule knows
`num_classes`, `in_channels` and `image_size` right after construction (the
model is built from them before any file is read) and `describe()`s itself
in one line for the run log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl

from resnext_lab.config import DATA_SCHEMAS, DataSettings
from resnext_lab.data.batches import TensorBatches, crop_and_flip, normalize, seeded_permutation, split_indices
from resnext_lab.data.cifar import CIFAR10DataModule, CIFAR100DataModule, read_cifar_batch
from resnext_lab.data.fashion_mnist import FashionMNISTDataModule, read_idx
from resnext_lab.data.imagenet import ImageNetDataModule
from resnext_lab.data.in_memory import InMemoryDataModule
from resnext_lab.errors import ConfigError, DataError

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


__all__ = [
    "DATA_SCHEMAS",
    "DATAMODULES",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ConfigError",
    "DataError",
    "DataSettings",
    "FashionMNISTDataModule",
    "ImageNetDataModule",
    "InMemoryDataModule",
    "TensorBatches",
    "build_datamodule",
    "crop_and_flip",
    "normalize",
    "read_cifar_batch",
    "read_idx",
    "seeded_permutation",
    "split_indices",
]
