"""What the machine offers a run: native bf16 on the CPU, and the precision `trainer.precision=auto` picks.

bf16 autocast is the fast path wherever the hardware computes bf16 natively: on GPUs, and on
CPUs with AVX512-BF16 (Intel Cooper Lake and later, AMD Zen 4 and later) or AMX (Intel
Sapphire Rapids and later). Elsewhere a CPU emulates bf16 and runs slower than fp32, so
`auto` stays at fp32 there (docs/PERFORMANCE.md has the figures).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any


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
