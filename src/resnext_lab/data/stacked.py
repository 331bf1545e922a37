"""S seeds' data as one stream: each seed's own datamodule, their batches stacked along dim 1.

A stacked network (models/stack.py) trains S seeds at once, and each seed must see what its lone job
sees: its own subset (`split_seed`), its own order (`shuffle_seed`, the run's seed), its own validation
split and its own augmentation draws. So nothing is shared: the S datamodules are the ones S lone jobs
build (`job.check_job` for each seed, `shuffle_seed` set as tasks/train.py sets it), served side by side.

A lone job augments from the global RNG as `seed_everything(seed)` and drawing its network left it: on
the CPU the state `models.stack` keeps in `StackedResNeXt.rngs`, on a GPU its CUDA generator seeded with
the seed (the network is drawn on the CPU). Slice i augments from a generator of its own in that state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from resnext_lab.data.in_memory import InMemoryDataModule
from resnext_lab.errors import ConfigError


class ZippedBatches:
    """The seeds' loaders in step: one (images[B, S, ...], labels[B, S]) batch of S seeds' batches."""

    def __init__(self, loaders: Sequence[Any], stage: str) -> None:
        counts = [len(loader) for loader in loaders]
        if len(set(counts)) > 1:
            raise ConfigError(
                f"stack: the seeds' {stage} data give {counts} batches per epoch; a stack needs the same number "
                "for every seed (the same data.limit_*, data.val_size and batch sizes)"
            )
        self.loaders = list(loaders)

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for parts in zip(*self.loaders, strict=True):
            shapes = {tuple(images.shape) for images, _ in parts}
            if len(shapes) > 1:
                raise ConfigError(f"stack: the seeds' batches differ in shape ({sorted(shapes)}); they cannot stack")
            yield torch.stack([images for images, _ in parts], 1), torch.stack([labels for _, labels in parts], 1)


class StackedDataModule(pl.LightningDataModule):
    """`datamodules[i]` is seed i's; `rngs[i]` the CPU RNG state its augmentation starts from
    (`StackedResNeXt.rngs`; None: a generator seeded with the datamodule's `shuffle_seed`)."""

    def __init__(
        self, datamodules: Sequence[pl.LightningDataModule], rngs: Sequence[Tensor | None] | None = None
    ) -> None:
        super().__init__()
        self.datamodules = list(datamodules)
        if not self.datamodules:
            raise ConfigError("stack: needs at least one seed's data")
        for dm in self.datamodules:
            if not isinstance(dm, InMemoryDataModule):
                raise ConfigError(
                    f"stack: data.name={getattr(getattr(dm, 'settings', None), 'name', type(dm).__name__)!r} is "
                    "served by worker processes; only the in-memory data sets (fashion_mnist, cifar10, cifar100) stack"
                )
        self.rngs = list(rngs) if rngs is not None else [None] * len(self.datamodules)
        if len(self.rngs) != len(self.datamodules):
            raise ValueError(f"{len(self.datamodules)} datamodules but {len(self.rngs)} RNG states")
        first = self.datamodules[0]
        #: what the module reads (the per-seed batch: optim.scale_lr scales as each lone job does)
        self.settings = first.settings
        self.num_classes, self.in_channels, self.image_size = first.num_classes, first.in_channels, first.image_size
        self._generators: dict[torch.device, list[torch.Generator]] = {}

    @property
    def size(self) -> int:
        return len(self.datamodules)

    def prepare_data(self) -> None:
        for dm in self.datamodules:
            dm.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        for dm in self.datamodules:
            dm.trainer = self.trainer
            dm.setup(stage)
        if stage in (None, "fit"):
            self._generators = {}  # a (resumed) fit augments from where a lone job's would: see the docstring

    def train_dataloader(self) -> ZippedBatches:
        return ZippedBatches([dm.train_dataloader() for dm in self.datamodules], "training")

    def val_dataloader(self) -> ZippedBatches:
        return ZippedBatches([dm.val_dataloader() for dm in self.datamodules], "validation")

    def test_dataloader(self) -> ZippedBatches:
        return ZippedBatches([dm.test_dataloader() for dm in self.datamodules], "test")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Each seed's batch augmented (training only) and normalised as its own datamodule does it."""
        images, labels = batch
        training = self.trainer is not None and self.trainer.training
        return self.prepare_batch(images, train=training), labels

    def prepare_batch(self, images: Tensor, *, train: bool) -> Tensor:
        """uint8 (B, S, C, H, W) -> the stack's float input, slice i prepared by seed i's datamodule."""
        generators = self.generators(images.device) if train else [None] * self.size
        parts = [
            dm.prepare_batch(images[:, i], train=train, generator=g)
            for i, (dm, g) in enumerate(zip(self.datamodules, generators, strict=True))
        ]
        return torch.stack(parts, 1)

    def generators(self, device: torch.device) -> list[torch.Generator]:
        """Each seed's augmentation generator on `device`, made on first use."""
        if device not in self._generators:
            made = []
            for dm, state in zip(self.datamodules, self.rngs, strict=True):
                seed = dm.shuffle_seed if dm.shuffle_seed is not None else dm.settings.split_seed
                g = torch.Generator(device=device)
                if device.type == "cpu" and state is not None:
                    g.set_state(state)
                else:
                    g.manual_seed(int(seed))
                made.append(g)
            self._generators[device] = made
        return self._generators[device]

    def describe(self) -> str:
        return f"{self.size} seeds' data, each {self.datamodules[0].describe()}"
