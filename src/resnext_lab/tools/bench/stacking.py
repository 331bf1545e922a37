"""The stacking case: seed-images/s of S seeds trained as one stacked network against S lone networks.

A lone network trains one seed's batch per step; a stack of S (models/stack.py) trains S seeds' batches
per step, so both are counted in seed-images/s: a lone job's images/s, and S times the stack's batch
per second. A ratio above 1 says that training a cell's seeds stacked takes less time than training
them one after the other. The two alternate window by window (harness.alternate), so that both see the
same load on a shared machine; a ratio is the median of the per-window ratios.

The cells are table3's, as its experiment files draw them: at the cpu scale (experiments/table3/cpu.yaml
with conf/scale/cpu.yaml: 29 layers, 1/4 width, a stride-2 stem, so 14x14 feature maps) 1x16d and 32x1d,
batch 64; at the proxy scale (experiments/table3/proxy.yaml: 50 layers, half width, 28x28) 1x32d and
32x2d, batch 256. Widths are solved as `width: auto` solves them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from resnext_lab.models import ModelSpec, build, complexity, spec_from_config
from resnext_lab.models.stack import stack
from resnext_lab.tools.bench.harness import (
    BenchSettings,
    Measurement,
    Row,
    alternate,
    mark_step,
    paired_ratio,
    warm,
)

#: scale -> (the `model` node every cell shares, the cells' cardinalities, the batch per seed)
SCALES: dict[str, tuple[dict, tuple[int, ...], int]] = {
    "cpu": (
        {
            "template": "cifar",
            "depth": None,
            "stage_blocks": [3, 3, 3],
            "width_scale": 0.25,
            "stem_stride": 2,
            "reference": {"cardinality": 1, "width": 16},
        },
        (1, 32),
        64,
    ),
    "proxy": (
        {
            "template": "cifar",
            "depth": None,
            "stage_blocks": [3, 4, 9],
            "width_scale": 0.5,
            "reference": {"cardinality": 1, "width": 32},
        },
        (1, 32),
        256,
    ),
}
#: Fashion-MNIST, which table3 trains on
DATA = {"num_classes": 10, "in_channels": 1, "image_size": 28}


def cells(scale: str) -> list[ModelSpec]:
    """Table3's timed cells at `scale`, each width solved against the reference as `width: auto` does."""
    node, cardinalities, _ = SCALES[scale]
    return [spec_from_config({**node, "cardinality": c, "width": "auto"}, **DATA) for c in cardinalities]


def stacked_step(net: torch.nn.Module, x: Tensor, y: Tensor, settings: BenchSettings) -> Callable[[], Tensor]:
    """One training step of a stack: the sum over seeds of each seed's mean cross-entropy, as StackedModule."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step() -> Tensor:
        mark_step(settings)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=settings.bf16):
            logits = net(x)
            loss = F.cross_entropy(logits.float().permute(0, 2, 1), y, reduction="none").mean(0).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def lone_step(net: torch.nn.Module, x: Tensor, y: Tensor, settings: BenchSettings) -> Callable[[], Tensor]:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step() -> Tensor:
        mark_step(settings)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=settings.bf16):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def measure_stack(spec: ModelSpec, size: int, batch: int, settings: BenchSettings) -> tuple[Measurement, Measurement]:
    """(the stack of `size` seeds, one lone network), each in seed-images/s, their windows alternating."""
    device = torch.device(settings.device)
    layout = torch.channels_last if settings.channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    shape = (batch, size, spec.in_channels, spec.image_size, spec.image_size)
    x = torch.randn(*shape, generator=g).flatten(1, 2).to(device).contiguous(memory_format=layout)
    y = torch.randint(0, spec.num_classes, (batch, size), generator=g).to(device)
    lone_x, lone_y = x[:, : spec.in_channels].contiguous(memory_format=layout), y[:, 0].contiguous()
    stacked = warm(f"stack of {size}", lambda: stack(spec, range(size)), stacked_step, x, y, size * batch, settings)
    lone = warm("lone", lambda: build(spec), lone_step, lone_x, lone_y, batch, settings)
    ours, base = alternate([stacked, lone], settings, device)
    return ours, base


def stacking_rows(settings: BenchSettings, log: Callable[[str], object] = print) -> list[Row]:
    """A row per (scale, cell, S): the stack's seed-images/s against the lone network's, paired by window.

    Cells and sizes run in order, each cell's first size always; once `stack_budget_s` is spent the larger
    stacks are not measured (logged), so a slot that must end keeps every cell and what else it measured.
    """
    rows: list[Row] = []
    start = time.perf_counter()
    for scale in settings.stack_scales:
        batch = settings.stack_batch or SCALES[scale][2]
        for spec in cells(scale):
            flops = complexity(spec)["flops"]
            for n, size in enumerate(settings.stack_sizes):
                if n and settings.stack_budget_s and time.perf_counter() - start > settings.stack_budget_s:
                    log(
                        f"stacking: {settings.stack_budget_s:.0f} s budget spent; {scale} {spec.name} S={size} not timed"
                    )
                    break
                ours, base = measure_stack(spec, size, batch, settings)
                rows.append(
                    Row(
                        f"stack_{scale}_{spec.cardinality}x{spec.width}d_S{size}",
                        "stacking",
                        batch,
                        spec.image_size,
                        flops,
                        ours,
                        base,
                        paired_ratio(ours, base),
                        {"scale": scale, "cell": spec.name, "stack": size, "unit": "seed-images/s"},
                    )
                )
    return rows
