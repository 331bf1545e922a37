"""What the machine offers a run: its GPUs (`hydra.launcher.devices`), native bf16 on the CPU and the precision
`trainer.precision=auto` picks, and this process's rank among a DDP run's.

bf16 autocast is the fast path wherever the hardware computes bf16 natively: on GPUs, and on
CPUs with AVX512-BF16 (Intel Cooper Lake and later, AMD Zen 4 and later) or AMX (Intel
Sapphire Rapids and later). Elsewhere a CPU emulates bf16 and runs slower than fp32, so
`auto` stays at fp32 there (docs/PERFORMANCE.md has the figures).
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from resnext_lab.errors import fail

log = logging.getLogger("resnext_lab.packed")


def cpu_name() -> str:
    """The CPU's model name as /proc/cpuinfo states it, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronize(device: Any) -> None:
    """Wait for a CUDA device's queued work (for timing); nothing to wait for on the CPU."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def native_bf16_cpu() -> str | None:
    """The CPU's native bf16 instruction set as torch's CPU capability query reports it, else None."""
    import torch

    # Private, and the only query torch has for these ISA extensions (torch.backends.cpu.get_cpu_capability()
    # names the vector width, AVX2 or AVX512, not bf16); tests/test_train.py fails if either goes away.
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return None


def resolve_precision(setting: str, cuda: bool) -> tuple[str, str]:
    """`trainer.precision` as Lightning takes it, and why: an explicit setting wins, `auto` follows the hardware."""
    if setting != "auto":
        return setting, "set by trainer.precision"
    if cuda:
        return "bf16-mixed", "auto: a CUDA GPU"
    isa = native_bf16_cpu()
    if isa:
        return "bf16-mixed", f"auto: the CPU computes bf16 natively ({isa})"
    return "32-true", "auto: the CPU has no native bf16 (no AMX, no AVX512-BF16)"


def visible_gpus() -> list[int]:
    """The GPU indices this process may use, as CUDA_VISIBLE_DEVICES names them (all GPUs when unset)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        names = [n.strip() for n in env.split(",") if n.strip()]
        if not all(n.isdigit() for n in names):
            fail(
                f"hydra.launcher.devices=auto: CUDA_VISIBLE_DEVICES={env!r} names GPUs by UUID; "
                "give hydra.launcher.devices=[0,1,...] as indices"
            )
        return [int(n) for n in names]
    import torch  # only here: Hydra imports the packed launcher for every command

    return list(range(torch.cuda.device_count()))


def resolve_devices(devices: Any) -> list[int]:
    """`hydra.launcher.devices`: auto (every visible GPU; none on a CPU-only machine), cpu, or GPU indices."""
    if devices == "auto":
        return visible_gpus()
    if devices == "cpu":
        return []
    if OmegaConf.is_config(devices):
        devices = OmegaConf.to_container(devices)
    if isinstance(devices, int) and not isinstance(devices, bool):
        devices = [devices]
    if (
        not isinstance(devices, list)
        or not devices
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
        or len(set(devices)) != len(devices)
    ):
        fail(f"hydra.launcher.devices={devices!r}: must be auto, cpu, or a list of distinct GPU indices like [0,1]")
    visible = visible_gpus()
    if visible and not set(devices) <= set(visible):
        fail(f"hydra.launcher.devices={devices}: this machine's GPUs are {visible}")
    if not visible:
        log.warning(f"no GPU visible here: hydra.launcher.devices={devices} only sets the jobs' CUDA_VISIBLE_DEVICES")
    return list(devices)


def process_rank() -> int:
    """This process's global rank, known before any Trainer exists; 0 when it runs alone.

    Under DDP every rank runs this task: `strategy=ddp` re-runs the command line for ranks > 0 (LOCAL_RANK)
    and SLURM starts one task per device (SLURM_PROCID). Only rank 0 writes results.json, wandb_id and the
    summary; Lightning keeps checkpoints, the CSV log and the W&B run on rank 0 itself.
    """
    from pytorch_lightning.utilities.rank_zero import rank_zero_only  # Lightning: only where a job trains

    return int(getattr(rank_zero_only, "rank", 0))


def training_device(trainer: Mapping[str, Any]) -> str:
    """The device a job of this trainer node trains on here: cuda when one is visible and allowed, else cpu."""
    import torch

    cuda_ok = trainer.get("accelerator", "auto") in ("auto", "gpu", "cuda")
    return "cuda" if cuda_ok and torch.cuda.is_available() else "cpu"
