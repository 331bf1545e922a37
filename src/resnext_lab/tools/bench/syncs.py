"""The host-sync audit: which operations make the host wait for the device, and where they are called."""

from __future__ import annotations

import os
import traceback
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

#: aten ops whose result (a value or a data-dependent size) a CUDA host must wait for.
SYNC_OPS = frozenset(
    {
        "_local_scalar_dense",  # .item(), bool(t), float(t), `if t:`
        "nonzero",
        "masked_select",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "unique_dim_consecutive",
        "bincount",
        "repeat_interleave",
        "equal",
    }
)


class HostSyncs(TorchDispatchMode):
    """Counts operations that make the host wait for a CUDA device, with the line that called each.

    The list is what `torch.cuda.set_sync_debug_mode` catches: values read to the host
    (`.item()`, `if tensor:`), data-dependent sizes (nonzero, unique, boolean-mask indexing)
    and blocking copies between host and GPU. It counts on any device, with that device's
    code paths: on CPU, ATen runs a few range checks (e.g. in `one_hot`) that it skips on CUDA,
    and copies between host and GPU cannot occur. Counts only while `active`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.active = False
        self.sites: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.active and _is_sync(func.overloadpacket.__name__, args, kwargs):
            self.sites[f"{func.name()} at {_caller()}"] += 1
        return func(*args, **kwargs)

    @property
    def count(self) -> int:
        return sum(self.sites.values())


def _is_sync(name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    if name in SYNC_OPS:
        return True
    if name in ("index", "index_put", "index_put_") and len(args) > 1:  # a boolean mask hides a nonzero
        return any(isinstance(t, Tensor) and t.dtype in (torch.bool, torch.uint8) for t in args[1] if t is not None)
    if name == "_to_copy" and kwargs.get("device") is not None:
        return _blocking_transfer(args[0].device, torch.device(kwargs["device"]), kwargs.get("non_blocking", False))
    if name == "copy_" and len(args) > 1 and isinstance(args[1], Tensor):
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
        return _blocking_transfer(args[1].device, args[0].device, non_blocking)
    return False


def _blocking_transfer(source: torch.device, target: torch.device, non_blocking: bool) -> bool:
    return not non_blocking and source.type != target.type and "cuda" in (source.type, target.type)


def _caller() -> str:
    """The innermost frame outside torch itself: the line that asked for the sync."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace(os.sep, "/")
        if "/torch/" not in path:
            short = path.split("site-packages/")[-1].split("/src/")[-1]
            return f"{short}:{frame.lineno}"
    return "?"


# --- the proxy epoch: Lightning against a plain loop -----------------------------------------------------


class _Audit(pl.Callback):
    """Counts host syncs during one epoch's training steps (the second: the first initialises lazily)."""

    def __init__(self, counter: HostSyncs, epoch: int = 1) -> None:
        self.counter, self.epoch = counter, epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counter.active = trainer.current_epoch == self.epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counter.active = False
