"""The benchmark harness: settings, timed windows that alternate between the networks compared, rows."""

from __future__ import annotations

import dataclasses
import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnext_lab.hardware import cpu_name, resolve_precision, synchronize
from resnext_lab.results import versions as package_versions

SCHEMA_VERSION = 1
PACKAGES = ("torch", "torchvision", "pytorch-lightning", "torchmetrics")


class BenchError(RuntimeError):
    """Two networks that should be the same architecture are not, or a measurement went wrong."""


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """One benchmark run: device, numerics, batch sizes and how long to time."""

    device: str = "cpu"
    size: str = "small"
    compile: bool = False
    bf16: bool = False
    channels_last: bool = True
    threads: int | None = 1  # CPU threads (None: torch's default); see docs/PERFORMANCE.md
    imagenet_batch: int = 8
    imagenet_large_batch: int = 4  # resnext101_64x4d
    imagenet_image_size: int = 32
    cifar_batch: int = 2
    cifar_image_size: int = 16
    proxy_batch: int = 8
    proxy_images: int | None = 32  # None: the whole training split
    warmup_steps: int = 2
    steps_per_window: int = 2
    windows: int = 5
    proxy_epochs: int = 5  # timed, after one warm-up epoch
    audit_steps: int = 2  # steps of the host-sync audit epoch, at most
    overhead_steps: int = 200  # steps per epoch of the loop-overhead case
    compile_mode: str = "default"  # torch.compile's mode ("reduce-overhead": CUDA graphs)
    # the stacking case (stacking.py): seeds per stack, the table3 scales whose cells it times, the batch per seed
    # (0: each scale's own), and a time budget after which larger stacks are left out (0: none)
    stack_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    stack_scales: tuple[str, ...] = ("cpu",)
    stack_batch: int = 0
    stack_budget_s: float = 0.0


#: `--size`: small keeps a CPU run to a few minutes (the defaults above); full is the issue's GPU setting;
#: tiny runs every case on a step or two, a check that the benchmark works (the tests, `gpu_check --tiny`).
BENCH_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        imagenet_batch=2,
        imagenet_large_batch=2,
        proxy_batch=8,
        proxy_images=16,
        warmup_steps=1,
        steps_per_window=1,
        windows=2,
        proxy_epochs=1,
        audit_steps=1,
        overhead_steps=10,
        stack_sizes=(1, 2),
        stack_batch=4,
    ),
    "small": {},
    "full": dict(
        imagenet_batch=256,
        imagenet_large_batch=128,
        imagenet_image_size=224,
        cifar_batch=512,
        cifar_image_size=32,
        proxy_batch=256,
        proxy_images=None,
        warmup_steps=10,
        steps_per_window=10,
        windows=5,
        audit_steps=50,
        stack_sizes=(1, 2, 4, 8, 16, 32, 64),
        stack_scales=("cpu", "proxy"),
        stack_budget_s=240.0,
    ),
}


def settings_for(
    device: str,
    size: str,
    compile: bool = False,
    layout: str = "channels_last",
    threads: int | None = 1,
    bf16: bool | None = None,
) -> BenchSettings:
    """The defaults of `size` on `device`: the precision `trainer.precision=auto` picks there; channels_last.

    channels_last trained faster on GPUs (the issue's figures: NCHW at about half the rate) and on
    our CPU too (docs/PERFORMANCE.md); `layout="contiguous"` is there to check that on other machines.
    """

    cuda = device == "cuda"
    if bf16 is None:
        bf16 = resolve_precision("auto", cuda)[0] == "bf16-mixed"
    return BenchSettings(
        device=device,
        size=size,
        compile=compile,
        bf16=bf16,
        channels_last=layout == "channels_last",
        threads=None if cuda else threads,
        **BENCH_SIZES[size],
    )


@dataclasses.dataclass
class Measurement:
    """One network's timing: median images/s over the windows, and what it took to get there."""

    label: str
    params: int
    images_per_s: float
    window_images_per_s: list[float]
    peak_memory_mb: float | None
    first_step_s: float  # includes cuDNN autotuning and compilation


@dataclasses.dataclass
class Row:
    """One line of the table: our network, what it is compared with, and ours/baseline images/s."""

    case: str
    group: str
    batch: int
    image_size: int
    flops: int  # multiply-adds per image at image_size
    ours: Measurement
    baseline: Measurement | None
    ratio: float | None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_same_params(ours: nn.Module, theirs: nn.Module, what: str) -> int:
    """The shared parameter count, or BenchError: a speed ratio of different networks means nothing."""
    a, b = n_params(ours), n_params(theirs)
    if a != b:
        raise BenchError(f"{what}: ours has {a:,} parameters, the baseline {b:,}; not the same architecture")
    return a


def paired_ratio(ours: Measurement, baseline: Measurement) -> float:
    """Median over windows of ours/baseline images/s: the two windows of a pair ran back to back, under one load."""
    pairs = zip(ours.window_images_per_s, baseline.window_images_per_s, strict=True)
    return statistics.median(a / b for a, b in pairs)


# --- the device ------------------------------------------------------------------------------------


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float | None]]:
    """Peak memory (MB) allocated inside over what was allocated before: params, grads, momentum, activations.

    GPUs only (`max_memory_allocated`): on CPU there is no allocator count, and the resident set
    of a process that reuses freed heap says little about one network, so the figure stays None.
    """
    out: dict[str, float | None] = {"mb": None}
    if device.type != "cuda":
        yield out
        return
    gc.collect()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    yield out
    torch.cuda.synchronize(device)
    out["mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20


# --- timing training steps -------------------------------------------------------------------------


def prepare(net: nn.Module, settings: BenchSettings) -> nn.Module:
    """On the device, in the layout, compiled if asked: done identically to every network compared."""
    net = net.to(settings.device).train()
    if settings.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if not settings.compile:
        return net
    return torch.compile(net, mode=None if settings.compile_mode == "default" else settings.compile_mode)


def mark_step(settings: BenchSettings) -> None:
    """Under CUDA graphs (`reduce-overhead`), tell torch that a new step begins: the last one's outputs are done."""
    if settings.compile and settings.compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


def make_step(net: nn.Module, x: Tensor, y: Tensor, settings: BenchSettings) -> Callable[[], Tensor]:
    """One training step on a fixed batch; returns the loss without reading it (no host sync)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step() -> Tensor:
        mark_step(settings)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=settings.bf16):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def measure_group(
    nets: Sequence[tuple[str, Callable[[], nn.Module]]],
    batch: int,
    image_size: int,
    num_classes: int,
    settings: BenchSettings,
    in_channels: int = 3,
) -> list[Measurement]:
    """Warm each network up (measuring its peak memory), then time them in alternating windows."""
    device = torch.device(settings.device)
    x = torch.randn(batch, in_channels, image_size, image_size, device=device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    steps = [warm(label, make, make_step, x, y, batch, settings) for label, make in nets]
    return alternate(steps, settings, device)


def warm(
    label: str,
    make: Callable[[], nn.Module],
    step_of: Callable[..., Callable[[], Any]],
    x: Tensor,
    y: Tensor,
    images: int,
    settings: BenchSettings,
) -> Warm:
    """Build a network, time its first step (compilation, cuDNN's search) and warm it up, measuring its peak
    memory; `images` is what one step trains on (a stack's step trains S batches)."""
    device = x.device
    with peak_memory(device) as memory:
        net = make()
        params = n_params(net)
        step = step_of(prepare(net, settings), x, y, settings)
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        first = time.perf_counter() - start
        for _ in range(settings.warmup_steps - 1):
            step()
    return Warm(label, params, step, first, memory["mb"], images)


@dataclasses.dataclass
class Warm:
    """A network ready to time: its step (warmed up), what the warm-up measured, images per step."""

    label: str
    params: int
    step: Callable[[], Tensor]
    first_step_s: float
    peak_memory_mb: float | None
    images: int


def alternate(steps: Sequence[Warm], settings: BenchSettings, device: torch.device) -> list[Measurement]:
    """Time the warmed-up steps in alternating windows: each figure is the median images/s of its windows."""
    windows: dict[str, list[float]] = {w.label: [] for w in steps}
    losses: dict[str, Tensor] = {}
    for _ in range(settings.windows):
        for w in steps:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(settings.steps_per_window):
                losses[w.label] = w.step()
            synchronize(device)
            windows[w.label].append(w.images * settings.steps_per_window / (time.perf_counter() - start))
    for label, loss in losses.items():  # one read per network, after the clock stopped
        if not torch.isfinite(loss):
            raise BenchError(f"{label}: the training loss became {loss.item()} while timing")
    return [
        Measurement(
            w.label, w.params, statistics.median(windows[w.label]), windows[w.label], w.peak_memory_mb, w.first_step_s
        )
        for w in steps
    ]


def device_info(device: str) -> dict[str, Any]:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return {
            "type": "cuda",
            "name": props.name,
            "memory_gb": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
        }
    return {"type": "cpu", "name": cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads()}


def matmul_peak(device: str, bf16: bool, n: int = 2048, seconds: float = 1.0) -> float:
    """GFLOP/s of an n x n matmul (2n^3 FLOPs), fp32 or under bf16 autocast: what the device can do at best."""
    dev = torch.device(device)
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        a @ b  # warm-up
        synchronize(dev)
        count, start = 0, time.perf_counter()
        while count < 3 or time.perf_counter() - start < seconds:
            a @ b
            count += 1
        synchronize(dev)
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def fraction_of_peak(row: dict[str, Any], peak_gflops: float) -> float:
    """A row's training throughput as a fraction of the matmul peak: a step is about 3 forward passes of
    `flops` multiply-adds (2 FLOPs each) per image: forward, and the backward's two products."""
    return row["ours"]["images_per_s"] * 6 * row["flops"] / 1e9 / peak_gflops


def format_precisions(reports: dict[str, dict[str, Any]], peaks: dict[str, float]) -> str:
    """fp32 and bf16 reports side by side: images/s, bf16/fp32, and each as a fraction of its matmul peak."""
    fp32, bf16 = reports["fp32"], reports["bf16"]
    d = fp32["device"]
    lines = [
        f"{d['name']} ({d['type']}, {d.get('threads', '-')} thread(s)), torch {fp32['versions']['torch']}: "
        f"fp32 against bf16 autocast; matmul 2048^2 peak {peaks['fp32']:.0f} GFLOP/s fp32, "
        f"{peaks['bf16']:.0f} GFLOP/s bf16 ({peaks['bf16'] / peaks['fp32']:.2f}x)",
        f"{'case':<20}{'fp32 img/s':>12}{'bf16 img/s':>12}{'bf16/fp32':>10}{'fp32 %peak':>12}{'bf16 %peak':>12}",
    ]
    for a, b in zip(fp32["results"], bf16["results"], strict=True):
        ra, rb = a["ours"]["images_per_s"], b["ours"]["images_per_s"]
        lines.append(
            f"{a['case']:<20}{ra:>12.1f}{rb:>12.1f}{rb / ra:>10.2f}"
            f"{100 * fraction_of_peak(a, peaks['fp32']):>11.1f}%{100 * fraction_of_peak(b, peaks['bf16']):>11.1f}%"
        )
    if peaks["bf16"] < peaks["fp32"]:
        lines.append(
            "note: bf16 matmul runs below fp32 here (a CPU without native bf16 emulates it): its peak is the "
            "emulation's, not a limit of the machine, so read bf16 %peak against the fp32 peak"
        )
    return "\n".join(lines)


def library_versions() -> dict[str, str | None]:
    """The packages' versions as results.json records them, and the CUDA and cuDNN torch was built with."""
    out: dict[str, str | None] = {**package_versions(PACKAGES)}
    out["cuda"] = torch.version.cuda
    out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    return out


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None
