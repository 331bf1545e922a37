"""Training seeds stacked: the LightningModule, the data, and the checkpoints of a `models.stack` network.

`StackedModule` is `ClassificationModule` for a stack of S seeds: batches `(x[B, S, C, H, W], y[B, S])`,
the loss the **sum** over seeds of each seed's mean cross-entropy (a mean would divide each seed's
gradient by S), every metric per slice as `s{i}/<the lone name>`. The optimiser, its parameter groups
and the schedule are the lone module's: SGD, weight decay, momentum and Nesterov act per element, and
the schedule depends on the step only, so each slice steps as its lone job steps.

What would couple the seeds is refused in one line: `trainer.gradient_clip_val` (one norm over every
seed) and fp16 loss scaling (`16-mixed`: one scaler for every seed). bf16 and fp32 need no scaling.

A seed whose loss goes non-finite is recorded (`diverged[i]`, the lone job's Diverged text) and frozen:
its loss term dropped, its weights, gradients and momentum zeroed, so that it computes zeros and no
NaN reaches anything shared; the other seeds train on. When every seed has diverged, `Diverged`.

`lone_checkpoint` and `stack_checkpoints` convert between a stack's Lightning checkpoint and the lone
checkpoints tasks/train.py writes (`checkpoints/last.ckpt`), so each seed keeps its own resume state.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MinMetric

from resnext_lab.config import OptimSettings
from resnext_lab.data.stacked import StackedDataModule
from resnext_lab.errors import ConfigError
from resnext_lab.models.stack import lone_tensor, stacked_tensor
from resnext_lab.module import ClassificationModule, Diverged, EpochErrors

__all__ = ["Diverged", "StackedDataModule", "StackedModule", "lone_checkpoint", "stack_checkpoints"]

#: Where a stacked checkpoint keeps what a lone one has no place for: {"size", "diverged": {index: text}}.
STACK_KEY = "stacked"
#: The buffers of a BN layer that are not parameters, by the end of their key.
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class StackedModule(ClassificationModule):
    """Trains a `StackedResNeXt` (or a compiled one) on stacked batches; see the module docstring."""

    def __init__(
        self,
        net: nn.Module,
        optim: OptimSettings | Mapping[str, Any],
        num_classes: int,
        channels_last: bool = False,
        check_finite_every_n_steps: int = 50,
    ) -> None:
        super().__init__(net, optim, num_classes, channels_last, check_finite_every_n_steps)
        self.size = int(getattr(net, "_orig_mod", net).size)
        k = min(5, num_classes)
        self.metrics = nn.ModuleDict(
            {stage: nn.ModuleList(EpochErrors(k) for _ in range(self.size)) for stage in ("train_", "val_", "test_")}
        )
        self.best_val = nn.ModuleList(MinMetric() for _ in range(self.size))
        for metric in self.best_val:
            metric.persistent(True)
        #: index in the stack -> why that seed stopped (its lone job's Diverged text)
        self.diverged: dict[int, str] = {}
        self.register_buffer("alive", torch.ones(self.size, dtype=torch.bool))

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        if trainer.gradient_clip_val:
            raise ConfigError(
                f"trainer.gradient_clip_val={trainer.gradient_clip_val}: clipping takes one norm over every seed "
                "of a stack; set it to null, or run the seeds unstacked"
            )
        precision = str(trainer.precision)
        if precision.startswith("16"):
            raise ConfigError(
                f"trainer.precision={precision}: fp16 needs loss scaling, one scaler for every seed of a stack; "
                "use bf16-mixed or 32, or run the seeds unstacked"
            )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 5:
            x = x.flatten(1, 2)
        return super().forward(x)

    def seed_losses(self, logits: Tensor, y: Tensor) -> Tensor:
        """Each seed's mean cross-entropy: (B, S, K) logits, (B, S) labels -> (S,)."""
        return F.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").mean(0)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        losses = self.seed_losses(logits, y)
        metrics, detached = self.metrics[f"{stage}_"], logits.detach()
        for i in range(self.size):
            metrics[i].update(detached[:, i], y[:, i], losses[i])
        return losses

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        losses = self._step(batch, "train")
        if self.global_step % self.check_every == 0:
            bad = (~torch.isfinite(losses.detach())) & self.alive
            if self.trainer.world_size > 1:  # decided together, as the lone module decides
                bad = self.trainer.strategy.reduce(bad.float(), reduce_op="sum") > 0
            for i in torch.nonzero(bad).flatten().tolist():  # the one host sync per check
                here = not bool(torch.isfinite(losses[i]))
                value = losses[i].item() if here else "not finite on another rank"
                self._diverge(i, f"training loss is {value} at step {self.global_step} (epoch {self.current_epoch})")
        # a frozen seed's term is left out (where, not a product: its NaN would stay NaN)
        return torch.where(self.alive, losses, torch.zeros_like(losses)).sum()

    def _diverge(self, i: int, text: str) -> None:
        self.diverged[i] = text
        self.alive[i] = False
        if not bool(self.alive.any()):
            raise Diverged(f"every seed of the stack diverged; seed index 0: {self.diverged.get(0, text)}")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.diverged:
            self._zero_frozen(optimizer)

    def _zero_frozen(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Zero every frozen seed's weights, gradients, momentum and BN statistics: it then computes zeros."""
        frozen = sorted(self.diverged)
        with torch.no_grad():
            for module in self.net.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
                    for i in frozen:
                        module.running_mean.unflatten(0, (self.size, -1))[i].zero_()
                        module.running_var.unflatten(0, (self.size, -1))[i].fill_(1.0)
            for p in self.net.parameters():
                tensors = [p, p.grad]
                if optimizer is not None:
                    tensors.append(optimizer.state.get(p, {}).get("momentum_buffer"))
                for t in tensors:
                    if t is not None:
                        parts = t.unflatten(0, (self.size, -1))
                        for i in frozen:
                            parts[i].zero_()

    def _log_errors(self, stage: str) -> list[dict[str, Tensor] | None]:
        """Log each live seed's epoch errors as `s{i}/{stage}/...`; return them (None for a frozen seed)."""
        out: list[dict[str, Tensor] | None] = []
        for i, metric in enumerate(self.metrics[f"{stage}_"]):
            values = metric.compute()
            metric.reset()
            if i in self.diverged:
                out.append(None)
                continue
            for name, value in values.items():
                self.log(f"s{i}/{stage}/{name}", value, prog_bar=i == 0 and name == "top1_err")
            out.append(values)
        return out

    def on_train_epoch_end(self) -> None:
        for i, values in enumerate(self._log_errors("train")):
            if values is not None and not torch.isfinite(values["loss"]):
                self._diverge(i, f"training loss is {values['loss'].item()} at the end of epoch {self.current_epoch}")
        if self.diverged:
            self._zero_frozen(self.trainer.optimizers[0] if self.trainer.optimizers else None)

    def on_validation_epoch_end(self) -> None:
        for i, values in enumerate(self._log_errors("val")):
            if values is not None and not self.trainer.sanity_checking:
                self.best_val[i].update(values["top1_err"])
                self.log(f"s{i}/best/val/top1_err", self.best_val[i].compute())

    def on_test_epoch_end(self) -> None:
        self._log_errors("test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[STACK_KEY] = {"size": self.size, "diverged": dict(self.diverged)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        checkpoint["state_dict"].setdefault("alive", torch.ones(self.size, dtype=torch.bool))
        self.diverged = {int(i): str(t) for i, t in (checkpoint.get(STACK_KEY) or {}).get("diverged", {}).items()}


# --- checkpoints ---------------------------------------------------------------------------------


def _param_names(state: Mapping[str, Tensor], groups: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """The optimiser's parameter index -> the state key of that parameter (`module.param_groups`' order:
    with two groups, the tensors of more than one dimension first, then the others)."""
    names = [k for k in state if k.startswith("net.") and not k.endswith(_BUFFERS)]
    if len(groups) == 2:
        names = [n for n in names if state[n].dim() > 1] + [n for n in names if state[n].dim() <= 1]
    indices = [i for group in groups for i in group["params"]]
    if len(indices) != len(names):
        raise ValueError(f"the optimiser holds {len(indices)} parameters, the network {len(names)}")
    return dict(zip(indices, names, strict=True))


def _size(stacked: Mapping[str, Any]) -> int:
    info = stacked.get(STACK_KEY)
    if info is None:
        raise ValueError("not a stacked checkpoint (no 'stacked' entry)")
    return int(info["size"])


def lone_checkpoint(stacked: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Slice i of a stacked Lightning checkpoint as the checkpoint its lone job would have written: the net's
    state, its momentum buffers and best validation error sliced; step, loops, schedule and callbacks as
    they are (every slice shares them)."""
    size = _size(stacked)
    if not 0 <= i < size:
        raise IndexError(f"slice {i} of a stack of {size}")
    out = {k: copy.deepcopy(v) for k, v in stacked.items() if k not in ("state_dict", "optimizer_states", STACK_KEY)}
    state: dict[str, Tensor] = {}
    prefix = f"best_val.{i}."
    for key, value in stacked["state_dict"].items():
        if key.startswith("net."):
            state[key] = lone_tensor(key, value, size, i)
        elif key.startswith(prefix):
            state["best_val." + key[len(prefix) :]] = value.clone()
    out["state_dict"] = state
    out["optimizer_states"] = []
    for opt in stacked.get("optimizer_states", []):
        names = _param_names(stacked["state_dict"], opt["param_groups"])
        out["optimizer_states"].append(
            {
                "state": {
                    idx: {
                        k: lone_tensor(names[idx], v, size, i)
                        if isinstance(v, Tensor) and v.dim() > 0
                        else copy.deepcopy(v)
                        for k, v in entry.items()
                    }
                    for idx, entry in opt["state"].items()
                },
                "param_groups": copy.deepcopy(opt["param_groups"]),
            }
        )
    return out


def stack_checkpoints(lone: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Lone jobs' checkpoints, all at the same step, as one stacked checkpoint (`lone_checkpoint`'s inverse):
    slice i is `lone[i]`, and a stack resumes each seed where its lone job stopped."""
    if not lone:
        raise ValueError("stack_checkpoints: no checkpoints")
    steps = [(int(c["epoch"]), int(c["global_step"])) for c in lone]
    if len(set(steps)) > 1:
        raise ValueError(
            f"the seeds' checkpoints are at different (epoch, step): {steps}; a stack resumes from one step"
        )
    first = lone[0]
    out = {k: copy.deepcopy(v) for k, v in first.items() if k not in ("state_dict", "optimizer_states")}
    state: dict[str, Tensor] = {}
    for key in first["state_dict"]:
        values = [c["state_dict"][key] for c in lone]
        if key.startswith("net."):
            state[key] = stacked_tensor(key, values)
        elif key.startswith("best_val."):
            for i, value in enumerate(values):
                state[f"best_val.{i}.{key[len('best_val.') :]}"] = value.clone()
    state["alive"] = torch.ones(len(lone), dtype=torch.bool)
    out["state_dict"] = state
    out["optimizer_states"] = []
    for n, opt in enumerate(first.get("optimizer_states", [])):
        names = _param_names(first["state_dict"], opt["param_groups"])
        entries: dict[int, dict[str, Any]] = {}
        for idx, entry in opt["state"].items():
            entries[idx] = {}
            for k, v in entry.items():
                if isinstance(v, Tensor) and v.dim() > 0:
                    entries[idx][k] = stacked_tensor(
                        names[idx], [c["optimizer_states"][n]["state"][idx][k] for c in lone]
                    )
                else:
                    entries[idx][k] = copy.deepcopy(v)
        out["optimizer_states"].append({"state": entries, "param_groups": copy.deepcopy(opt["param_groups"])})
    out[STACK_KEY] = {"size": len(lone), "diverged": {}}
    return out
