"""The data package: each loader on small files written in the data set's own format.

Fake images carry their index in the first two pixels (Fashion-MNIST), so
tests can follow individual examples through splits, shards and shuffles.
"""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from resnext_lab.data import (
    DATA_SCHEMAS,
    TensorBatches,
    build_datamodule,
    crop_and_flip,
    normalize,
    read_idx,
    split_indices,
)
from resnext_lab.data.fashion_mnist import DEBIAN_DIR, IMAGES_MAGIC, LABELS_MAGIC
from resnext_lab.errors import ConfigError, DataError
from resnext_lab.job import compose

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"
FMNIST_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# -- writing fake data sets in their own formats ---------------------------------


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def fake_fmnist_images(n: int, first_id: int, rng: np.random.Generator) -> np.ndarray:
    images = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)
    ids = np.arange(first_id, first_id + n)
    images[:, 0, 0] = ids % 256
    images[:, 0, 1] = ids // 256
    return images


def write_fmnist(root: Path, n_train: int = 120, n_test: int = 40, gz: bool = True) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    arrays = (
        (fake_fmnist_images(n_train, 0, rng), IMAGES_MAGIC),
        (np.arange(n_train, dtype=np.uint8) % 10, LABELS_MAGIC),
        (fake_fmnist_images(n_test, 1000, rng), IMAGES_MAGIC),
        (np.arange(n_test, dtype=np.uint8) % 10, LABELS_MAGIC),
    )
    for name, (array, magic) in zip(FMNIST_NAMES, arrays, strict=True):
        write_idx(root / (name + (".gz" if gz else "")), array, magic)
    return root


def image_ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()).tolist()


def write_cifar_batch(path: Path, n: int, label_key: str, num_classes: int, rng: np.random.Generator) -> None:
    entry = {
        "batch_label": path.name,
        label_key: [int(i % num_classes) for i in range(n)],
        "data": rng.integers(1, 256, size=(n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }
    with path.open("wb") as f:
        pickle.dump(entry, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = 24, n_test: int = 40) -> Path:
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", per_batch, "labels", 10, rng)
    write_cifar_batch(folder / "test_batch", n_test, "labels", 10, rng)
    return root


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 100) -> Path:
    rng = np.random.default_rng(2)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    write_cifar_batch(folder / "train", n_train, "fine_labels", 100, rng)
    write_cifar_batch(folder / "test", n_test, "fine_labels", 100, rng)
    return root


def write_imagenet(root: Path, classes: tuple[str, ...] = ("n01", "n02", "n03"), train: int = 4, val: int = 2) -> Path:
    rng = np.random.default_rng(3)
    for split, count in (("train", train), ("val", val)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}.JPEG", "JPEG")
    return root


def setup(cfg: dict[str, Any]) -> Any:
    dm = build_datamodule(cfg)
    dm.setup("fit")
    return dm


# -- config ---------------------------------------------------------------------


def test_unknown_name_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as e:
        build_datamodule({"name": "foo"})
    assert str(e.value) == "data.name='foo': must be one of fashion_mnist, cifar10, cifar100, imagenet"


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"batch_size": 0}, "data.batch_size"),
        ({"batch_size": True}, "data.batch_size"),
        ({"eval_batch_size": 0}, "data.eval_batch_size"),
        ({"val_size": -1}, "data.val_size"),
        ({"limit_train": "ten"}, "data.limit_train"),
        ({"limit_eval": 0}, "data.limit_eval"),
        ({"num_workers": -1}, "data.num_workers"),
        ({"augment": "yes"}, "data.augment"),
        ({"split_seed": -3}, "data.split_seed"),
        ({"num_classes": 100}, "data.num_classes"),
        ({"image_size": 32}, "data.image_size"),
        ({"root": 5}, "data.root"),
    ],
)
def test_bad_fields_name_the_field(override: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_datamodule({"name": "fashion_mnist", **override})
    assert str(e.value).startswith(field + "=")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "cifar100", "imagenet"])
def test_composed_data_node_is_the_schema(name: str) -> None:
    """What `data=NAME` composes is its schema's defaults, key for key: the YAML adds no setting of its own."""
    cfg = compose([f"data={name}"]).data
    dm = build_datamodule(cfg)
    schema = DATA_SCHEMAS[name]
    assert cfg.name == name and dm.settings == schema()
    assert set(cfg) == {f.name for f in dataclasses.fields(schema)}
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (cfg.num_classes, cfg.in_channels, cfg.image_size)
    assert "not set up" in dm.describe()


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "cifar100"])
def test_in_memory_sets_take_no_loader_settings(name: str) -> None:
    for key, value in (("num_workers", 4), ("pin_memory", True), ("persistent_workers", False)):
        with pytest.raises(ConfigError, match=f"^data.{key}={value!r}: no such setting here; data has name, "):
            build_datamodule({"name": name, key: value})
    assert build_datamodule({"name": "imagenet", "num_workers": 4}).settings.num_workers == 4


def test_shape_attributes_before_setup() -> None:
    expected = {
        "fashion_mnist": (10, 1, 28),
        "cifar10": (10, 3, 32),
        "cifar100": (100, 3, 32),
        "imagenet": (1000, 3, 224),
    }
    for name, shape in expected.items():
        dm = build_datamodule({"name": name, "root": "/nonexistent"})
        assert (dm.num_classes, dm.in_channels, dm.image_size) == shape


# -- Fashion-MNIST ----------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_fmnist_reads_idx_and_splits(tmp_path: Path, gz: bool) -> None:
    dm = setup({"name": "fashion_mnist", "root": str(write_fmnist(tmp_path, gz=gz)), "val_size": 20, "batch_size": 8})
    assert (len(dm.train_images), len(dm.val_images), len(dm.test_images)) == (100, 20, 40)
    for images, labels in ((dm.train_images, dm.train_labels), (dm.test_images, dm.test_labels)):
        assert images.dtype == torch.uint8 and images.shape[1:] == (1, 28, 28)
        assert labels.dtype == torch.int64 and labels.min() >= 0 and labels.max() <= 9
    train, val = set(image_ids(dm.train_images)), set(image_ids(dm.val_images))
    assert not train & val and train | val == set(range(120))
    assert image_ids(dm.test_images) == list(range(1000, 1040))
    assert dm.describe().endswith("train 100, val 20, test 40")
    assert str(tmp_path) in dm.describe()


def test_fmnist_split_is_seeded(tmp_path: Path) -> None:
    root = str(write_fmnist(tmp_path))
    val = [
        image_ids(
            setup({"name": "fashion_mnist", "root": root, "val_size": 20, "split_seed": s, "batch_size": 8}).val_images
        )
        for s in (0, 0, 1)
    ]
    assert val[0] == val[1] and val[0] != val[2]


def test_fmnist_limits_and_val_size_zero(tmp_path: Path) -> None:
    root = str(write_fmnist(tmp_path))
    dm = setup(
        {"name": "fashion_mnist", "root": root, "val_size": 0, "limit_train": 50, "limit_eval": 16, "batch_size": 8}
    )
    assert (len(dm.train_images), len(dm.val_images), len(dm.test_images)) == (50, 16, 16)
    assert dm.val_images is dm.test_images
    with pytest.raises(ConfigError, match=r"^data\.val_size=120:"):
        setup({"name": "fashion_mnist", "root": root, "val_size": 120})
    with pytest.raises(ConfigError, match=r"^data\.batch_size=256:"):
        setup({"name": "fashion_mnist", "root": root, "val_size": 20})


def test_fmnist_missing_files_say_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        setup({"name": "fashion_mnist", "root": str(tmp_path)})
    message = str(e.value)
    assert str(tmp_path) in message and "dataset-fashion-mnist" in message and "data.download=true" in message
    assert "\n" not in message


def test_fmnist_corrupt_files_are_named(tmp_path: Path) -> None:
    root = write_fmnist(tmp_path, gz=False)
    images = root / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:5000])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated"):
        setup({"name": "fashion_mnist", "root": str(root), "val_size": 20, "batch_size": 8})
    labels = root / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte is not an IDX"):
        read_idx(labels, LABELS_MAGIC)
    garbage = tmp_path / "x-idx1-ubyte.gz"
    garbage.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="x-idx1-ubyte.gz"):
        read_idx(garbage)


@pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist() -> None:
    dm = setup({"name": "fashion_mnist", "val_size": 0})
    assert str(dm.source) == str(DEBIAN_DIR)
    assert (len(dm.train_labels), len(dm.test_labels)) == (60000, 10000)
    assert torch.bincount(dm.train_labels).tolist() == [6000] * 10
    assert torch.bincount(dm.test_labels).tolist() == [1000] * 10
    assert dm.train_images.shape == (60000, 1, 28, 28) and dm.train_images.dtype == torch.uint8


# -- CIFAR ------------------------------------------------------------------------


def test_cifar10_reads_pickles(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        dm = setup({"name": "cifar10", "root": str(root), "val_size": 20, "batch_size": 16})
        assert (len(dm.train_images), len(dm.val_images), len(dm.test_images)) == (100, 20, 40)
        assert dm.train_images.shape[1:] == (3, 32, 32) and dm.train_images.dtype == torch.uint8
        assert set(dm.test_labels.tolist()) == set(range(10))


def test_cifar100_reads_fine_labels(tmp_path: Path) -> None:
    dm = setup({"name": "cifar100", "root": str(write_cifar100(tmp_path)), "val_size": 50, "batch_size": 16})
    assert (len(dm.train_images), len(dm.val_images), len(dm.test_images)) == (150, 50, 100)
    assert dm.num_classes == 100 and set(dm.test_labels.tolist()) == set(range(100))


def test_cifar_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        setup({"name": "cifar10", "root": str(tmp_path)})
    assert str(tmp_path / "cifar-10-batches-py") in str(e.value) and "data.download=true" in str(e.value)
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02}q\x00")
    with pytest.raises(DataError, match="data_batch_3"):
        setup({"name": "cifar10", "root": str(tmp_path), "val_size": 20})


# -- batching and augmentation --------------------------------------------------


def test_shuffling_is_seeded_per_epoch() -> None:
    images, labels = torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), torch.arange(100)

    def order(seed: int, epoch: int) -> list[int]:
        batches = TensorBatches(images, labels, 10, shuffle=True, drop_last=True, seed=seed, epoch_fn=lambda: epoch)
        return torch.cat([y for _, y in batches]).tolist()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 3)) == list(range(100))
    counted = TensorBatches(images, labels, 10, shuffle=True, seed=0)
    assert [torch.cat([y for _, y in counted]).tolist() for _ in range(2)] == [order(0, 0), order(0, 1)]
    evaluation = TensorBatches(images, labels, 32)
    assert len(evaluation) == 4 and torch.cat([y for _, y in evaluation]).tolist() == list(range(100))


def test_ranks_get_disjoint_equal_shards() -> None:
    images, labels = torch.zeros(103, 1, 1, 1, dtype=torch.uint8), torch.arange(103)
    train = [TensorBatches(images, labels, 8, shuffle=True, drop_last=True, rank=r, world_size=4) for r in range(4)]
    shards = [torch.cat([y for _, y in t]).tolist() for t in train]
    assert all(len(t) == 3 and len(s) == 24 for t, s in zip(train, shards, strict=True))
    assert len(set().union(*shards)) == 96
    evals = [TensorBatches(images, labels, 8, rank=r, world_size=4) for r in range(4)]
    assert {len(e) for e in evals} == {4}
    covered = [torch.cat([y for _, y in e]).tolist() for e in evals]
    assert set().union(*covered) == set(range(103)) and all(len(c) == 26 for c in covered)


def test_split_indices_partition() -> None:
    train, val = split_indices(50, 10, seed=7)
    assert len(val) == 10 and sorted(torch.cat([train, val]).tolist()) == list(range(50))


def test_crop_and_flip_matches_a_shifted_or_flipped_crop() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=generator)
    out = crop_and_flip(images, 2, generator)
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.is_contiguous()
    assert not torch.equal(out, images)
    padded = F.pad(images, (2, 2, 2, 2))
    for i in range(len(images)):
        crops = [padded[i, :, y : y + 8, x : x + 8] for y in range(5) for x in range(5)]
        assert any(torch.equal(out[i], c) or torch.equal(out[i], c.flip(-1)) for c in crops)
    assert sum(torch.equal(out[i], images[i]) for i in range(64)) < 16


def test_normalize_gives_float_nchw() -> None:
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize(images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert out.dtype == torch.float32 and out.is_contiguous() and torch.allclose(out, torch.full_like(out, 2.0))
    with pytest.raises(TypeError):
        normalize(out, (0.5,), (0.5,))


# -- ImageNet folders ---------------------------------------------------------------


def test_imagenet_folders(tmp_path: Path) -> None:
    root = str(write_imagenet(tmp_path))
    cfg = {"name": "imagenet", "root": root, "num_classes": 3, "batch_size": 4, "num_workers": 0}
    dm = setup({**cfg, "image_size": 32})
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 6, 6) and dm.val_set is dm.test_set
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32 and set(labels.tolist()) <= {0, 1, 2}
    assert len(dm.train_dataloader()) == 3 and len(dm.test_dataloader()) == 2
    assert next(iter(setup(cfg).test_dataloader()))[0].shape == (4, 3, 224, 224)
    held_out = setup({**cfg, "val_size": 4, "limit_eval": 3})
    assert (len(held_out.train_set), len(held_out.val_set), len(held_out.test_set)) == (8, 3, 3)
    assert "train 8, val 3, test 3" in held_out.describe()


def test_imagenet_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as e:
        setup({"name": "imagenet", "root": str(tmp_path / "none"), "num_workers": 0})
    assert str(tmp_path / "none") in str(e.value)
    root = str(write_imagenet(tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"^data\.num_classes=1000: .* 3 class folders"):
        setup({"name": "imagenet", "root": root, "num_workers": 0})
    root = write_imagenet(tmp_path / "b")
    (root / "val" / "n03").rename(root / "val" / "n04")
    with pytest.raises(DataError, match="class folders that differ"):
        setup({"name": "imagenet", "root": str(root), "num_classes": 3, "num_workers": 0})


# -- a real Lightning run over each datamodule ---------------------------------------


class Tiny(pl.LightningModule):
    """A linear classifier that records what each step received."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, classes))
        self.seen: dict[str, list[tuple[int, torch.Tensor, torch.Tensor]]] = {"train": [], "val": [], "test": []}

    def _step(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        self.seen[stage].append((self.current_epoch, x, y))
        return F.cross_entropy(self.net(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step("train", batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step("test", batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer(**kwargs: Any) -> pl.Trainer:
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_train_batches": 2,
        "limit_val_batches": 2,
        "limit_test_batches": 2,
    }
    return pl.Trainer(**{**options, **kwargs})


def lightning_configs(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {
        "fashion_mnist": {
            "name": "fashion_mnist",
            "root": str(write_fmnist(tmp_path / "f")),
            "val_size": 20,
            "batch_size": 10,
        },
        "cifar10": {"name": "cifar10", "root": str(write_cifar10(tmp_path / "c")), "val_size": 20, "batch_size": 10},
        "imagenet": {
            "name": "imagenet",
            "root": str(write_imagenet(tmp_path / "i")),
            "num_classes": 3,
            "image_size": 32,
            "batch_size": 4,
            "num_workers": 0,
        },
    }


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "imagenet"])
def test_lightning_fit_validate_test(tmp_path: Path, name: str) -> None:
    dm = build_datamodule(lightning_configs(tmp_path)[name])
    model = Tiny(dm.in_channels * dm.image_size**2, dm.num_classes)
    trainer(max_epochs=2).fit(model, datamodule=dm)
    trainer().validate(model, datamodule=dm)
    trainer().test(model, datamodule=dm)
    shape = (dm.in_channels, dm.image_size, dm.image_size)
    for stage in ("train", "val", "test"):
        assert model.seen[stage], stage
        for _, x, y in model.seen[stage]:
            assert x.dtype == torch.float32 and x.is_contiguous() and x.shape[1:] == shape
            assert y.dtype == torch.int64 and y.min() >= 0 and y.max() < dm.num_classes
    assert "train" in dm.describe() and "not set up" not in dm.describe()


def test_lightning_shuffles_per_epoch_and_augments_only_training(tmp_path: Path) -> None:
    dm = build_datamodule(lightning_configs(tmp_path)["cifar10"])
    model = Tiny(3 * 32 * 32, 10)
    trainer(max_epochs=2).fit(model, datamodule=dm)
    loader = dm.train_dataloader()
    for epoch in (0, 1):
        seen = torch.cat([y for e, _, y in model.seen["train"] if e == epoch]).tolist()
        assert seen == dm.train_labels[loader.indices(epoch)[:20]].tolist()
    # Zero padding shows up as a constant row or column of the normalised value of 0.
    black = torch.tensor([-m / s for m, s in zip(dm.mean, dm.std, strict=True)]).view(1, 3, 1, 1)

    def padded(x: torch.Tensor) -> int:
        is_black = torch.isclose(x, black.expand_as(x)).all(dim=1)
        return int((is_black.all(dim=2).any(dim=1) | is_black.all(dim=1).any(dim=1)).sum())

    assert sum(padded(x) for _, x, _ in model.seen["train"]) > 10
    assert sum(padded(x) for _, x, _ in model.seen["val"]) == 0
    _, x, _ = model.seen["val"][0]
    assert torch.equal(x, dm.prepare_batch(dm.val_images[:10], train=False))
