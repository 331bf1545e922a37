"""The benchmark cases: our networks against torchvision's, the ResNet-50 family, ResNeXt-29, the proxy epoch
(Lightning against a plain loop, with its host-sync audit) and the loop overhead."""

from __future__ import annotations

import dataclasses
import itertools
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from resnext_lab.config import OptimSettings, parse
from resnext_lab.data import TensorBatches, build_datamodule
from resnext_lab.errors import DataError
from resnext_lab.hardware import synchronize
from resnext_lab.job import compose
from resnext_lab.models import ModelSpec, build, complexity, spec_from_config
from resnext_lab.models.spec import IMAGENET_STAGE_BLOCKS
from resnext_lab.module import ClassificationModule, schedule, sgd
from resnext_lab.tools.bench.harness import (
    BenchSettings,
    Measurement,
    Row,
    check_same_params,
    measure_group,
    n_params,
    paired_ratio,
    prepare,
)
from resnext_lab.tools.bench.syncs import HostSyncs, _Audit

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
CASES = (*TORCHVISION_PAIRS, "family", "alignment", "resnext29_8x64d", "proxy", "loop_overhead", "stacking")
LIGHTNING = "Lightning: ClassificationModule + datamodule"


def torchvision_case(name: str, settings: BenchSettings) -> Row:
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


def family_rows(settings: BenchSettings, shapes: Sequence[tuple[int, int]] = FAMILY, case: str = "family") -> list[Row]:
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


def cifar_row(settings: BenchSettings) -> Row:
    batch, size = settings.cifar_batch, settings.cifar_image_size
    (ours,) = measure_group([(CIFAR.name, lambda: build(CIFAR))], batch, size, CIFAR.num_classes, settings)
    flops = complexity(dataclasses.replace(CIFAR, image_size=size))["flops"]
    return Row("resnext29_8x64d", "cifar", batch, size, flops, ours, None, None)


# --- host synchronisation ----------------------------------------------------------------------------


def proxy_config(**data: Any) -> tuple[dict[str, Any], dict[str, Any], OptimSettings]:
    """The default run's `model` and `data` nodes and its `optim` settings, composed from conf/ as run.py does."""
    from omegaconf import OmegaConf

    cfg = compose(["model=proxy", "data=fashion_mnist"])
    model, data_cfg = (OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data"))
    return model, {**data_cfg, **data}, parse(OptimSettings, cfg.optim, "optim")  # type: ignore[dict-item]


def _synthesize(dm: Any, n: int) -> None:
    """Random uint8 images of Fashion-MNIST's shape as the datamodule's splits: speed does not read pixels."""
    g = torch.Generator().manual_seed(0)
    dm.train_images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    dm.train_labels = torch.randint(0, 10, (n,), generator=g)
    dm.val_images, dm.val_labels = dm.train_images[:256], dm.train_labels[:256]
    dm.test_images, dm.test_labels = dm.val_images, dm.val_labels


def _load_or_synthesize(dm: Any, images: int | None) -> str:
    """Read Fashion-MNIST if it is here, else synthesize it."""

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

    def __init__(self, net: nn.Module, dm: Any, optim: OptimSettings, settings: BenchSettings, epochs: int) -> None:
        self.net, self.dm, self.settings = net, dm, settings
        self.steps_per_epoch = len(dm.train_labels) // dm.settings.batch_size
        # the module's own optimiser (parameter groups, scaled lr), as Lightning's epochs get it
        self.optimizer = sgd(net, optim, dm.settings.batch_size)
        self.scheduler = schedule(self.optimizer, optim, self.steps_per_epoch, epochs)
        self.passes = 0

    def epoch(self, max_steps: int | None = None) -> None:
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
        synchronize(self.device)
        if self._start is not None:
            self.lightning_s.append(time.perf_counter() - self._start)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()
        start = time.perf_counter()
        self.plain_epoch()
        synchronize(self.device)
        self.plain_s.append(time.perf_counter() - start)
        self._start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()


def _proxy_trainer(settings: BenchSettings, callbacks: list[pl.Callback], epochs: int, limit: int | None) -> pl.Trainer:
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
    settings: BenchSettings, dm: Any, make_net: Callable[[], nn.Module], optim: OptimSettings, num_classes: int
) -> tuple[_Alternate, PlainLoop]:
    """1 + `proxy_epochs` epochs through Lightning, each after one plain-loop epoch, on the datamodule's tensors."""

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
    settings: BenchSettings, dm: Any, make_net: Callable[[], nn.Module], optim: OptimSettings, num_classes: int
) -> tuple[int, dict[str, int], dict[str, int]]:
    """Host syncs in the training steps of a second epoch (the first initialises lazily), Lightning and plain.

    Eager, with at most `audit_steps` steps: the count is about the loop and the module, not the network.
    """

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


def proxy_row(settings: BenchSettings) -> Row:
    """Epochs of the default proxy model on Fashion-MNIST: Lightning (module + datamodule) vs a plain loop."""

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


def loop_overhead_row(settings: BenchSettings) -> Row:
    """Host time per step of the training loop itself: the proxy's batches, optimiser and module, a one-layer net.

    With the network's work made negligible, what is left is what Lightning and the module
    (metrics, logging) cost the host on top of a plain loop. On a GPU that host work runs
    ahead of the kernels of earlier steps and stays hidden while it is shorter than a step's
    GPU time, unless something makes the host wait (see `HostSyncs`).
    """

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
