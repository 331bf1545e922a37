"""A LightningDataModule for data sets small enough to keep whole in (GPU) memory.

Subclasses only say how to find and read their files (`_locate`, `_read`,
`_download`); this class does the seeded validation split, the `limit_*`
subsets, moving the uint8 tensors to the training device once, batching
without worker processes, and augmentation plus normalisation on the device in
`on_after_batch_transfer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch

from resnext_lab.config import parse
from resnext_lab.data.batches import TensorBatches, crop_and_flip, eval_subset, normalize, split_indices
from resnext_lab.data.settings import DataSettings
from resnext_lab.errors import ConfigError, DataError

#: Where data sets are downloaded when `data.root` is null (torchvision's usual `./data`).
DEFAULT_DOWNLOAD_ROOT = Path("data")


class InMemoryDataModule(pl.LightningDataModule):
    """Train/val/test as uint8 NCHW tensors, served by `TensorBatches`."""

    #: Readable data set name for messages, e.g. "Fashion-MNIST".
    title: ClassVar[str]
    #: Per-channel mean and std of the training images in [0, 1].
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]
    #: Zero padding before the random crop when `data.augment` is true.
    crop_padding: ClassVar[int] = 4
    #: The `data` node's schema: every field's default, type and range (config.py).
    schema: ClassVar[type[DataSettings]]

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.settings: DataSettings = parse(self.schema, cfg, "data")
        self.num_classes = self.settings.num_classes
        self.in_channels = self.settings.in_channels
        self.image_size = self.settings.image_size
        self.source: Path | None = None
        #: Seeds each epoch's batch order; the run's seed (set by training), else `split_seed`.
        self.shuffle_seed: int | None = None
        self.train_images: torch.Tensor | None = None
        self.train_labels: torch.Tensor | None = None
        self.val_images: torch.Tensor | None = None
        self.val_labels: torch.Tensor | None = None
        self.test_images: torch.Tensor | None = None
        self.test_labels: torch.Tensor | None = None

    # -- what subclasses provide ------------------------------------------------

    def _locate(self) -> Path | None:
        """The directory holding the files, or None when no default place has them."""
        raise NotImplementedError

    def _read(self, where: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(train_images, train_labels, test_images, test_labels)`: uint8 NCHW and int64."""
        raise NotImplementedError

    def _download(self) -> None:
        """Fetch the files with torchvision into `data.root` (or ./data)."""
        raise NotImplementedError

    def _missing(self) -> str:
        """The one-line DataError message for files found nowhere."""
        raise NotImplementedError

    def _train_count(self, where: Path) -> int | None:
        """How many training images the files in `where` hold, from a header or the data set's metadata, without
        reading the images (None: not known before they are read)."""
        return None

    def check_available(self) -> None:
        """Raise DataError now if the files are nowhere and may not be downloaded, and ConfigError if the
        settings ask for more images than they hold (reads at most a header)."""
        where = self._locate()
        if where is None:
            if not self.settings.download:
                raise DataError(self._missing())
            return
        count = self._train_count(where)
        if count is not None:
            self._check_sizes(count, where, world_size=1)

    def _check_sizes(self, count: int, where: Path, world_size: int) -> None:
        """`data.val_size` and the training images per device (`limit_train`, `batch_size`) against the `count`
        training images in `where`."""
        s = self.settings
        if s.val_size >= count:
            raise ConfigError(
                f"data.val_size={s.val_size}: must be smaller than the {count} training images in {where}"
            )
        train = count - s.val_size if s.limit_train is None else min(count - s.val_size, s.limit_train)
        if train // world_size < s.batch_size:
            raise ConfigError(
                f"data.batch_size={s.batch_size}: larger than the {train // world_size} training images "
                f"per device; lower it or raise data.limit_train"
            )

    # -- Lightning hooks --------------------------------------------------------

    def prepare_data(self) -> None:
        """Download once (Lightning runs this on one process per node) when allowed and needed."""
        if self._locate() is None and self.settings.download:
            self._download()

    def setup(self, stage: str | None = None) -> None:
        """Read and split the data once, then move it to the trainer's CUDA device if it has one."""
        if self.train_images is None:
            self._load()
        device = self._trainer_device()
        if device is not None and device.type == "cuda":
            moved: dict[int, torch.Tensor] = {}  # val may be the test set: move shared tensors once
            for name in ("train_images", "train_labels", "test_images", "test_labels", "val_images", "val_labels"):
                tensor = getattr(self, name)
                if id(tensor) not in moved:
                    moved[id(tensor)] = tensor.to(device)
                setattr(self, name, moved[id(tensor)])

    def train_dataloader(self) -> TensorBatches:
        assert self.train_images is not None and self.train_labels is not None, "call setup() first"
        return self._batches(self.train_images, self.train_labels, self.settings.batch_size, train=True)

    def val_dataloader(self) -> TensorBatches:
        assert self.val_images is not None and self.val_labels is not None, "call setup() first"
        return self._batches(self.val_images, self.val_labels, self.settings.eval_batch_size, train=False)

    def test_dataloader(self) -> TensorBatches:
        assert self.test_images is not None and self.test_labels is not None, "call setup() first"
        return self._batches(self.test_images, self.test_labels, self.settings.eval_batch_size, train=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment (training only) and normalise on the batch's device, after Lightning moved it there."""
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.prepare_batch(images, train=training), labels

    # -- public helpers ---------------------------------------------------------

    def prepare_batch(
        self, images: torch.Tensor, *, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A uint8 batch -> the network's float32 NCHW input; augmented if `train` and `data.augment`.

        Public so that loops outside Lightning (evaluation scripts, notebooks)
        feed the network exactly what training fed it. The augmentation draws from `generator`, else from the
        device's global RNG (a stack gives each seed its own: data/stacked.py).
        """
        if train and self.settings.augment:
            images = crop_and_flip(images, self.crop_padding, generator)
        return normalize(images, self.mean, self.std)

    def describe(self) -> str:
        """One line: data set, where it was read from, split sizes once set up."""
        shape = f"{self.image_size}x{self.image_size}x{self.in_channels}, {self.num_classes} classes"
        if self.train_images is None or self.val_images is None or self.test_images is None:
            where = self.settings.root or "default places"
            return f"{self.settings.name} ({self.title}, {shape}) from {where}: not set up yet"
        val_note = " (= test)" if self.settings.val_size == 0 else ""
        return (
            f"{self.settings.name} ({self.title}, {shape}) from {self.source}: "
            f"train {len(self.train_images)}, val {len(self.val_images)}{val_note}, test {len(self.test_images)}"
        )

    # -- internals --------------------------------------------------------------

    def _load(self) -> None:
        where = self._locate()
        if where is None and self.settings.download:
            self._download()
            where = self._locate()
        if where is None:
            raise DataError(self._missing())
        train_images, train_labels, test_images, test_labels = self._read(where)
        s = self.settings
        self._check_sizes(len(train_labels), where, self._trainer_world_size())
        train_index, val_index = split_indices(len(train_labels), s.val_size, s.split_seed)
        train_index = train_index[: s.limit_train]
        if s.val_size == 0:
            val_index = None
        test_index = eval_subset(len(test_labels), s.limit_eval, s.split_seed)
        self.train_images, self.train_labels = train_images[train_index], train_labels[train_index]
        self.test_images, self.test_labels = test_images[test_index], test_labels[test_index]
        if val_index is None:
            self.val_images, self.val_labels = self.test_images, self.test_labels
        else:
            val_index = val_index[: s.limit_eval]
            self.val_images, self.val_labels = train_images[val_index], train_labels[val_index]
        self.source = where

    def _batches(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, *, train: bool) -> TensorBatches:
        trainer = self.trainer
        return TensorBatches(
            images,
            labels,
            batch_size,
            shuffle=train,
            drop_last=train,
            seed=self.settings.split_seed if self.shuffle_seed is None else self.shuffle_seed,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
        )

    def _trainer_device(self) -> torch.device | None:
        return self.trainer.strategy.root_device if self.trainer is not None else None

    def _trainer_world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1
