"""`task=plan` against the wall time of the same sweep, run for real: how far the plan is off on this machine.

    python -m resnext_lab.tools.plan_check                        # the README's 15-job sweep, precision auto
    python -m resnext_lab.tools.plan_check --precision 32-true --precision bf16-mixed
    python -m resnext_lab.tools.plan_check -- model.cardinality=1,32 seed=0,1 trainer.max_epochs=2

For each precision: `run.py -m task=plan` with a fresh step-time cache (so the plan calibrates, as it does the
first time on a new machine), then the same sweep trained in a temporary folder, timed from start to exit.
One JSON line per precision (plan seconds, real seconds, their ratio, the CPU, torch), also appended to --out.
The issue's bar: the ratio within 0.7-1.3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
#: The README's example sweep (README "Plan before you spend")
README_SWEEP = (
    "model.cardinality=1,2,4,32,64",
    "seed=0,1,2",
    "data.limit_train=512",
    "data.limit_eval=256",
    "data.batch_size=128",
    "trainer.max_epochs=1",
)
UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}


def estimate_seconds(plan_output: str) -> float:
    """The sweep's wall-time estimate from task=plan's last line ("estimate: 4.2 min wall time ...")."""
    match = re.search(r"^estimate: ([\d.]+) (s|min|h) wall time", plan_output, re.MULTILINE)
    if match is None:
        raise ValueError("task=plan printed no 'estimate:' line")
    return float(match.group(1)) * UNITS[match.group(2)]


def cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else platform.machine()


def check(precision: str, overrides: Sequence[str], tmp: Path) -> dict[str, object]:
    import torch

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache"), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    args = [*overrides, f"trainer.precision={precision}", f"out_root={tmp / 'out'}", "name=plan_check"]
    plan = subprocess.run(
        [sys.executable, "run.py", "-m", "task=plan", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if plan.returncode != 0:
        raise SystemExit(f"error: task=plan failed (exit {plan.returncode}): {plan.stderr.strip()[-500:]}")
    planned = estimate_seconds(plan.stdout)
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "run.py", "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    real = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"error: the sweep failed (exit {run.returncode}): {run.stderr.strip()[-500:]}")
    return {
        "precision": precision,
        "plan_s": round(planned, 1),
        "real_s": round(real, 1),
        "plan_over_real": round(planned / real, 3),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "overrides": list(overrides),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnext_lab.tools.plan_check", description=__doc__.split("\n")[0])
    parser.add_argument("--precision", action="append", help="trainer.precision, repeatable (default: auto)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/plan_check.jsonl"), help="JSON lines file")
    parser.add_argument("overrides", nargs="*", help="the sweep's overrides (default: the README's 15-job sweep)")
    args = parser.parse_args(argv)
    overrides = args.overrides or list(README_SWEEP)
    for precision in args.precision or ["auto"]:
        with tempfile.TemporaryDirectory() as tmp:
            line = json.dumps(check(precision, overrides, Path(tmp)))
        print(line, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as out:
            out.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
