"""Data sets for the ablations: Fashion-MNIST, CIFAR-10/100 in memory, ImageNet from folders.

`build_datamodule(cfg.data)` (in `data.modules`, importable from here) is the one entry point. Every
datamodule knows `num_classes`, `in_channels` and `image_size` right after construction (the model is
built from them before any file is read) and `describe()`s itself in one line for the run log.

The package loads its modules on first use: `data.settings`, the schemas every command checks a config
against, imports neither torch nor Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

#: name -> the module of this package that holds it
_WHERE = {
    "DATA_SCHEMAS": "settings",
    "DataSettings": "settings",
    "DATAMODULES": "modules",
    "build_datamodule": "modules",
    "TensorBatches": "batches",
    "crop_and_flip": "batches",
    "normalize": "batches",
    "seeded_permutation": "batches",
    "split_indices": "batches",
    "CIFAR10DataModule": "cifar",
    "CIFAR100DataModule": "cifar",
    "read_cifar_batch": "cifar",
    "FashionMNISTDataModule": "fashion_mnist",
    "read_idx": "fashion_mnist",
    "ImageNetDataModule": "imagenet",
    "InMemoryDataModule": "in_memory",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"resnext_lab.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'resnext_lab.data' has no attribute {name!r}")
