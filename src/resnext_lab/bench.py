"""Timed training steps: our networks against torchvision's, and a Lightning proxy epoch against a plain loop.

    python -m resnext_lab.bench                          # cuda when present (full sizes), else cpu (small sizes)
    python -m resnext_lab.bench --device cpu --size small
    python -m resnext_lab.bench --device cuda --compile --out reports/bench/h100-compiled.json

A step is forward, cross-entropy, backward and an SGD step. The networks compared
run in one process with one precision (bf16 autocast on GPUs, fp32 on CPU) and one
memory layout, and their timed windows alternate, so that both see the same machine
load; a figure is the median images/s over the windows, after warm-up steps (cuDNN
autotuning, torch.compile), and a ratio the median of the per-window ratios. Each of
our networks must have exactly the parameter count of the torchvision model beside
it before anything is timed. The proxy case trains the default proxy model through
`ClassificationModule` and the Fashion-MNIST datamodule, alternating each Lightning
epoch with a plain-loop epoch on the same tensors, and counts the operations that
make a GPU host wait (`HostSyncs`); the loop-overhead case does the same around a
one-layer network, which leaves the host time per step. Method and figures:
docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from resnext_lab.models import ModelSpec, build, complexity, spec_from_config
from resnext_lab.models.spec import IMAGENET_STAGE_BLOCKS

SCHEMA_VERSION = 1
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
PACKAGES = ("torch", "torchvision", "pytorch-lightning", "torchmetrics")

#: torchvision builder -> the same architecture as a spec (equal parameter counts are checked before timing).
TORCHVISION_PAIRS: dict[str, ModelSpec] = {
    "resnet50": ModelSpec(stage_blocks=IMAGENET_STAGE_BLOCKS[50]),
    "resnext50_32x4d": ModelSpec(stage_blocks=IMAGENET_STAGE_BLOCKS[50], cardinality=32, width=4),
    "resnext101_64x4d": ModelSpec(stage_blocks=IMAGENET_STAGE_BLOCKS[101], cardinality=64, width=4),
}
#: The ResNet-50 family at matched complexity (paper Table 2): (cardinality, width).
FAMILY = ((1, 64), (2, 40), (4, 24), (8, 14), (32, 4))
#: 8x14d (14 and 28 channels per group in stages 1-2, not multiples of 8) against its aligned neighbour 8x16d.
ALIGNMENT = ((8, 14), (8, 16))
#: ResNeXt-29 8x64d of paper Table 7.
CIFAR = ModelSpec(template="cifar", stage_blocks=(3, 3, 3), cardinality=8, width=64, num_classes=10, image_size=32)
CASES = (*TORCHVISION_PAIRS, "family", "alignment", "resnext29_8x64d", "proxy", "loop_overhead")
LIGHTNING = "Lightning: ClassificationModule + datamodule"


class BenchError(RuntimeError):
    """Two networks that should be the same architecture are not, or a measurement went wrong."""


@dataclasses.dataclass(frozen=True)
class Settings:
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


#: `--size`: small keeps a CPU run to a few minutes (the defaults above); full is the issue's GPU setting.
SIZES: dict[str, dict[str, Any]] = {
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
    ),
}


def settings_for(
    device: str, size: str, compile: bool = False, layout: str = "channels_last", threads: int | None = 1,
    bf16: bool | None = None,
) -> Settings:
    """The defaults of `size` on `device`: the precision `trainer.precision=auto` picks there; channels_last.

    channels_last trained faster on GPUs (the issue's figures: NCHW at about half the rate) and on
    our CPU too (docs/PERFORMANCE.md); `layout="contiguous"` is there to check that on other machines.
    """
    from resnext_lab.hardware import resolve_precision

    cuda = device == "cuda"
    if bf16 is None:
        bf16 = resolve_precision("auto", cuda)[0] == "bf16-mixed"
    return Settings(
        device=device,
        size=size,
        compile=compile,
        bf16=bf16,
        channels_last=layout == "channels_last",
        threads=None if cuda else threads,
        **SIZES[size],
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def prepare(net: nn.Module, settings: Settings) -> nn.Module:
    """On the device, in the layout, compiled if asked: done identically to every network compared."""
    net = net.to(settings.device).train()
    if settings.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return torch.compile(net) if settings.compile else net


def make_step(net: nn.Module, x: Tensor, y: Tensor, settings: Settings) -> Callable[[], Tensor]:
    """One training step on a fixed batch; returns the loss without reading it (no host sync)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def step() -> Tensor:
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
    settings: Settings,
    in_channels: int = 3,
) -> list[Measurement]:
    """Warm each network up (measuring its peak memory), then time them in alternating windows."""
    device = torch.device(settings.device)
    x = torch.randn(batch, in_channels, image_size, image_size, device=device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    steps: list[tuple[str, int, Callable[[], Tensor], float, float | None]] = []
    for label, make in nets:
        with peak_memory(device) as memory:
            net = make()
            params = n_params(net)
            step = make_step(prepare(net, settings), x, y, settings)
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            first = time.perf_counter() - start
            for _ in range(settings.warmup_steps - 1):
                step()
        steps.append((label, params, step, first, memory["mb"]))
    windows: dict[str, list[float]] = {label: [] for label, *_ in steps}
    losses: dict[str, Tensor] = {}
    for _ in range(settings.windows):
        for label, _params, step, *_ in steps:
            sync(device)
            start = time.perf_counter()
            for _ in range(settings.steps_per_window):
                losses[label] = step()
            sync(device)
            windows[label].append(batch * settings.steps_per_window / (time.perf_counter() - start))
    for label, loss in losses.items():  # one read per network, after the clock stopped
        if not torch.isfinite(loss):
            raise BenchError(f"{label}: the training loss became {loss.item()} while timing")
    return [
        Measurement(label, params, statistics.median(windows[label]), windows[label], memory, first)
        for label, params, _step, first, memory in steps
    ]


def torchvision_case(name: str, settings: Settings) -> Row:
    """Our build of a torchvision architecture against torchvision's own, eager vs eager or compiled vs compiled."""
    import torchvision

    spec = TORCHVISION_PAIRS[name]
    check_same_params(build(spec), getattr(torchvision.models, name)(), name)
    batch = settings.imagenet_large_batch if "101" in name else settings.imagenet_batch
    size = settings.imagenet_image_size
    ours, theirs = measure_group(
        [(f"ours {spec.name}", lambda: build(spec)), (f"torchvision {name}", getattr(torchvision.models, name))],
        batch,
        size,
        spec.num_classes,
        settings,
    )
    flops = complexity(dataclasses.replace(spec, image_size=size))["flops"]
    return Row(name, "torchvision", batch, size, flops, ours, theirs, paired_ratio(ours, theirs))


def family_rows(settings: Settings, shapes: Sequence[tuple[int, int]] = FAMILY, case: str = "family") -> list[Row]:
    """ResNet-50 at each (C, d) of `shapes`, each against the first (ours): the family at matched complexity,
    or ("alignment") 8x14d against 8x16d, which does 15% more work with channels per group that are multiples of 8.
    """
    size, batch = settings.imagenet_image_size, settings.imagenet_batch
    specs = [ModelSpec(cardinality=c, width=d, image_size=size) for c, d in shapes]
    measured = measure_group(
        [(spec.name, lambda spec=spec: build(spec)) for spec in specs], batch, size, specs[0].num_classes, settings
    )
    base = measured[0]
    return [
        Row(
            f"resnet50_{s.cardinality}x{s.width}d",
            case,
            batch,
            size,
            complexity(s)["flops"],
            m,
            base,
            paired_ratio(m, base),
        )
        for s, m in zip(specs, measured, strict=True)
    ]


def cifar_row(settings: Settings) -> Row:
    batch, size = settings.cifar_batch, settings.cifar_image_size
    (ours,) = measure_group([(CIFAR.name, lambda: build(CIFAR))], batch, size, CIFAR.num_classes, settings)
    flops = complexity(dataclasses.replace(CIFAR, image_size=size))["flops"]
    return Row("resnext29_8x64d", "cifar", batch, size, flops, ours, None, None)


# --- host synchronisation ----------------------------------------------------------------------------

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


def proxy_config(**data: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The default run's `model`, `data` and `optim` nodes, composed from conf/ as run.py composes them."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=proxy", "data=fashion_mnist"])
    model, data_cfg, optim = (OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "optim"))
    return model, {**data_cfg, **data}, optim  # type: ignore[return-value]


def _synthesize(dm: Any, n: int) -> None:
    """Random uint8 images of Fashion-MNIST's shape as the datamodule's splits: speed does not read pixels."""
    g = torch.Generator().manual_seed(0)
    dm.train_images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    dm.train_labels = torch.randint(0, 10, (n,), generator=g)
    dm.val_images, dm.val_labels = dm.train_images[:256], dm.train_labels[:256]
    dm.test_images, dm.test_labels = dm.val_images, dm.val_labels


def _load_or_synthesize(dm: Any, images: int | None) -> str:
    """Read Fashion-MNIST if it is here, else synthesize it."""
    from resnext_lab.errors import DataError

    try:
        dm.setup("fit")
        return f"Fashion-MNIST from {dm.source}"
    except DataError:
        _synthesize(dm, images or 55_000)
        return "synthetic uint8 (Fashion-MNIST files not found)"


class PlainLoop:
    """The proxy's training epoch without Lightning: the same batches, augmentation, optimiser and schedule.

    No metrics and no finiteness checks: what the module adds on top is part of what is measured.
    The batches are drawn from the datamodule's tensors when an epoch starts, wherever they live then.
    """

    def __init__(self, net: nn.Module, dm: Any, optim: dict[str, Any], settings: Settings, epochs: int) -> None:
        from resnext_lab.module import lr_factor

        self.net, self.dm, self.settings = net, dm, settings
        self.steps_per_epoch = len(dm.train_labels) // dm.settings.batch_size
        self.optimizer = torch.optim.SGD(
            net.parameters(),
            lr=float(optim["lr"]),
            momentum=float(optim["momentum"]),
            nesterov=bool(optim["nesterov"]),
            weight_decay=float(optim["weight_decay"]),
        )
        per_epoch = max(1, self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step / per_epoch, optim, epochs)
        )
        self.passes = 0

    def epoch(self, max_steps: int | None = None) -> None:
        from resnext_lab.data import TensorBatches

        dm, bf16, cl = self.dm, self.settings.bf16, self.settings.channels_last
        passes = self.passes
        batches = TensorBatches(
            dm.train_images,
            dm.train_labels,
            dm.settings.batch_size,
            shuffle=True,
            drop_last=True,
            seed=dm.settings.split_seed,
            epoch_fn=lambda: passes,
        )
        self.passes += 1
        for images, labels in itertools.islice(batches, max_steps):
            x = dm.prepare_batch(images, train=True)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(self.net(x), labels)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()


class _Alternate(pl.Callback):
    """Before each Lightning epoch, one timed plain-loop epoch; Lightning's epochs are timed start to start.

    A Lightning epoch so includes its hooks at the epoch's end (metrics computed, loss checked).
    """

    def __init__(self, plain_epoch: Callable[[], object], device: torch.device) -> None:
        self.plain_epoch, self.device = plain_epoch, device
        self.lightning_s: list[float] = []
        self.plain_s: list[float] = []
        self._start: float | None = None

    def _stop(self) -> None:
        sync(self.device)
        if self._start is not None:
            self.lightning_s.append(time.perf_counter() - self._start)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()
        start = time.perf_counter()
        self.plain_epoch()
        sync(self.device)
        self.plain_s.append(time.perf_counter() - start)
        self._start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()


class _Audit(pl.Callback):
    """Counts host syncs during one epoch's training steps (the second: the first initialises lazily)."""

    def __init__(self, counter: HostSyncs, epoch: int = 1) -> None:
        self.counter, self.epoch = counter, epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counter.active = trainer.current_epoch == self.epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counter.active = False


def _proxy_trainer(settings: Settings, callbacks: list[pl.Callback], epochs: int, limit: int | None) -> pl.Trainer:
    """A Trainer with the run's precision and autotuning; no validation, checkpoints, logger or progress bar."""
    cuda = settings.device == "cuda"
    return pl.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        max_epochs=epochs,
        precision="bf16-mixed" if settings.bf16 else "32-true",
        benchmark=cuda,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=limit,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def _alternate(
    settings: Settings, dm: Any, make_net: Callable[[], nn.Module], optim: dict[str, Any], num_classes: int
) -> tuple[_Alternate, PlainLoop]:
    """1 + `proxy_epochs` epochs through Lightning, each after one plain-loop epoch, on the datamodule's tensors."""
    from resnext_lab.module import ClassificationModule

    epochs = 1 + settings.proxy_epochs
    plain = PlainLoop(prepare(make_net(), settings), dm, optim, settings, epochs)
    net = make_net()
    module = ClassificationModule(
        torch.compile(net) if settings.compile else net, optim, num_classes, channels_last=settings.channels_last
    )
    clock = _Alternate(plain.epoch, torch.device(settings.device))
    _proxy_trainer(settings, [clock], epochs, None).fit(module, datamodule=dm)
    return clock, plain


def _epoch_measurements(clock: _Alternate, images: int, params: int) -> tuple[Measurement, Measurement]:
    """Lightning's and the plain loop's epochs as images/s; the first epoch of each is the warm-up."""

    def measurement(label: str, seconds: list[float]) -> Measurement:
        rates = [images / s for s in seconds[1:]]
        return Measurement(label, params, statistics.median(rates), rates, None, seconds[0])

    return measurement(LIGHTNING, clock.lightning_s), measurement("plain PyTorch loop", clock.plain_s)


def _count_syncs(
    settings: Settings, dm: Any, make_net: Callable[[], nn.Module], optim: dict[str, Any], num_classes: int
) -> tuple[int, dict[str, int], dict[str, int]]:
    """Host syncs in the training steps of a second epoch (the first initialises lazily), Lightning and plain.

    Eager, with at most `audit_steps` steps: the count is about the loop and the module, not the network.
    """
    from resnext_lab.module import ClassificationModule

    eager = dataclasses.replace(settings, compile=False)
    steps = min(len(dm.train_labels) // dm.settings.batch_size, settings.audit_steps)
    counter = HostSyncs()
    module = ClassificationModule(make_net(), optim, num_classes, channels_last=settings.channels_last)
    with counter:
        _proxy_trainer(eager, [_Audit(counter)], 2, steps).fit(module, datamodule=dm)
    lightning = dict(counter.sites)
    plain = PlainLoop(prepare(make_net(), eager), dm, optim, eager, 2)
    plain.epoch(steps)
    counter.sites.clear()
    with counter:
        counter.active = True
        plain.epoch(steps)
        counter.active = False
    return steps, lightning, dict(counter.sites)


def proxy_row(settings: Settings) -> Row:
    """Epochs of the default proxy model on Fashion-MNIST: Lightning (module + datamodule) vs a plain loop."""
    from resnext_lab.data import build_datamodule

    model_cfg, data_cfg, optim = proxy_config(batch_size=settings.proxy_batch, limit_train=settings.proxy_images)
    dm = build_datamodule(data_cfg)
    source = _load_or_synthesize(dm, settings.proxy_images)
    spec = spec_from_config(model_cfg, num_classes=dm.num_classes, in_channels=dm.in_channels, image_size=dm.image_size)
    torch.manual_seed(0)
    clock, plain = _alternate(settings, dm, lambda: build(spec), optim, spec.num_classes)
    images = plain.steps_per_epoch * dm.settings.batch_size
    ours, base = _epoch_measurements(clock, images, n_params(plain.net))
    steps, lightning_sites, plain_sites = _count_syncs(settings, dm, lambda: build(spec), optim, spec.num_classes)
    paired = paired_ratio(ours, base)
    extra = {
        "model": spec.name,
        "data": source,
        "steps_per_epoch": plain.steps_per_epoch,
        "epoch_s": statistics.median(clock.lightning_s[1:]),
        "plain_epoch_s": statistics.median(clock.plain_s[1:]),
        "overhead_pct": 100.0 * (1.0 / paired - 1.0),
        "host_syncs_per_step": {
            "lightning": sum(lightning_sites.values()) / steps,
            "plain": sum(plain_sites.values()) / steps,
        },
        "host_sync_sites": {"lightning": lightning_sites, "plain": plain_sites},
        "audit_steps": steps,
        "audit_device": settings.device,
    }
    flops = complexity(spec)["flops"]
    return Row("proxy_epoch", "proxy", settings.proxy_batch, dm.image_size, flops, ours, base, paired, extra)


def loop_overhead_row(settings: Settings) -> Row:
    """Host time per step of the training loop itself: the proxy's batches, optimiser and module, a one-layer net.

    With the network's work made negligible, what is left is what Lightning and the module
    (metrics, logging) cost the host on top of a plain loop. On a GPU that host work runs
    ahead of the kernels of earlier steps and stays hidden while it is shorter than a step's
    GPU time, unless something makes the host wait (see `HostSyncs`).
    """
    from resnext_lab.data import build_datamodule

    _model_cfg, data_cfg, optim = proxy_config(batch_size=settings.proxy_batch)
    dm = build_datamodule(data_cfg)
    _synthesize(dm, settings.proxy_batch * settings.overhead_steps)
    eager = dataclasses.replace(settings, compile=False)

    def make_net() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, dm.num_classes))

    clock, plain = _alternate(eager, dm, make_net, optim, dm.num_classes)
    steps = plain.steps_per_epoch
    ours, base = _epoch_measurements(clock, steps * dm.settings.batch_size, n_params(plain.net))
    extra = {
        "steps_per_epoch": steps,
        "us_per_step": {
            "lightning": 1e6 * statistics.median(clock.lightning_s[1:]) / steps,
            "plain": 1e6 * statistics.median(clock.plain_s[1:]) / steps,
        },
    }
    flops = 28 * 28 * dm.num_classes
    return Row("loop_overhead", "proxy", settings.proxy_batch, 28, flops, ours, base, paired_ratio(ours, base), extra)


# --- the run ---------------------------------------------------------------------------------------------


def device_info(device: str) -> dict[str, Any]:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return {
            "type": "cuda",
            "name": props.name,
            "memory_gb": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
        }
    name = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"type": "cpu", "name": name, "cores": os.cpu_count(), "threads": torch.get_num_threads()}


def matmul_peak(device: str, bf16: bool, n: int = 2048, seconds: float = 1.0) -> float:
    """GFLOP/s of an n x n matmul (2n^3 FLOPs), fp32 or under bf16 autocast: what the device can do at best."""
    dev = torch.device(device)
    a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
        a @ b  # warm-up
        sync(dev)
        count, start = 0, time.perf_counter()
        while count < 3 or time.perf_counter() - start < seconds:
            a @ b
            count += 1
        sync(dev)
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
        lines.append(f"{a['case']:<20}{ra:>12.1f}{rb:>12.1f}{rb / ra:>10.2f}"
                     f"{100 * fraction_of_peak(a, peaks['fp32']):>11.1f}%{100 * fraction_of_peak(b, peaks['bf16']):>11.1f}%")
    if peaks["bf16"] < peaks["fp32"]:
        lines.append("note: bf16 matmul runs below fp32 here (a CPU without native bf16 emulates it): its peak is the "
                     "emulation's, not a limit of the machine, so read bf16 %peak against the fp32 peak")
    return "\n".join(lines)


def versions() -> dict[str, str | None]:
    from resnext_lab.results import versions as package_versions

    out: dict[str, str | None] = {**package_versions(PACKAGES)}
    out["cuda"] = torch.version.cuda
    out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    return out


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run(settings: Settings, cases: Sequence[str] = CASES, log: Callable[[str], object] = print) -> dict[str, Any]:
    """Measure `cases` (names from CASES) and return the report (what --out writes)."""
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise BenchError(f"unknown case(s) {', '.join(unknown)}: choose from {', '.join(CASES)}")
    if settings.device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started, load = time.strftime("%Y-%m-%dT%H:%M:%S%z"), [_load_average()]
    threads = torch.get_num_threads()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    rows: list[Row] = []
    try:
        for case in cases:
            log(f"timing {case} ...")
            if case in TORCHVISION_PAIRS:
                rows.append(torchvision_case(case, settings))
            elif case == "family":
                rows.extend(family_rows(settings))
            elif case == "alignment":
                rows.extend(family_rows(settings, ALIGNMENT, "alignment")[1:])
            elif case == "resnext29_8x64d":
                rows.append(cifar_row(settings))
            elif case == "proxy":
                rows.append(proxy_row(settings))
            else:
                rows.append(loop_overhead_row(settings))
        device = device_info(settings.device)
    finally:
        torch.set_num_threads(threads)
    return {
        "schema_version": SCHEMA_VERSION,
        "started": started,
        "host": platform.node(),
        "device": device,
        "versions": versions(),
        "settings": dataclasses.asdict(settings),
        "load_average": [*load, _load_average()],  # 1-min load at start and end: other work shares a CPU
        "results": [dataclasses.asdict(row) for row in rows],
    }


def format_table(report: dict[str, Any]) -> str:
    """The report as a readable table: images/s, peak MB, ours/baseline (median of the paired windows)."""
    s, d = report["settings"], report["device"]
    numerics = "bf16 autocast" if s["bf16"] else "fp32"
    layout = "channels_last" if s["channels_last"] else "NCHW"
    threads = f", {d['threads']} thread(s)" if d["type"] == "cpu" else ""
    lines = [
        f"{d['name']} ({d['type']}{threads}), torch {report['versions']['torch']}, {numerics}, {layout}, "
        f"{'torch.compile' if s['compile'] else 'eager'}, size {s['size']}; medians of {s['windows']} windows "
        f"({s['proxy_epochs']} epochs for the proxy rows)",
        f"{'case':<20}{'batch':>6}{'px':>5}{'ours img/s':>12}{'base img/s':>12}{'ratio':>7}"
        f"{'ours MB':>9}{'base MB':>9}  baseline",
    ]

    def mb(m: dict[str, Any] | None) -> str:
        return "-" if m is None or m["peak_memory_mb"] is None else f"{m['peak_memory_mb']:.0f}"

    for r in report["results"]:
        ours, base, x = r["ours"], r["baseline"], r["extra"]
        lines.append(
            f"{r['case']:<20}{r['batch']:>6}{r['image_size']:>5}{ours['images_per_s']:>12.1f}"
            f"{base['images_per_s'] if base else float('nan'):>12.1f}"
            f"{r['ratio'] if r['ratio'] is not None else float('nan'):>7.3f}{mb(ours):>9}{mb(base):>9}"
            f"  {base['label'] if base else '-'}"
        )
        if r["case"] == "proxy_epoch":
            syncs = x["host_syncs_per_step"]
            lines.append(
                f"{'':<20}epoch {x['epoch_s']:.3f} s vs {x['plain_epoch_s']:.3f} s ({x['steps_per_epoch']} steps): "
                f"Lightning overhead {x['overhead_pct']:+.1f}%; host syncs per step {syncs['lightning']:.2f} vs "
                f"{syncs['plain']:.2f} (counted on {x['audit_device']})"
            )
            for site, n in sorted(x["host_sync_sites"]["lightning"].items(), key=lambda kv: -kv[1]):
                lines.append(f"{'':<22}{n:>4} x {site}")
        elif r["case"] == "loop_overhead":
            us = x["us_per_step"]
            lines.append(
                f"{'':<20}host time per step {us['lightning']:.0f} us vs {us['plain']:.0f} us "
                f"(+{us['lightning'] - us['plain']:.0f} us; one-layer net, {x['steps_per_epoch']} steps per epoch)"
            )
    return "\n".join(lines)


def default_out(device: str, size: str, compiled: bool) -> Path:
    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in platform.node()) or "host"
    return Path("reports/bench") / f"{host}-{device}-{size}{'-compile' if compiled else ''}.json"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnext_lab.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=tuple(SIZES), help="small (CPU default) or full (GPU default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile every network compared")
    parser.add_argument(
        "--layout",
        choices=("channels_last", "contiguous"),
        default="channels_last",
        help="memory layout of every network compared (default channels_last, the faster on GPUs and our CPU)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: steady on a shared CPU; 0: torch's default)"
    )
    parser.add_argument(
        "--only", default=",".join(CASES), help=f"comma-separated cases (default all: {','.join(CASES)})"
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "both"),
        default="auto",
        help="auto: what trainer.precision=auto picks on this device; both: fp32 and bf16 side by side, with the "
        "matmul peak of each",
    )
    parser.add_argument("--out", type=Path, help="JSON report (default reports/bench/<host>-<device>-<size>.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible here; use --device cpu")
    cases = [c.strip() for c in args.only.split(",") if c.strip()]
    if set(cases) - set(CASES):
        parser.error(f"--only {args.only}: cases are {', '.join(CASES)}")
    size = args.size or ("full" if args.device == "cuda" else "small")
    command = " ".join(["python -m resnext_lab.bench", *(argv if argv is not None else sys.argv[1:])])
    out = args.out or default_out(args.device, size, args.compile)
    out.parent.mkdir(parents=True, exist_ok=True)
    precisions = {"auto": [None], "fp32": [False], "bf16": [True], "both": [False, True]}[args.precision]
    reports = {}
    for bf16 in precisions:
        settings = settings_for(args.device, size, args.compile, args.layout, args.threads or None, bf16)
        report = run(settings, cases, log=lambda text: print(text, file=sys.stderr, flush=True))
        report["command"] = command
        reports["bf16" if settings.bf16 else "fp32"] = report
        print(format_table(report))
    if len(reports) == 1:
        (report,) = reports.values()
    else:
        threads = torch.get_num_threads()
        if args.threads and args.device == "cpu":
            torch.set_num_threads(args.threads)
        peaks = {name: matmul_peak(args.device, name == "bf16") for name in reports}
        torch.set_num_threads(threads)
        report = {"schema_version": SCHEMA_VERSION, "command": command, "matmul_peak_gflops": peaks, **reports}
        print(format_precisions(reports, peaks))
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
