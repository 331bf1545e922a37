"""Exact parameters and FLOPs of a spec, computed without building the network.

FLOPs are multiply-adds of conv and fc layers, as the paper, torchvision and
pycls count them (BN, ReLU, pooling, additions and biases are not counted).
Params count every learnable tensor: conv weights, BN affine pairs, fc weight
and bias. The three block forms have identical counts (paper Fig. 3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from resnext_lab.errors import ConfigError

if TYPE_CHECKING:
    from resnext_lab.models.spec import ModelSpec


class Layer(NamedTuple):
    """One conv or fc layer, with the spatial size of its output."""

    name: str
    cin: int
    cout: int
    kernel: int
    groups: int
    out_hw: int
    bn: bool  # followed by a BatchNorm over cout channels
    bias: bool = False


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def layers(spec: ModelSpec) -> Iterator[Layer]:
    """Every weighted layer of the spec's network, in order (the grouped form)."""
    size = spec.image_size
    if spec.template == "imagenet":
        size = _conv_out(size, 7, 2, 3)
        yield Layer("stem", spec.in_channels, spec.stem_width, 7, 1, size, True)
        size = _conv_out(size, 3, 2, 1)  # max pool
    else:
        size = _conv_out(size, 3, spec.stem_stride, 1)
        yield Layer("stem", spec.in_channels, spec.stem_width, 3, 1, size, True)
    cin = spec.stem_width
    for i, (n, group_width, cout) in enumerate(
        zip(spec.stage_blocks, spec.stage_group_widths, spec.stage_out_widths, strict=True)
    ):
        for j in range(n):
            stride = 2 if (i > 0 and j == 0) else 1
            name = f"stage{i + 1}.{j}"
            out = _conv_out(size, 3, stride, 1)
            yield Layer(f"{name}.conv1", cin, group_width, 1, 1, size, True)
            yield Layer(f"{name}.conv2", group_width, group_width, 3, spec.cardinality, out, True)
            yield Layer(f"{name}.conv3", group_width, cout, 1, 1, out, True)
            if spec.residual and (stride != 1 or cin != cout):
                yield Layer(f"{name}.shortcut", cin, cout, 1, 1, out, True)
            cin, size = cout, out
    yield Layer("fc", cin, spec.num_classes, 1, 1, 1, False, bias=True)


def layer_params(layer: Layer) -> int:
    weights = layer.kernel**2 * layer.cin // layer.groups * layer.cout
    return weights + (2 * layer.cout if layer.bn else 0) + (layer.cout if layer.bias else 0)


def layer_flops(layer: Layer) -> int:
    return layer.kernel**2 * layer.cin // layer.groups * layer.cout * layer.out_hw**2


def params(spec: ModelSpec) -> int:
    return sum(layer_params(layer) for layer in layers(spec))


def flops(spec: ModelSpec) -> int:
    return sum(layer_flops(layer) for layer in layers(spec))


def complexity(spec: ModelSpec) -> dict[str, int]:
    return {"params": params(spec), "flops": flops(spec)}


def solve_width(reference: ModelSpec, cardinality: int, match: str = "params") -> int:
    """The integer d whose `match` count at `cardinality` is closest to the reference's.

    The count grows strictly with d, so a doubling search then a bisection finds
    the first d at or above the target; the answer is it or its predecessor.
    """
    measure = params if match == "params" else flops
    target = measure(reference)

    def at(d: int) -> int:
        return measure(dataclasses.replace(reference, cardinality=cardinality, width=d))

    if at(1) > target:
        raise ConfigError(
            f"model.width=auto: no width d >= 1 at model.cardinality={cardinality} stays within the "
            f"reference {reference.cardinality}x{reference.width}d's {match} ({at(1):,} at d=1 > {target:,}); "
            "lower the cardinality or widen the reference"
        )
    hi = 1
    while at(hi) < target:
        hi *= 2
    lo = max(1, hi // 2)
    while lo < hi:  # first d with at(d) >= target
        mid = (lo + hi) // 2
        if at(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    if lo > 1 and target - at(lo - 1) <= at(lo) - target:
        return lo - 1
    return lo
