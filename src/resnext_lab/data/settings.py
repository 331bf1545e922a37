"""The `data` node: one schema per data set, each extending the in-memory Fashion-MNIST defaults.

`data.name` picks the schema (`DATA_SCHEMAS`); `job.register()` stores each one's defaults in Hydra's
ConfigStore as `data/<name>_schema`, which `conf/data/<name>.yaml` extends.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import ClassVar

from resnext_lab.config import Rule, boolean, choice, integer, setting, with_default
from resnext_lab.errors import ConfigError

DATA_ROOT = Rule(
    lambda v: v is None or isinstance(v, str | os.PathLike),
    "a directory path or null",
    lambda v: None if v is None or v == "" else Path(v).expanduser(),
)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """A data set held in memory on the training device (Fashion-MNIST's defaults)."""

    #: fields the data set itself determines: a config may repeat them (the model config reads them
    #: from the data node) but not change them
    fixed: ClassVar[tuple[str, ...]] = ("name", "num_classes", "in_channels", "image_size")

    name: str = setting("fashion_mnist", choice("fashion_mnist", "cifar10", "cifar100", "imagenet"), "the data set")
    root: Path | None = setting(None, DATA_ROOT, "where its files are (null: the data set's usual places)")
    download: bool = setting(False, boolean(), "fetch missing files with torchvision into root or ./data")
    batch_size: int = setting(256, integer(1), "training batch, per device")
    eval_batch_size: int | None = setting(None, integer(1, null=True), "evaluation batch (null: batch_size)")
    val_size: int = setting(5000, integer(0), "training images held out for validation (0: validate on the test set)")
    split_seed: int = setting(0, integer(0), "seeds the validation split")
    augment: bool = setting(False, boolean(), "pad 4, random crop and horizontal flip, on the device (training only)")
    limit_train: int | None = setting(None, integer(1, null=True), "use the first N of the shuffled training split")
    limit_eval: int | None = setting(None, integer(1, null=True), "use the first N of validation and of the test")
    num_classes: int = setting(10, integer(2), "classes")
    in_channels: int = setting(1, integer(1), "image channels")
    image_size: int = setting(28, integer(8), "image side in pixels")

    def __post_init__(self) -> None:
        for key in self.fixed:
            value, fixed = getattr(self, key), self.__dataclass_fields__[key].default
            if value != fixed:
                if key == "name":
                    raise ConfigError(f"data.name={value!r}: these settings are {fixed}'s")
                raise ConfigError(f"data.{key}={value!r}: {self.name} has {key}={fixed}; leave it at {fixed}")
        if self.eval_batch_size is None:
            object.__setattr__(self, "eval_batch_size", self.batch_size)


@dataclasses.dataclass(frozen=True)
class FashionMNISTSettings(DataSettings):
    """Fashion-MNIST: 28x28 grey, 10 classes."""


@dataclasses.dataclass(frozen=True)
class CIFAR10Settings(DataSettings):
    """CIFAR-10: 32x32 RGB, 10 classes; trained with crop and flip."""

    name: str = with_default(DataSettings, "name", "cifar10")
    batch_size: int = with_default(DataSettings, "batch_size", 128)
    augment: bool = with_default(DataSettings, "augment", True)
    in_channels: int = with_default(DataSettings, "in_channels", 3)
    image_size: int = with_default(DataSettings, "image_size", 32)


@dataclasses.dataclass(frozen=True)
class CIFAR100Settings(CIFAR10Settings):
    """CIFAR-100 (fine labels): 100 classes."""

    name: str = with_default(DataSettings, "name", "cifar100")
    num_classes: int = with_default(DataSettings, "num_classes", 100)


@dataclasses.dataclass(frozen=True)
class ImageNetSettings(DataSettings):
    """ImageNet from class folders, through DataLoader workers; any number of classes and image size."""

    fixed: ClassVar[tuple[str, ...]] = ("name", "in_channels")

    name: str = with_default(DataSettings, "name", "imagenet")
    val_size: int = with_default(
        DataSettings,
        "val_size",
        0,
        "0: validate on the val folder, the test set (as the paper); N > 0: hold N training images out instead",
    )
    augment: bool = with_default(
        DataSettings,
        "augment",
        True,
        "RandomResizedCrop(image_size) (8-100% of the area, "
        "aspect 3/4-4/3) and horizontal flip; false: the eval centre crop",
    )
    num_classes: int = with_default(DataSettings, "num_classes", 1000, "classes: the number of class folders")
    in_channels: int = with_default(DataSettings, "in_channels", 3)
    image_size: int = with_default(DataSettings, "image_size", 224, "the crop's side (eval resizes to 256/224 of it)")
    color_augment: bool = setting(
        False,
        boolean(),
        "fb.resnet.torch's colour jitter (0.4, random order) and PCA lighting (alphastd 0.1), independent of augment",
    )
    num_workers: int = setting(8, integer(0), "DataLoader worker processes")
    pin_memory: bool = setting(True, boolean(), "pinned host memory for the batches")
    persistent_workers: bool = setting(True, boolean(), "keep the workers between epochs")


#: `data.name` -> its schema.
DATA_SCHEMAS: dict[str, type[DataSettings]] = {
    "fashion_mnist": FashionMNISTSettings,
    "cifar10": CIFAR10Settings,
    "cifar100": CIFAR100Settings,
    "imagenet": ImageNetSettings,
}
