"""The ResNeXt bottleneck in the paper's three equivalent forms (Fig. 3).

(c) `GroupedBlock`: 1x1 -> 3x3 grouped conv with C groups -> 1x1 (what trains fast).
(b) `ConcatBlock`: C paths of 1x1 and 3x3, concatenated, then one 1x1.
(a) `AggregatedBlock`: C full paths 1x1 -> 3x3 -> 1x1, summed, then BN.

All three expose the same weights through `grouped_state()` / `load_grouped_state()`,
the grouped form's tensors, which is how `convert()` moves a network between forms.
BN follows every conv; in (a) the last BN comes after the sum, as in the paper.
ReLU follows each BN except at the block output, where it follows the addition.
The stride sits in the 3x3 conv; a projection shortcut (1x1 conv + BN) is used
where the shape changes, and `residual=False` removes every shortcut.

Given equal weights the three forms compute the same outputs and gradients, but
drawing each form's own weights does not give equal weights: the official init
draws a conv from N(0, 2 / fan_out), and torch's fan_out of the grouped 3x3 is
9 * C * d, not a path's 9 * d, so form (c) would start sqrt(C) smaller than (a)
and (b). `models.build` therefore draws every form as form (c) and converts it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    )


def _cat_bn(bns: list[nn.BatchNorm2d]) -> dict[str, Tensor]:
    states = [bn.state_dict() for bn in bns]
    out = {}
    for k in states[0]:
        out[k] = states[0][k] if k == "num_batches_tracked" else torch.cat([s[k] for s in states])
    return out


def _split_bn(state: dict[str, Tensor], bns: list[nn.BatchNorm2d]) -> None:
    width = bns[0].num_features
    for i, bn in enumerate(bns):
        bn.load_state_dict(
            {k: v if k == "num_batches_tracked" else v[i * width : (i + 1) * width] for k, v in state.items()}
        )


class Bottleneck(nn.Module):
    """Shared shortcut and output logic; subclasses define `transform`."""

    def __init__(self, cin: int, cout: int, stride: int, residual: bool, stack: int = 1) -> None:
        super().__init__()
        self.residual = residual
        self.shortcut: nn.Module | None = None
        if residual and (stride != 1 or cin != cout):
            self.shortcut = conv_bn(stack * cin, stack * cout, 1, stride, groups=stack)
        self.relu = nn.ReLU(inplace=True)

    def transform(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        out = self.transform(x)
        if self.residual:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.relu(out)

    def grouped_state(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def load_grouped_state(self, state: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN before the addition, whose gamma `zero_init_last_bn` sets to 0 (form c's conv3 BN)."""
        raise NotImplementedError


class GroupedBlock(Bottleneck):
    """Form (c): one grouped 3x3 convolution with `cardinality` groups.

    `stack` S > 1 puts S such blocks side by side as one (models/stack.py): every conv has S times the
    channels and S times the groups, every BN S times the features, so slice s computes block s alone.
    """

    def __init__(
        self, cin: int, cout: int, stride: int, cardinality: int, width: int, residual: bool, stack: int = 1
    ) -> None:
        super().__init__(cin, cout, stride, residual, stack)
        group_width = stack * cardinality * width
        self.conv1 = conv_bn(stack * cin, group_width, 1, groups=stack)
        self.conv2 = conv_bn(group_width, group_width, 3, stride, groups=stack * cardinality)
        self.conv3 = conv_bn(group_width, stack * cout, 1, groups=stack)

    def transform(self, x: Tensor) -> Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        return self.conv3(x)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv3[1]

    def grouped_state(self) -> dict[str, Tensor]:
        return {f"conv{i}.{k}": v for i in (1, 2, 3) for k, v in getattr(self, f"conv{i}").state_dict().items()}

    def load_grouped_state(self, state: dict[str, Tensor]) -> None:
        for i in (1, 2, 3):
            prefix = f"conv{i}."
            getattr(self, f"conv{i}").load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            )


class _Path(nn.Module):
    """One path's 1x1 and 3x3 (forms a and b), each followed by BN and ReLU."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, width, 1)
        self.conv2 = conv_bn(width, width, 3, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))))


class _PathsBlock(Bottleneck):
    """Forms (a) and (b): C separate paths; how they end differs."""

    def __init__(self, cin: int, cout: int, stride: int, cardinality: int, width: int, residual: bool) -> None:
        super().__init__(cin, cout, stride, residual)
        self.paths = nn.ModuleList(_Path(cin, width, stride) for _ in range(cardinality))

    def _paths_grouped_state(self) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        for i in (1, 2):
            convs = [getattr(p, f"conv{i}") for p in self.paths]
            state[f"conv{i}.0.weight"] = torch.cat([c[0].weight.detach() for c in convs])
            state.update({f"conv{i}.1.{k}": v for k, v in _cat_bn([c[1] for c in convs]).items()})
        return state

    def _load_paths_grouped_state(self, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for i in (1, 2):
                convs = [getattr(p, f"conv{i}") for p in self.paths]
                for conv, w in zip(convs, state[f"conv{i}.0.weight"].chunk(len(convs)), strict=True):
                    conv[0].weight.copy_(w)
                prefix = f"conv{i}.1."
                _split_bn(
                    {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, [c[1] for c in convs]
                )


class ConcatBlock(_PathsBlock):
    """Form (b): the paths' outputs concatenated, then one 1x1 conv and BN."""

    def __init__(self, cin: int, cout: int, stride: int, cardinality: int, width: int, residual: bool) -> None:
        super().__init__(cin, cout, stride, cardinality, width, residual)
        self.conv3 = conv_bn(cardinality * width, cout, 1)

    def transform(self, x: Tensor) -> Tensor:
        return self.conv3(torch.cat([path(x) for path in self.paths], dim=1))

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv3[1]

    def grouped_state(self) -> dict[str, Tensor]:
        state = self._paths_grouped_state()
        state.update({f"conv3.{k}": v for k, v in self.conv3.state_dict().items()})
        return state

    def load_grouped_state(self, state: dict[str, Tensor]) -> None:
        self._load_paths_grouped_state(state)
        self.conv3.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("conv3.")})


class AggregatedBlock(_PathsBlock):
    """Form (a): each path ends in its own 1x1 conv; the paths are summed, then BN."""

    def __init__(self, cin: int, cout: int, stride: int, cardinality: int, width: int, residual: bool) -> None:
        super().__init__(cin, cout, stride, cardinality, width, residual)
        self.expand = nn.ModuleList(nn.Conv2d(width, cout, 1, bias=False) for _ in range(cardinality))
        self.bn3 = nn.BatchNorm2d(cout)

    def transform(self, x: Tensor) -> Tensor:
        out = sum(expand(path(x)) for path, expand in zip(self.paths, self.expand, strict=True))
        return self.bn3(out)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def grouped_state(self) -> dict[str, Tensor]:
        state = self._paths_grouped_state()
        state["conv3.0.weight"] = torch.cat([c.weight.detach() for c in self.expand], dim=1)
        state.update({f"conv3.1.{k}": v for k, v in self.bn3.state_dict().items()})
        return state

    def load_grouped_state(self, state: dict[str, Tensor]) -> None:
        self._load_paths_grouped_state(state)
        with torch.no_grad():
            for conv, w in zip(self.expand, state["conv3.0.weight"].chunk(len(self.expand), dim=1), strict=True):
                conv.weight.copy_(w)
        self.bn3.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("conv3.1.")})


BLOCK_FORMS: dict[str, type[Bottleneck]] = {
    "grouped": GroupedBlock,
    "concat": ConcatBlock,
    "aggregated": AggregatedBlock,
}
