"""Fashion-MNIST from its four IDX files, read with numpy.

The files are looked for in `data.root`, else in Debian's dataset-fashion-mnist
(/usr/share/datasets/fashion-mnist), else where a torchvision download put them
(./data/FashionMNIST/raw). Reading IDX ourselves keeps the Debian copy usable
as is (torchvision insists on its own folder layout) and lets a truncated or
corrupt file fail with its name instead of a reshape error.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from resnext_lab.data.in_memory import DEFAULT_DOWNLOAD_ROOT, InMemoryDataModule
from resnext_lab.data.settings import FashionMNISTSettings
from resnext_lab.errors import DataError

#: Debian's dataset-fashion-mnist installs the gzipped IDX files here.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: The four files, without the optional `.gz`.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: IDX magic numbers: 0x0000 then type 0x08 (unsigned byte) then the number of dimensions.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def read_idx(path: Path, magic: int | None = None) -> np.ndarray:
    """An IDX file (gzipped if its name ends in .gz) as a uint8 array of the shape its header gives.

    Checks the magic number (against `magic` if given) and that the payload is
    exactly as long as the header's dimensions say; anything else raises
    DataError naming the file.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"data.root: cannot read {path} ({e}); the file is damaged, replace it") from None
    if len(raw) < 4:
        raise DataError(f"data.root: {path} is truncated ({len(raw)} bytes, no IDX header); replace it")
    (found,) = struct.unpack(">I", raw[:4])
    if (magic is not None and found != magic) or found >> 8 != 0x08:
        expected = f"0x{magic:08x}" if magic is not None else "0x000008NN"
        raise DataError(f"data.root: {path} is not an IDX uint8 file (magic 0x{found:08x}, expected {expected})")
    ndim = found & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"data.root: {path} is truncated inside its IDX header; replace it")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != math.prod(dims):
        raise DataError(
            f"data.root: {path} is truncated or corrupt: header says {'x'.join(map(str, dims))} = "
            f"{math.prod(dims)} bytes, found {len(raw) - header}; replace it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def find_idx_files(directory: Path) -> list[Path] | None:
    """The four IDX files in `directory` (each gzipped or not), or None if any is missing."""
    found = []
    for name in IDX_FILES:
        for candidate in (directory / f"{name}.gz", directory / name):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            return None
    return found


class FashionMNISTDataModule(InMemoryDataModule):
    """Fashion-MNIST: 60k training (minus `val_size` held out) and 10k test images, 28x28 grey, 10 classes."""

    title = "Fashion-MNIST"
    mean = (0.2860,)
    std = (0.3530,)
    schema = FashionMNISTSettings

    def _places(self) -> list[Path]:
        root = self.settings.root
        if root is not None:
            return [root, root / "FashionMNIST" / "raw"]
        return [DEBIAN_DIR, DEFAULT_DOWNLOAD_ROOT / "FashionMNIST" / "raw"]

    def _locate(self) -> Path | None:
        return next((place for place in self._places() if find_idx_files(place) is not None), None)

    def _train_count(self, where: Path) -> int | None:
        """The training labels file's IDX header: its magic number, then the number of labels."""
        files = find_idx_files(where)
        if files is None:
            return None
        path = files[1]
        try:
            with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
                header = f.read(8)
        except (OSError, EOFError, zlib.error):
            return None  # reading the whole file reports it
        if len(header) < 8 or struct.unpack(">I", header[:4])[0] != LABELS_MAGIC:
            return None
        return int(struct.unpack(">I", header[4:])[0])

    def _read(self, where: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        files = find_idx_files(where)
        assert files is not None
        train_x, train_y, test_x, test_y = (
            read_idx(path, IMAGES_MAGIC if "images" in path.name else LABELS_MAGIC) for path in files
        )
        for images, labels, images_path in ((train_x, train_y, files[0]), (test_x, test_y, files[2])):
            if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
                raise DataError(
                    f"data.root: {images_path} holds {images.shape} images for {len(labels)} labels, "
                    f"expected (N, 28, 28) with N labels; replace the files"
                )
            if labels.ndim != 1 or (labels.size > 0 and labels.max() >= 10):
                raise DataError(f"data.root: labels for {images_path} are not 0..9; replace the files")
        return (
            torch.from_numpy(train_x).unsqueeze(1),
            torch.from_numpy(train_y).long(),
            torch.from_numpy(test_x).unsqueeze(1),
            torch.from_numpy(test_y).long(),
        )

    def _download(self) -> None:
        from torchvision.datasets import FashionMNIST

        root = self.settings.root or DEFAULT_DOWNLOAD_ROOT
        for train in (True, False):
            FashionMNIST(str(root), train=train, download=True)

    def _missing(self) -> str:
        places = " or ".join(str(place.absolute()) for place in self._places())
        return (
            f"data.root: no Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz] and 3 more) in {places}; "
            f"install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist), "
            f"set data.root=DIR, or set data.download=true"
        )
