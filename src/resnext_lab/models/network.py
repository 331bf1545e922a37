"""Build the network a spec describes, and convert it between block forms."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from resnext_lab.models.blocks import BLOCK_FORMS, Bottleneck, conv_bn
from resnext_lab.models.spec import BLOCKS, ConfigError, ModelSpec


class ResNeXt(nn.Module):
    """Stem, stages of bottleneck blocks, global average pool, fc.

    The imagenet template's stem is a 7x7/2 conv and a 3x3/2 max pool (paper
    Table 1); the cifar template's a 3x3 conv (Sec. 5.3). Stage i > 0 halves the
    resolution in its first block. Build it with `build`, which draws every block
    form alike; constructed directly, each form draws its own weights.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        imagenet = spec.template == "imagenet"
        kernel, stride = (7, 2) if imagenet else (3, spec.stem_stride)
        stem = [*conv_bn(spec.in_channels, spec.stem_width, kernel, stride), nn.ReLU(inplace=True)]
        if imagenet:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)

        block = BLOCK_FORMS[spec.block]
        self.stages = nn.Sequential(
            *(
                nn.Sequential(
                    *(
                        block(cin, cout, stride, spec.cardinality, width, spec.residual)
                        for cin, cout, stride, width in stage
                    )
                )
                for stage in stage_layout(spec)
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(spec.stage_out_widths[-1], spec.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the weights as `spec.init` and `spec.zero_init_last_bn` say; the fc keeps torch's default.

        `official` is the official code's and torchvision's init: BN gamma 1 and beta 0, each conv
        from N(0, 2 / fan_out) with fan_out = k*k*C_out as torch counts it, ignoring groups. So a
        grouped 3x3 conv of C groups starts sqrt(C) smaller than its paths built as their own
        convs. `per_path` draws each group as its own conv, with fan_out = k*k*C_out/groups; convs
        with groups=1 are drawn exactly as under `official`. `zero_init_last_bn` sets gamma to 0
        on each block's last BN (Goyal et al. 2017), so every block starts as its shortcut.

        This draws the network's own block form; `build` draws every form as the grouped one.
        """
        per_path = {"official": False, "per_path": True}[self.spec.init]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * math.prod(m.kernel_size) / (m.groups if per_path else 1)
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0) / math.sqrt(fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.spec.zero_init_last_bn:
            for block in self.blocks():
                nn.init.zeros_(block.last_bn().weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))

    def blocks(self) -> list[Bottleneck]:
        return [m for m in self.modules() if isinstance(m, Bottleneck)]


def stage_layout(spec: ModelSpec) -> list[list[tuple[int, int, int, int]]]:
    """Each stage's blocks as (cin, cout, stride, width d): stage i > 0 halves the resolution in its first block,
    and d doubles at each stage. The one layout of the lone network and the stacked one (models/stack.py)."""
    layout, cin = [], spec.stem_width
    for i, (n, cout) in enumerate(zip(spec.stage_blocks, spec.stage_out_widths, strict=True)):
        layout.append(
            [(cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1, spec.width * 2**i) for j in range(n)]
        )
        cin = cout
    return layout


def build(spec: ModelSpec) -> ResNeXt:
    """The network `spec` describes, initialised so that its block form does not matter.

    Every form is drawn as the grouped form (c) and converted, so at one RNG state the three
    forms are one function, with the same gradients, and they leave the RNG in the same state:
    they differ only in speed and memory. Training and benchmarks build through here.
    """
    if spec.block == "grouped":
        return ResNeXt(spec)
    return convert(ResNeXt(dataclasses.replace(spec, block="grouped")), spec.block)


def convert(model: ResNeXt, block: str) -> ResNeXt:
    """A new network of block form `block` computing exactly what `model` computes.

    Stem, shortcuts and fc are copied as they are; each block's weights go
    through the grouped form's tensors (A1B1 + A2B2 = [A1, A2][B1; B2]).
    """
    if block not in BLOCKS:
        raise ConfigError(f"model.block={block!r}: must be one of {', '.join(BLOCKS)}")
    # built without drawing anything, since every tensor is overwritten: the RNG stays as it was
    with torch.device("meta"):
        target = ResNeXt(dataclasses.replace(model.spec, block=block))
    target = target.to_empty(device=next(model.parameters()).device)
    target.train(model.training)
    with torch.no_grad():
        target.stem.load_state_dict(model.stem.state_dict())
        target.fc.load_state_dict(model.fc.state_dict())
        for src, dst in zip(model.blocks(), target.blocks(), strict=True):
            dst.load_grouped_state(src.grouped_state())
            if src.shortcut is not None:
                dst.shortcut.load_state_dict(src.shortcut.state_dict())
    return target
