"""CIFAR-10 and CIFAR-100 from the "python version" pickles that torchvision also downloads.

Layout: `cifar-10-batches-py/data_batch_1..5, test_batch` (labels under
`labels`) and `cifar-100-python/train, test` (labels under `fine_labels`),
each a pickled dict with a uint8 `data` array of N x 3072 (RGB planes of 32x32).
The files are read directly: no per-image PIL round trip, no worker processes.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from resnext_lab.data.in_memory import DEFAULT_DOWNLOAD_ROOT, InMemoryDataModule
from resnext_lab.data.settings import CIFAR10Settings, CIFAR100Settings
from resnext_lab.errors import DataError


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch as `(images uint8 N x 3 x 32 x 32, labels int64 N)`; DataError names a bad file.

    The pickles come from the data set's authors (or a path the user chose);
    like torchvision, we trust them.
    """
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, IndexError) as e:
        raise DataError(
            f"data.root: {path} is not a readable CIFAR batch ({type(e).__name__}: {e}); replace it"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(
            f"data.root: {path} holds data of shape {data.shape} for {len(labels)} labels, "
            f"expected (N, 3072) with N labels; replace it"
        )
    return data.reshape(-1, 3, 32, 32), labels


class _CIFARDataModule(InMemoryDataModule):
    """The shared CIFAR logic; subclasses name the folder, files and label key."""

    folder: ClassVar[str]
    train_files: ClassVar[tuple[str, ...]]
    test_files: ClassVar[tuple[str, ...]]
    label_key: ClassVar[str]
    download_name: ClassVar[str]

    def _places(self) -> list[Path]:
        root = self.settings.root
        if root is not None:
            # data.root may name the folder holding cifar-*-py, or that folder itself.
            return [root / self.folder, root]
        return [DEFAULT_DOWNLOAD_ROOT / self.folder]

    def _locate(self) -> Path | None:
        names = self.train_files + self.test_files
        return next((p for p in self._places() if all((p / name).is_file() for name in names)), None)

    def _train_count(self, where: Path) -> int | None:
        """The data set's published size: its pickles hold no header that says it (reading checks it)."""
        return 50_000

    def _read(self, where: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        out = []
        for names in (self.train_files, self.test_files):
            parts = [read_cifar_batch(where / name, self.label_key) for name in names]
            images = np.concatenate([p[0] for p in parts])
            labels = np.concatenate([p[1] for p in parts])
            if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise DataError(f"data.root: labels in {where} are not 0..{self.num_classes - 1}; is it {self.title}?")
            out += [torch.from_numpy(images), torch.from_numpy(labels)]
        return out[0], out[1], out[2], out[3]

    def _download(self) -> None:
        import torchvision.datasets

        dataset = getattr(torchvision.datasets, self.download_name)
        dataset(str(self.settings.root or DEFAULT_DOWNLOAD_ROOT), train=True, download=True)

    def _missing(self) -> str:
        files = f"{self.folder}/{{{','.join(self.train_files + self.test_files)}}}"
        places = " or ".join(str(place.absolute()) for place in self._places())
        return (
            f"data.root: no {self.title} python batches ({files}) in {places}; "
            f"set data.root=DIR (the folder holding {self.folder}), or set data.download=true"
        )


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10: 50k training (minus `val_size` held out) and 10k test images, 32x32 RGB, 10 classes."""

    title = "CIFAR-10"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    schema = CIFAR10Settings
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"
    download_name = "CIFAR10"


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (fine labels): 50k training (minus `val_size` held out) and 10k test images, 100 classes."""

    title = "CIFAR-100"
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    schema = CIFAR100Settings
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    download_name = "CIFAR100"
