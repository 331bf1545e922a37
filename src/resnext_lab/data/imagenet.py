"""ImageNet (or any subset in its layout) from `root/train/<class>/*` and `root/val/<class>/*`.

Too large for memory, so this is the classic pipeline: torchvision ImageFolder,
JPEG decoding and the paper's augmentation in DataLoader workers: the
fb.resnet.torch recipe the ResNeXt paper follows (random-size crop, flip and, with
`data.color_augment`, colour jitter and AlexNet's PCA lighting). The val
folder is the test set (the paper reports val error); with `data.val_size: 0`
it is also what validation runs on, otherwise `val_size` training images are
held out instead.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from resnext_lab.config import parse
from resnext_lab.data.batches import eval_subset, split_indices
from resnext_lab.data.in_memory import DEFAULT_DOWNLOAD_ROOT
from resnext_lab.data.settings import ImageNetSettings
from resnext_lab.errors import ConfigError, DataError

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: The ImageNet RGB covariance's eigenvalues and eigenvectors (columns), as in
#: fb.resnet.torch's datasets/imagenet.lua, for AlexNet-style lighting noise.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class Lighting:
    """AlexNet's PCA lighting noise on a CHW tensor in [0, 1] (fb.resnet.torch's `Lighting`).

    Adds `eigvec @ (alpha * eigval)` to every pixel, with alpha ~ N(0, alphastd^2), one per
    eigenvector and call, from torch's global RNG (so `seed_everything` fixes it).
    """

    def __init__(self, alphastd: float, eigval: Sequence[float], eigvec: Sequence[Sequence[float]]) -> None:
        self.alphastd = float(alphastd)
        self.eigval = torch.tensor(eigval, dtype=torch.float32)
        self.eigvec = torch.tensor(eigvec, dtype=torch.float32)
        if self.eigval.shape != (3,) or self.eigvec.shape != (3, 3):
            raise ValueError(
                f"Lighting: eigval must have 3 values and eigvec 3x3, got {self.eigval.shape}, {self.eigvec.shape}"
            )

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.alphastd == 0:
            return img
        alpha = torch.randn(3) * self.alphastd
        rgb = self.eigvec @ (alpha * self.eigval)
        return img + rgb.to(img.dtype).view(3, 1, 1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(alphastd={self.alphastd}, eigval={self.eigval.tolist()}, "
            f"eigvec={self.eigvec.tolist()})"
        )


class ImageNetDataModule(pl.LightningDataModule):
    """ImageNet-style class folders, served by DataLoaders with worker processes."""

    title = "ImageNet"

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        self.settings = parse(ImageNetSettings, cfg, "data")
        self.num_classes = self.settings.num_classes
        self.in_channels = self.settings.in_channels
        self.image_size = self.settings.image_size
        self.source: Path | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def train_transform(self) -> Any:
        """fb.resnet.torch's training pipeline: random-size crop + flip, colour jitter + lighting, normalise.

        `data.augment` switches the crop and flip (off: the eval centre crop),
        `data.color_augment` the colour jitter and lighting, independently.
        """
        from torchvision import transforms as T

        s = self.settings
        # 8-100% of the area, aspect ratio 3/4-4/3 (torchvision's defaults, spelled out as the recipe)
        crop = [T.RandomResizedCrop(self.image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)), T.RandomHorizontalFlip()]
        color: list[Any] = []
        if s.color_augment:
            # On the [0, 1] tensor, as fb.resnet.torch does. ColorJitter rather than RandomOrder of
            # three transforms: it already applies brightness, contrast and saturation in a random
            # order per image with factors uniform in [0.6, 1.4], as fb.resnet.torch's RandomOrder
            # of Brightness/Contrast/Saturation does (torchvision clamps to [0, 1] after each; Lua not).
            color = [T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4), Lighting(0.1, PCA_EIGVAL, PCA_EIGVEC)]
        return T.Compose([*(crop if s.augment else self._center()), T.ToTensor(), *color, T.Normalize(MEAN, STD)])

    def eval_transform(self) -> Any:
        """Resize the short side to 256/224 of the crop, then the centre crop (single-crop testing)."""
        from torchvision import transforms as T

        return T.Compose([*self._center(), T.ToTensor(), T.Normalize(MEAN, STD)])

    def _center(self) -> list[Any]:
        from torchvision import transforms as T

        return [T.Resize(round(self.image_size * 256 / 224)), T.CenterCrop(self.image_size)]

    def _places(self) -> list[Path]:
        return [self.settings.root] if self.settings.root is not None else [DEFAULT_DOWNLOAD_ROOT / "imagenet"]

    def setup(self, stage: str | None = None) -> None:
        """Index the class folders once (a scan of 1.3M files takes a while), split and limit them."""
        if self.train_set is not None:
            return
        from torchvision.datasets import ImageFolder

        where = next((p for p in self._places() if (p / "train").is_dir() and (p / "val").is_dir()), None)
        if where is None:
            places = " or ".join(str(p.absolute()) for p in self._places())
            raise DataError(
                f"data.root: no ImageNet train/ and val/ folders in {places}; set data.root=DIR holding "
                f"train/<class>/*.JPEG and val/<class>/*.JPEG (ImageNet cannot be downloaded automatically)"
            )
        try:
            train = ImageFolder(str(where / "train"), transform=self.train_transform())
            test = ImageFolder(str(where / "val"), transform=self.eval_transform())
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"data.root: cannot index {where}: {e}") from None
        if test.classes != train.classes:
            raise DataError(
                f"data.root: {where}/val has {len(test.classes)} class folders that differ from the "
                f"{len(train.classes)} in {where}/train; val must hold one folder per training class"
            )
        if len(train.classes) != self.num_classes:
            raise ConfigError(
                f"data.num_classes={self.num_classes}: {where}/train has {len(train.classes)} class folders"
            )
        s = self.settings
        if s.val_size >= len(train):
            raise ConfigError(f"data.val_size={s.val_size}: must be smaller than the {len(train)} images in {where}")
        train_index, val_index = split_indices(len(train), s.val_size, s.split_seed)
        self.train_set = Subset(train, train_index[: s.limit_train].tolist())
        self.test_set = Subset(test, eval_subset(len(test), s.limit_eval, s.split_seed).tolist())
        if s.val_size == 0:
            self.val_set = self.test_set
        else:
            held_out = copy.copy(train)
            held_out.transform = self.eval_transform()
            self.val_set = Subset(held_out, val_index[: s.limit_eval].tolist())
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if len(self.train_set) // world_size < s.batch_size:
            raise ConfigError(
                f"data.batch_size={s.batch_size}: larger than the {len(self.train_set) // world_size} training "
                f"images per device; lower it or raise data.limit_train"
            )
        self.source = where

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        return self._loader(self.train_set, self.settings.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        return self._loader(self.val_set, self.settings.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        assert self.test_set is not None, "call setup() first"
        return self._loader(self.test_set, self.settings.eval_batch_size, train=False)

    def describe(self) -> str:
        """One line: data set, where it was read from, split sizes once set up."""
        shape = f"{self.image_size}x{self.image_size}x{self.in_channels}, {self.num_classes} classes"
        if self.train_set is None or self.val_set is None or self.test_set is None:
            return f"imagenet ({shape}) from {self.settings.root or 'default places'}: not set up yet"
        val_note = " (= test, the val folder)" if self.settings.val_size == 0 else ""
        return (
            f"imagenet ({shape}) from {self.source}: train {len(self.train_set)}, "
            f"val {len(self.val_set)}{val_note}, test {len(self.test_set)}"
        )

    def _loader(self, dataset: Dataset, batch_size: int, *, train: bool) -> DataLoader:
        s = self.settings
        workers = s.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=workers,
            pin_memory=s.pin_memory and torch.cuda.is_available(),
            persistent_workers=s.persistent_workers and workers > 0,
        )
