"""Build the network a spec describes, and convert it between block forms."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from resnext_lab.models.blocks import BLOCK_FORMS, Bottleneck, conv_bn
from resnext_lab.models.spec import BLOCKS, ConfigError, ModelSpec


class ResNeXt(nn.Module):
    """Stem, stages of bottleneck blocks, global average pool, fc.

    The imagenet template's stem is a 7x7/2 conv and a 3x3/2 max pool (paper
    Table 1); the cifar template's a 3x3 conv (Sec. 5.3). Stage i > 0 halves the
    resolution in its first block.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        imagenet = spec.template == "imagenet"
        kernel, stride = (7, 2) if imagenet else (3, 1)
        stem = [*conv_bn(spec.in_channels, spec.stem_width, kernel, stride), nn.ReLU(inplace=True)]
        if imagenet:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)

        block = BLOCK_FORMS[spec.block]
        stages = []
        cin = spec.stem_width
        for i, (n, cout) in enumerate(zip(spec.stage_blocks, spec.stage_out_widths, strict=True)):
            width = spec.width * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, cout, stride, spec.cardinality, width, spec.residual))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, spec.num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official code's init: N(0, sqrt(2 / (k*k*C_out))) convs, BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))

    def blocks(self) -> list[Bottleneck]:
        return [m for m in self.modules() if isinstance(m, Bottleneck)]


def build(spec: ModelSpec) -> ResNeXt:
    return ResNeXt(spec)


def convert(model: ResNeXt, block: str) -> ResNeXt:
    """A new network of block form `block` computing exactly what `model` computes.

    Stem, shortcuts and fc are copied as they are; each block's weights go
    through the grouped form's tensors (A1B1 + A2B2 = [A1, A2][B1; B2]).
    """
    if block not in BLOCKS:
        raise ConfigError(f"model.block={block!r}: must be one of {', '.join(BLOCKS)}")
    target = ResNeXt(dataclasses.replace(model.spec, block=block)).to(next(model.parameters()).device)
    target.train(model.training)
    with torch.no_grad():
        target.stem.load_state_dict(model.stem.state_dict())
        target.fc.load_state_dict(model.fc.state_dict())
        for src, dst in zip(model.blocks(), target.blocks(), strict=True):
            dst.load_grouped_state(src.grouped_state())
            if src.shortcut is not None:
                dst.shortcut.load_state_dict(src.shortcut.state_dict())
    return target
