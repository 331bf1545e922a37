"""What a job costs before it runs: its steps, its multiply-adds, and its wall time on this machine.

Per job: epochs x (training steps + validation batches) + one test pass, plus a fixed cost per job
(start-up, data, logging). `calibrate` times a few training steps and evaluation batches of a network
as the job will run them (precision, channels_last, threads per job under the packed launcher), after
warm-up steps, at the job's own batch (or on a line through two smaller batches where that would take
long), cached in `~/.cache/resnext-lab/plan.json`. `overheads` measures the fixed cost per job and per
worker process once per machine, data set and logger: the first job runs for real with one step of
each kind, as a sweep of one job and of five. `tasks/plan.py` prints the plan; the packed launcher
orders a sweep's jobs by `work`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resnext_lab.config import to_python
from resnext_lab.hardware import synchronize
from resnext_lab.job import check_job
from resnext_lab.models import complexity

#: (training images, test images) of each data set; the validation split comes out of the training images.
DATASET_SIZES = {
    "fashion_mnist": (60_000, 10_000),
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "imagenet": (1_281_167, 50_000),
}
#: Named devices: achieved training throughput in TFLOP/s (6 FLOPs per multiply-add per image: forward and the
#: backward's two products), and the shortest step the host allows. ResNet-50 trains at about 3,000 img/s on one
#: H100 in bf16 (MLPerf-class pipelines), 1,400 on an A100, 900 on a V100 (mixed precision): 4.1 GMACs x 6.
THROUGHPUT = {"h100": (75.0, 0.003), "a100": (35.0, 0.004), "v100": (22.0, 0.005)}
#: Seconds per job besides its steps (imports are paid once per worker; W&B, data, checkpoints per job),
#: and per sweep process. Measured on the project's 2-core CPU: docs/PERFORMANCE.md.
JOB_OVERHEAD_S, STARTUP_S = 6.0, 12.0
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "resnext-lab" / "plan.json"
#: Steps are timed at the job's batch where CALIBRATION_BATCH images scaled up to it take at most FULL_BATCH_S,
#: else at CALIBRATION_BATCH and half of it (calibrate). A new CALIBRATION_VERSION times every network again.
CALIBRATION_BATCH, FULL_BATCH_S, WARMUP_STEPS, CALIBRATION_VERSION = 32, 1.0, 3, 3


def _count(limit: Any, batches: int) -> int:
    """Lightning's limit_*_batches: a fraction (float), a count (int) or null (all)."""
    if limit is None:
        return batches
    return min(batches, int(limit)) if isinstance(limit, int) else int(batches * float(limit))


def world_size(trainer: Mapping[str, Any]) -> int:
    devices = trainer.get("devices")
    per_node = devices if isinstance(devices, int) else len(devices) if isinstance(devices, list) else 1
    return per_node * int(trainer.get("num_nodes") or 1)


def steps(cfg: Mapping[str, Any]) -> tuple[int, int, int]:
    """(training steps per epoch, validation batches per epoch, test batches) of a composed job config."""
    data, trainer = cfg["data"], cfg["trainer"]
    train_n, test_n = DATASET_SIZES[data["name"]]
    val_size = int(data.get("val_size") or 0)
    train = train_n - val_size
    if data.get("limit_train"):
        train = min(train, int(data["limit_train"]))
    val = val_size or test_n
    test = test_n
    if data.get("limit_eval"):
        val, test = min(val, int(data["limit_eval"])), min(test, int(data["limit_eval"]))
    world = world_size(trainer)
    batch, eval_batch = int(data["batch_size"]), int(data.get("eval_batch_size") or data["batch_size"])
    train_steps = _count(trainer.get("limit_train_batches"), train // (batch * world))
    val_batches = _count(trainer.get("limit_val_batches"), math.ceil(val / (eval_batch * world)))
    test_batches = _count(trainer.get("limit_test_batches"), math.ceil(test / (eval_batch * world)))
    return train_steps, val_batches, test_batches


def work(cfg: Mapping[str, Any]) -> float:
    """A job's multiply-adds in all (a training image counts 3x: forward and backward): what the packed
    launcher orders a sweep's jobs by, longest first, as `sweep_seconds` assumes."""
    spec = check_job(cfg, check_data=False).spec
    nodes = {key: to_python(cfg[key]) for key in ("data", "trainer")}
    train_steps, val_batches, test_batches = steps(nodes)
    batch = int(nodes["data"]["batch_size"])
    eval_batch = int(nodes["data"].get("eval_batch_size") or batch)
    epochs = int(nodes["trainer"]["max_epochs"])
    images = 3 * epochs * train_steps * batch + (epochs * val_batches + test_batches) * eval_batch
    return float(complexity(spec)["flops"]) * images * world_size(nodes["trainer"])


def _key(spec: Any, batch: int, precision: str, channels_last: bool, threads: int, device: str, stack: int = 1) -> str:
    import torch  # here and below: a plan on GPU names or from the cache loads no torch

    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    text = json.dumps(
        [
            CALIBRATION_VERSION,
            dataclasses.asdict(spec),
            batch,
            precision,
            channels_last,
            threads,
            torch.__version__,
            platform.node(),
            platform.processor(),
            gpu,
            *([stack] if stack > 1 else []),  # a lone step keeps the key it always had
        ],
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def calibrate(
    spec: Any,
    batch: int,
    precision: str,
    channels_last: bool,
    threads: int,
    cache: dict[str, Any],
    device: str = "cpu",
    stack: int = 1,
) -> tuple[float, float]:
    """(seconds per training step, per evaluation batch) at `batch`, timed here after WARMUP_STEPS untimed steps
    (oneDNN and cuDNN pick and build their kernels in the first steps of each shape).

    `stack` > 1: one step of `stack` seeds stacked as one network (models.stack), `batch` images per seed and
    the sum of the seeds' losses, as a stacked job trains (tasks/train_stack.py): the step of all its seeds.

    On a CPU a step is timed at the job's own batch when CALIBRATION_BATCH images take at most
    FULL_BATCH_S scaled up to it. Beyond that it is timed at CALIBRATION_BATCH and half of it, and the line through
    the two is extended to the batch: a step has a fixed part (the optimizer, the autograd graph, per-layer
    calls) that scaling the whole step by batch/CALIBRATION_BATCH would count batch/CALIBRATION_BATCH times."""
    key = _key(spec, batch, precision, channels_last, threads, device, stack)
    if key in cache:
        return tuple(cache[key])  # type: ignore[return-value]
    import torch
    import torch.nn.functional as F

    from resnext_lab.models import build  # torch: only when a network is timed
    from resnext_lab.models import stack as stack_of

    dev = torch.device(device)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    bf16 = precision.startswith("bf16")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        net = (stack_of(spec, range(stack)) if stack > 1 else build(spec)).to(dev, memory_format=memory)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

        def seconds(n: int, train: bool, budget: float) -> float:
            x = torch.randn(n, stack * spec.in_channels, spec.image_size, spec.image_size, device=dev)
            x = x.to(memory_format=memory)  # a stack takes its seeds' images flattened: (B, S*C, H, W)
            y = torch.randint(0, spec.num_classes, (n, stack) if stack > 1 else (n,), device=dev)
            net.train(train)

            def step() -> None:
                if train:
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                        out = net(x)
                        if stack > 1:  # the sum of each seed's mean loss, as StackedModule trains
                            loss = F.cross_entropy(out.permute(0, 2, 1), y, reduction="none").mean(0).sum()
                        else:
                            loss = F.cross_entropy(out, y)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                else:
                    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                        net(x)

            for _ in range(WARMUP_STEPS):
                step()
            synchronize(dev)
            count, start = 0, time.perf_counter()
            while count < 3 or time.perf_counter() - start < budget:
                step()
                count += 1
                if count % 5 == 0:
                    synchronize(dev)
            synchronize(dev)
            return (time.perf_counter() - start) / count

        per_step = []
        for train, budget in ((True, 1.0), (False, 0.3)):
            small = min(batch, CALIBRATION_BATCH)
            if device == "cuda" or small == batch:
                per_step.append(seconds(batch, train, budget))
                continue
            t_small = seconds(small, train, budget)
            if t_small * batch / small <= FULL_BATCH_S:
                per_step.append(seconds(batch, train, budget))
                continue
            t_half = seconds(small // 2, train, budget)
            per_image = max(0.0, (t_small - t_half) / (small - small // 2))
            per_step.append(min(t_small * batch / small, t_small + per_image * (batch - small)))
    finally:
        torch.set_num_threads(previous)
    cache[key] = per_step
    return per_step[0], per_step[1]


#: The settings a calibration job replaces: one step of each kind, one process, a fresh seed list.
_OVERHEAD_KEYS = (
    "seed",
    "task",
    "out_root",
    "name",
    "hydra/launcher",
    "trainer.max_epochs",
    "trainer.limit_train_batches",
    "trainer.limit_val_batches",
    "trainer.limit_test_batches",
    "sweep.confirm",
)
#: A new OVERHEAD_VERSION measures the overheads again (2: without a plan inside the calibration sweeps).
OVERHEAD_VERSION = 2
#: A calibration sweep (1 then 5 one-step jobs) that takes longer than this is abandoned for the fixed figures.
OVERHEAD_TIMEOUT_S = 600
#: Set in a calibration's own sweeps, so that they print no plan (a paper table prints one before its jobs): a
#: plan there would time the step in the first sweep only and hide that time in the difference of the two.
_CALIBRATING = "RESNEXT_LAB_PLAN_CALIBRATING"


def calibrating() -> bool:
    """Whether this process is one of `overheads`' calibration sweeps."""
    return bool(os.environ.get(_CALIBRATING))


def overheads(
    overrides: Sequence[str], cfg: Mapping[str, Any], cache: dict[str, Any], packed: bool = False
) -> tuple[float, float]:
    """(seconds per job besides its steps, seconds per worker process before its first job) on this machine, for
    jobs like the one of `overrides`: measured once per machine, data set and logger (cached), by running that
    job for real with one training step, validation and test batch, as sweeps of 1 and of 5 jobs, W&B offline,
    in one process (the basic launcher) or, for a packed sweep, one packed worker (its spawn and imports count).
    The difference is four jobs' start-up, data, logging and checkpoints; the single sweep less one job is the
    process's imports and Hydra. Inside a calibration, and where it fails or takes over OVERHEAD_TIMEOUT_S, the
    fixed JOB_OVERHEAD_S and STARTUP_S."""
    import torch

    if calibrating():
        return JOB_OVERHEAD_S, STARTUP_S
    logger = cfg["logger"]  # csv and W&B settings: what a job writes
    key = (
        "overhead:"
        + hashlib.sha1(
            json.dumps(
                [
                    CALIBRATION_VERSION,
                    OVERHEAD_VERSION,
                    packed,
                    cfg["data"]["name"],
                    logger,
                    torch.__version__,
                    platform.node(),
                    platform.processor(),
                ],
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest()[:16]
    )
    if key in cache:
        return tuple(cache[key])  # type: ignore[return-value]
    base = [
        o
        for o in overrides
        if o.split("=", 1)[0].lstrip("+~") not in _OVERHEAD_KEYS and not o.lstrip("+~").startswith("hydra.launcher.")
    ]
    device = "[0]" if torch.cuda.is_available() else "cpu"  # one worker on one device runs the jobs in turn
    one_worker = ["hydra.launcher.jobs_per_device=1", f"hydra.launcher.devices={device}"] if packed else []
    base += [
        *(one_worker or ["hydra/launcher=basic"]),
        "task=train",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    ]
    env = {**os.environ, _CALIBRATING: "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    root = Path(__file__).resolve().parents[2]
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for seeds in ("0", "0,1,2,3,4"):
            start = time.perf_counter()
            try:
                proc = subprocess.run(
                    [
                        sys.executable,
                        str(root / "run.py"),
                        "-m",
                        *base,
                        f"seed={seeds}",
                        f"out_root={tmp}",
                        f"name=overhead{len(seconds)}",
                    ],
                    cwd=root,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=OVERHEAD_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:  # a machine this slow is priced with the fixed figures, not cached
                return JOB_OVERHEAD_S, STARTUP_S
            if proc.returncode != 0:  # the job itself will say why; the plan keeps the fixed figures
                cache[key] = [JOB_OVERHEAD_S, STARTUP_S]
                return JOB_OVERHEAD_S, STARTUP_S
            seconds.append(time.perf_counter() - start)
    per_job = max(0.0, (seconds[1] - seconds[0]) / 4)
    cache[key] = [per_job, max(0.0, seconds[0] - per_job)]
    return per_job, cache[key][1]


def flop_step(flops: int, batch: int, device: str) -> tuple[float, float]:
    tflops, floor = THROUGHPUT[device]
    train = max(6 * flops * batch / (tflops * 1e12), floor)
    return train, max(train / 3, floor / 2)
