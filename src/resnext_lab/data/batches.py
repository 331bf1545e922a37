"""Serving small data sets from memory, and augmenting whole batches on their device.

Fashion-MNIST and CIFAR fit in a few hundred MB as uint8, so a DataLoader with
worker processes only adds overhead: per-sample Python transforms and pickling
dominate a step of a small network. `TensorBatches` indexes the stored tensors
directly (on the GPU once the data lives there), and `crop_and_flip` /
`normalize` turn a uint8 batch into the network's float input in a few kernels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def seeded_permutation(n: int, seed: int, epoch: int = 0) -> torch.Tensor:
    """A permutation of `range(n)` fixed by `(seed, epoch)`.

    The two numbers are mixed with numpy's SeedSequence rather than added, so
    (seed=1, epoch=0) and (seed=0, epoch=1) give unrelated orders. The generator
    is a fresh CPU one: the order never depends on global RNG state or device.
    """
    state = int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(state))


def split_indices(n: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hold `val_size` of `n` training examples out for validation: `(train, val)` indices.

    Both are in the seeded shuffled order, so "the first N" of either (see
    `data.limit_train` / `data.limit_eval`) is a random, class-balanced-in-expectation subset.
    """
    order = seeded_permutation(n, seed)
    return order[val_size:], order[:val_size]


def eval_subset(n: int, limit: int | None, seed: int) -> torch.Tensor:
    """Indices of an evaluation set: all of it in file order, or a seeded random `limit` of it.

    Random rather than the first `limit` files, because files may be sorted by
    class (ImageNet's val folders are).
    """
    if limit is None or limit >= n:
        return torch.arange(n)
    return seeded_permutation(n, seed)[:limit]


def shard(order: torch.Tensor, rank: int, world_size: int, *, drop_last: bool) -> torch.Tensor:
    """This rank's disjoint share of `order`, the same length on every rank.

    Equal lengths keep DDP ranks in step (a rank with one batch more would wait
    forever in the gradient all-reduce). Training drops the remainder; evaluation
    pads by repeating the first examples, as torch's DistributedSampler does.
    """
    if world_size == 1:
        return order
    n = len(order)
    per_rank = n // world_size if drop_last else math.ceil(n / world_size)
    total = per_rank * world_size
    if total > n:
        order = order.repeat(math.ceil(total / n))
    return order[:total][rank::world_size]


class TensorBatches:
    """`(images, labels)` batches of stored tensors, without a DataLoader.

    With `shuffle`, each epoch draws a new order from `(seed, epoch)`, so a run
    is reproducible and a resumed run sees the same orders; `epoch_fn` supplies
    the epoch (the trainer's `current_epoch`), else passes are counted. Under DDP
    each of the `world_size` ranks gets a disjoint shard of that epoch's order.
    Images are yielded as stored (uint8); labels as int64.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        epoch_fn: Callable[[], int] | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch_fn = epoch_fn
        self._passes = 0

    def indices(self, epoch: int) -> torch.Tensor:
        """The example indices this rank visits in `epoch`, in order."""
        n = len(self.labels)
        order = seeded_permutation(n, self.seed, epoch) if self.shuffle else torch.arange(n)
        return shard(order, self.rank, self.world_size, drop_last=self.drop_last)

    def __len__(self) -> int:
        n = len(self.labels)
        per_rank = n // self.world_size if self.drop_last else math.ceil(n / self.world_size)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else self._passes
        self._passes += 1
        order = self.indices(epoch).to(self.images.device)
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.images[index], self.labels[index]


def crop_and_flip(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by `padding`, take a random crop of the original size, flip half: per sample, vectorised.

    The paper's CIFAR augmentation ("4 pixels are padded on each side, and a
    32x32 crop is randomly sampled from the padded image or its horizontal
    flip"), done as one gather so it costs the same for 1 or 1000 samples. The
    random numbers come from `generator` (on the images' device) or the device's
    global RNG.
    """
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=device, generator=generator)
    flip = torch.randint(0, 2, (n, 1), device=device, generator=generator).bool()
    rows = dy + torch.arange(h, device=device)
    columns = torch.arange(w, device=device)
    columns = dx + torch.where(flip, w - 1 - columns, columns)
    return padded[
        torch.arange(n, device=device)[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows[:, None, :, None],
        columns[:, None, None, :],
    ]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 NCHW in [0, 255] -> float32 NCHW, contiguous, `(x/255 - mean) / std` per channel."""
    if images.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 batch, got {images.dtype}")
    scale, shift = _affine(tuple(mean), tuple(std), images.device)
    return images.float().mul_(scale).sub_(shift).contiguous()


@functools.lru_cache(maxsize=16)
def _affine(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """`normalize`'s per-channel factors, made once per device: a host-to-GPU copy every step would stall it."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (1.0 / (255.0 * std_t)).to(device), (mean_t / std_t).to(device)
