"""STAND-IN for the stacked module (branch `stack` builds the real one): the same names and contract, made of
S lone networks side by side (not grouped convs), so that the sweep side can be built and tested. Removed once
the real module is merged."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MinMetric

from resnext_lab.config import OptimSettings, parse
from resnext_lab.module import EpochErrors, schedule, sgd


class StackedResNeXt(nn.Module):
    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([net(x[:, i]) for i, net in enumerate(self.nets)], 1)

    def lone_state_dict(self, i: int) -> dict[str, Tensor]:
        return self.nets[i].state_dict()

    def load_lone_state_dict(self, i: int, state: dict[str, Tensor]) -> None:
        self.nets[i].load_state_dict(state)


def stack(spec: Any, seeds: Sequence[int]) -> StackedResNeXt:
    from resnext_lab.models import build

    nets = []
    for seed in seeds:
        pl.seed_everything(seed, workers=True, verbose=False)
        nets.append(build(spec))
    return StackedResNeXt(nets)


class StackedModule(pl.LightningModule):
    def __init__(
        self,
        net: StackedResNeXt,
        optim: Any,
        num_classes: int,
        channels_last: bool = False,
        check_finite_every_n_steps: int = 50,
    ) -> None:
        super().__init__()
        self.net = net
        self.optim = optim if isinstance(optim, OptimSettings) else parse(OptimSettings, optim, "optim")
        self.size = len(net.nets)
        self.channels_last = channels_last
        self.check_every = max(1, int(check_finite_every_n_steps))
        self.metrics = nn.ModuleDict(
            {
                f"s{i}_{stage}_": EpochErrors(min(5, num_classes))
                for i in range(self.size)
                for stage in ("train", "val", "test")
            }
        )
        self.best_vals = nn.ModuleList(MinMetric() for _ in range(self.size))
        for m in self.best_vals:
            m.persistent(True)
        self.diverged: dict[int, str] = {}
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        total = logits.new_zeros(())
        for i in range(self.size):
            loss = F.cross_entropy(logits[:, i], y[:, i])
            if (
                stage == "train"
                and i not in self.diverged
                and self.global_step % self.check_every == 0
                and not torch.isfinite(loss)
            ):
                self.diverged[i] = (
                    f"training loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch})"
                )
            if i not in self.diverged:
                self.metrics[f"s{i}_{stage}_"].update(logits[:, i].detach(), y[:, i], loss)
                total = total + loss
        return total

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def on_after_backward(self) -> None:
        for i in self.diverged:
            for p in self.net.nets[i].parameters():
                p.grad = None

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _log(self, stage: str) -> list[dict[str, Tensor]]:
        out = []
        for i in range(self.size):
            m = self.metrics[f"s{i}_{stage}_"]
            values = m.compute() if i not in self.diverged else {}
            m.reset()
            for name, value in values.items():
                self.log(f"s{i}/{stage}/{name}", value)
            out.append(values)
        return out

    def on_train_epoch_end(self) -> None:
        self._log("train")

    def on_validation_epoch_end(self) -> None:
        values = self._log("val")
        if not self.trainer.sanity_checking:
            for i, v in enumerate(values):
                if v:
                    self.best_vals[i].update(v["top1_err"])
                    self.log(f"s{i}/best/val/top1_err", self.best_vals[i].compute())

    def on_test_epoch_end(self) -> None:
        self._log("test")

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = sgd(self.net, self.optim, 0)
        max_epochs = max(1, self.trainer.max_epochs or 1)
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // max_epochs)
        scheduler = schedule(optimizer, self.optim, steps_per_epoch, max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class _Zipped:
    def __init__(self, loaders: Sequence[Any]) -> None:
        self.loaders = loaders

    def __len__(self) -> int:
        return min(len(x) for x in self.loaders)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for parts in zip(*self.loaders, strict=False):
            yield torch.stack([p[0] for p in parts], 1), torch.stack([p[1] for p in parts], 1)


class StackedDataModule(pl.LightningDataModule):
    def __init__(self, datamodules: Sequence[Any]) -> None:
        super().__init__()
        self.dms = list(datamodules)

    def setup(self, stage: str | None = None) -> None:
        for dm in self.dms:
            dm.trainer = self.trainer
            dm.setup(stage)

    def train_dataloader(self) -> _Zipped:
        return _Zipped([dm.train_dataloader() for dm in self.dms])

    def val_dataloader(self) -> _Zipped:
        return _Zipped([dm.val_dataloader() for dm in self.dms])

    def test_dataloader(self) -> _Zipped:
        return _Zipped([dm.test_dataloader() for dm in self.dms])

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch
        training = self.trainer is not None and self.trainer.training
        return torch.stack([dm.prepare_batch(x[:, i], train=training) for i, dm in enumerate(self.dms)], 1), y


def _slice_optimizer(state: dict[str, Any], size: int, i: int) -> dict[str, Any]:
    groups, new_state, new_groups, n = state["param_groups"], {}, [], 0
    for g in groups:
        per = len(g["params"]) // size
        mine = g["params"][i * per : (i + 1) * per]
        ids = list(range(n, n + per))
        for old, new in zip(mine, ids, strict=True):
            if old in state["state"]:
                new_state[new] = state["state"][old]
        new_groups.append({**g, "params": ids})
        n += per
    return {"state": new_state, "param_groups": new_groups}


def lone_checkpoint(stacked: dict[str, Any], i: int) -> dict[str, Any]:
    size = 1 + max(int(k.split(".")[2]) for k in stacked["state_dict"] if k.startswith("net.nets."))
    sd = {}
    for k, v in stacked["state_dict"].items():
        if k.startswith(f"net.nets.{i}."):
            sd["net." + k[len(f"net.nets.{i}.") :]] = v
        elif k.startswith(f"metrics.s{i}_"):
            sd["metrics." + k[len(f"metrics.s{i}_") :]] = v
        elif k.startswith(f"best_vals.{i}."):
            sd["best_val." + k[len(f"best_vals.{i}.") :]] = v
    out = {k: v for k, v in stacked.items() if k not in ("state_dict", "optimizer_states")}
    out["state_dict"] = sd
    out["optimizer_states"] = [_slice_optimizer(o, size, i) for o in stacked["optimizer_states"]]
    return out


def stack_checkpoints(lone: Sequence[dict[str, Any]]) -> dict[str, Any]:
    size = len(lone)
    sd = {}
    for i, c in enumerate(lone):
        for k, v in c["state_dict"].items():
            if k.startswith("net."):
                sd[f"net.nets.{i}." + k[4:]] = v
            elif k.startswith("metrics."):
                sd[f"metrics.s{i}_" + k[len("metrics.") :]] = v
            elif k.startswith("best_val."):
                sd[f"best_vals.{i}." + k[len("best_val.") :]] = v
    out = {k: v for k, v in lone[0].items() if k not in ("state_dict", "optimizer_states")}
    out["state_dict"] = sd
    opts = []
    for j, first in enumerate(lone[0]["optimizer_states"]):
        state, groups, n = {}, [], 0
        offsets = [0]
        for g in first["param_groups"]:
            offsets.append(offsets[-1] + len(g["params"]))
        for gi, g in enumerate(first["param_groups"]):
            per = len(g["params"])
            ids = []
            for i in range(size):
                src = lone[i]["optimizer_states"][j]
                for q in range(per):
                    old = offsets[gi] + q
                    if old in src["state"]:
                        state[n] = src["state"][old]
                    ids.append(n)
                    n += 1
            groups.append({**g, "params": ids})
        opts.append({"state": state, "param_groups": groups})
    out["optimizer_states"] = opts
    return out
