"""Seeds stacked: S networks of one spec as one grouped network, each slice exactly its own seed's network.

Every conv has S times the channels and S times the groups, every BN S times the features, and the fc
is a grouped 1x1 conv (groups=S). Groups never mix, BN statistics are per channel, and the loss that
trains the stack is the sum over seeds of each seed's loss, so slice s computes what seed s's lone
network computes, with the same gradients, and nothing in it depends on another slice. What a lone
job does to train many seeds one after the other, one stack does in one program: on a GPU, where a
small network fills a small part of the card, that is the win (docs/PERFORMANCE.md).

Only the grouped form (c) stacks: the concatenated (b) and aggregated (a) forms compute the same
function from the same weights (`models.convert`), so a stack of form (c) stands for them.

Slice s is drawn as a lone job with seed s draws its network (`tasks/train.py`: `seed_everything`,
then `models.build`), and the CPU RNG state each draw leaves behind is kept (`rngs`): a lone job's
augmentation draws from it next, so `stacked.StackedDataModule` augments slice s from it.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from resnext_lab.errors import ConfigError
from resnext_lab.models.blocks import GroupedBlock, conv_bn
from resnext_lab.models.network import ResNeXt, build, stage_layout
from resnext_lab.models.spec import ModelSpec

#: Keys of the stacked state whose lone tensor is the fc's 2-d weight (stacked: a 4-d 1x1 conv's).
FC_WEIGHT = "fc.weight"


class StackedResNeXt(nn.Module):
    """S networks of `spec` as one: input (B, S, C, H, W), logits (B, S, num_classes).

    Build it with `stack` (each slice drawn from its seed) or `stack_networks` (from lone networks);
    constructed directly its weights are not drawn. `lone_state_dict(i)` and `load_lone_state_dict(i, ...)`
    move slice i to and from a lone network (`models.build(spec)`), key for key.
    """

    def __init__(self, spec: ModelSpec, seeds: Sequence[int]) -> None:
        super().__init__()
        if spec.block != "grouped":
            raise ConfigError(
                f"model.block={spec.block!r}: only the grouped form stacks; the other forms compute the same "
                "function (models.convert), so stack model.block=grouped"
            )
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ConfigError("stack: needs at least one seed")
        self.spec = spec
        self.seeds = seeds
        #: the CPU RNG state that drawing each slice left behind (see the module docstring); None: not drawn
        self.rngs: list[Tensor | None] = [None] * len(seeds)
        s = len(seeds)
        imagenet = spec.template == "imagenet"
        kernel, stride = (7, 2) if imagenet else (3, spec.stem_stride)
        stem = [*conv_bn(s * spec.in_channels, s * spec.stem_width, kernel, stride, groups=s), nn.ReLU(inplace=True)]
        if imagenet:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        self.stages = nn.Sequential(
            *(
                nn.Sequential(
                    *(
                        GroupedBlock(cin, cout, stride, spec.cardinality, width, spec.residual, s)
                        for cin, cout, stride, width in stage
                    )
                )
                for stage in stage_layout(spec)
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(s * spec.stage_out_widths[-1], s * spec.num_classes, 1, groups=s)

    @property
    def size(self) -> int:
        """S, the number of seeds."""
        return len(self.seeds)

    def forward(self, x: Tensor) -> Tensor:
        """(B, S, C, H, W) -> (B, S, num_classes); a (B, S*C, H, W) input (already flattened) is taken too."""
        if x.dim() == 5:
            x = x.flatten(1, 2)
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(x).view(x.shape[0], self.size, self.spec.num_classes)

    def lone_state_dict(self, i: int) -> dict[str, Tensor]:
        """Slice i as `build(spec).state_dict()`: the same keys and shapes, copies of the tensors."""
        self._check_index(i)
        return lone_state(self.state_dict(), self.size, i)

    def load_lone_state_dict(self, i: int, state: Mapping[str, Tensor]) -> None:
        """Put a lone network's state (`build(spec).state_dict()`) into slice i; the keys must match exactly."""
        self._check_index(i)
        own = self.state_dict()
        if set(own) != set(state):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(f"not a lone {self.spec.name} state: missing {missing[:3]}, unexpected {extra[:3]}")
        with torch.no_grad():
            for key, target in own.items():
                if key.endswith("num_batches_tracked"):
                    target.copy_(state[key])
                    continue
                part = target.unflatten(0, (self.size, -1))[i]
                value = state[key]
                if part.numel() != value.numel():
                    raise ValueError(
                        f"{key}: a lone tensor of shape {tuple(value.shape)} does not fit {tuple(part.shape)}"
                    )
                part.copy_(value.reshape(part.shape))

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.size:
            raise IndexError(f"slice {i} of a stack of {self.size}")


def lone_state(stacked: Mapping[str, Tensor], size: int, i: int) -> dict[str, Tensor]:
    """Slice i of a stacked state dict (any key prefix), as the lone network's state: tensors split along their
    first dimension into `size` parts; the fc weight back to 2-d; a count (`num_batches_tracked`) as it is."""
    out: dict[str, Tensor] = {}
    for key, value in stacked.items():
        out[key] = lone_tensor(key, value, size, i)
    return out


def lone_tensor(key: str, value: Tensor, size: int, i: int) -> Tensor:
    """One tensor of `lone_state` (also what an optimiser's momentum buffer of that parameter splits as)."""
    if value.dim() == 0:
        return value.clone()
    part = value.detach().unflatten(0, (size, -1))[i]
    if key.endswith(FC_WEIGHT) and part.dim() == 4:
        part = part.flatten(1)
    return part.contiguous().clone()


def stacked_tensor(key: str, values: Sequence[Tensor]) -> Tensor:
    """The stacked tensor of lone tensors `values` (one per slice), the inverse of `lone_tensor`."""
    if values[0].dim() == 0:
        return values[0].clone()
    parts = [v.detach().reshape(*v.shape, 1, 1) if key.endswith(FC_WEIGHT) and v.dim() == 2 else v for v in values]
    return torch.cat([p.contiguous() for p in parts])


def stack_states(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Lone state dicts (the same keys) as one stacked state dict: `lone_state`'s inverse."""
    keys = list(states[0])
    for n, state in enumerate(states[1:], 1):
        if list(state) != keys:
            raise ValueError(f"lone state {n} has other keys than lone state 0")
    return {key: stacked_tensor(key, [state[key] for state in states]) for key in keys}


def _empty(spec: ModelSpec, seeds: Sequence[int]) -> StackedResNeXt:
    """A stack whose tensors are allocated but not drawn: building it leaves the RNG as it was."""
    with torch.device("meta"):
        net = StackedResNeXt(spec, seeds)
    return net.to_empty(device="cpu")


def stack(spec: ModelSpec, seeds: Sequence[int]) -> StackedResNeXt:
    """One network of `spec` per seed, stacked; slice i is exactly the network a lone job with seed `seeds[i]`
    trains, and `rngs[i]` the CPU RNG state it goes on from.

    A lone job seeds everything (`pl.seed_everything(seed, workers=True)`), then draws `build(spec)`; this
    does the same for each seed in turn, so it leaves the global RNGs seeded by the last seed. The spec
    must be of the grouped form (one ConfigError line otherwise).
    """
    net = _empty(spec, seeds)  # refuses another block form before anything is drawn
    nets = []
    for i, seed in enumerate(net.seeds):
        pl.seed_everything(seed, workers=True, verbose=False)
        nets.append(build(spec))
        net.rngs[i] = torch.get_rng_state()
    _load(net, nets)
    return net


def stack_networks(nets: Sequence[ResNeXt], seeds: Sequence[int] | None = None) -> StackedResNeXt:
    """Lone networks of one spec as one stack, slice i a copy of `nets[i]` (`seeds` only labels the slices:
    0..S-1 unless given)."""
    if not nets:
        raise ConfigError("stack: needs at least one network")
    spec = nets[0].spec
    for n, other in enumerate(nets[1:], 1):
        if other.spec != spec:
            raise ConfigError(
                f"stack: network {n} is a {other.spec.name}, network 0 a {spec.name}; a stack has one spec"
            )
    net = _empty(spec, range(len(nets)) if seeds is None else seeds)
    if net.size != len(nets):
        raise ValueError(f"{len(nets)} networks but {net.size} seeds")
    _load(net, nets)
    net.train(nets[0].training)
    return net


def _load(net: StackedResNeXt, nets: Sequence[ResNeXt]) -> None:
    net.load_state_dict(stack_states([n.state_dict() for n in nets]))


def describe(net: StackedResNeXt) -> dict[str, Any]:
    """The stack in results.json's words: the spec's name and the seeds, slice by slice."""
    return {"name": net.spec.name, "seeds": list(net.seeds), "size": net.size}


class _CallableModule(types.ModuleType):
    """`models.stack(spec, seeds)` is this module's `stack`: importing a submodule makes it an attribute of its
    package, in place of the package's function of the same name, so the module itself calls it."""

    def __call__(self, spec: ModelSpec, seeds: Sequence[int]) -> StackedResNeXt:
        return stack(spec, seeds)


sys.modules[__name__].__class__ = _CallableModule
