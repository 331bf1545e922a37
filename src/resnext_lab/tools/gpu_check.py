"""`make gpu-check`: one command that checks and times the GPU path end to end, for a short slot on one GPU.

    python -m resnext_lab.tools.gpu_check                    # on a GPU: JSON + markdown in reports/gpu-check/
    python -m resnext_lab.tools.gpu_check --tiny --device cpu  # the same steps at tiny size (the tests run this)

It runs, in order, and writes what it measured after each step (a slot that ends early keeps the rest):
1. `bench` eager, then compiled: our networks against torchvision's and the ResNet-50 family;
2. the proxy's Fashion-MNIST epoch through Lightning against the plain loop, with the CUDA host-sync audit
   (bench's `proxy` and `loop_overhead` cases);
3. one small packed proxy sweep (Table 3's 50-layer row, one seed, one epoch) through `run.py`, its measured
   wall time beside `task=plan`'s estimate for this device.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from resnext_lab.files import write_json_atomic, write_text_atomic
from resnext_lab.results import load_sweep
from resnext_lab.tools import bench

ROOT = Path(__file__).resolve().parents[3]
UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}


def _settings(device: str, tiny: bool, compile: bool) -> Any:
    return bench.settings_for(device, "tiny" if tiny else "full", compile)


def sweep_args(device: str, tiny: bool) -> list[str]:
    """The packed sweep: table3's 50-layer row at proxy scale, one seed, one epoch (smoke scale when tiny)."""
    scale = (
        ["scale=smoke", "trainer.accelerator=cpu", "model.cardinality=1,32"]
        if tiny
        else ["scale=proxy", "trainer.max_epochs=1"]
    )
    devices = "cpu" if device == "cpu" else "auto"
    return [
        "-m",
        "hydra/launcher=packed",
        f"hydra.launcher.devices={devices}",
        "experiment=table3",
        *scale,
        "model.depth=${depths.d50}",
        "seed=0",
        "logger=csv",
    ]


def _run(args: Sequence[str], out_root: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args, f"out_root={out_root}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc, time.perf_counter() - start


def planned_seconds(text: str) -> float | None:
    """The sweep's wall-time estimate from `task=plan`'s output."""
    found = re.search(r"^estimate: ([\d.]+) (s|min|h) wall time", text, re.MULTILINE)
    return float(found.group(1)) * UNITS[found.group(2)] if found else None


def sweep_check(device: str, tiny: bool) -> dict[str, Any]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    with tempfile.TemporaryDirectory() as tmp:
        plan, _ = _run([*sweep_args(device, tiny), "task=plan"], Path(tmp) / "plan", env)
        proc, wall = _run(sweep_args(device, tiny), Path(tmp) / "out", env)
        jobs = load_sweep(Path(tmp) / "out")
    estimate = planned_seconds(plan.stdout)
    return {
        "command": "python run.py " + " ".join(sweep_args(device, tiny)),
        "exit_status": proc.returncode,
        "jobs": len(jobs),
        "completed": sum(j.get("status") == "completed" for j in jobs),
        "wall_s": round(wall, 1),
        "plan_estimate_s": estimate,
        "measured_over_plan": round(wall / estimate, 3) if estimate else None,
        "errors": [j.get("error") for j in jobs if j.get("status") != "completed"],
        "stderr_tail": proc.stderr[-1500:] if proc.returncode else "",
    }


def summary_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# GPU check: {report['device'].get('name')}",
        "",
        f"torch {report['versions'].get('torch')}, CUDA {report['versions'].get('cuda')}; "
        f"{report['elapsed_s']:.0f} s in all; command `{report['command']}`",
        "",
        "| step | case | ours img/s | baseline img/s | ratio |",
        "|---|---|---|---|---|",
    ]
    for step in ("bench_eager", "bench_compiled"):
        for row in (report.get(step) or {}).get("results", []):
            base = "-" if not row["baseline"] else f"{row['baseline']['images_per_s']:.1f}"
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
            lines.append(f"| {step} | {row['case']} | {row['ours']['images_per_s']:.1f} | {base} | {ratio} |")
    for name in ("bench_eager", "bench_compiled", "sweep"):
        if "error" in (report.get(name) or {}):
            lines += ["", f"{name} failed: {report[name]['error']}"]
    sweep = report.get("sweep") or {}
    if "completed" in sweep:
        lines += [
            "",
            f"Packed sweep: {sweep['completed']}/{sweep['jobs']} jobs completed in {sweep['wall_s']} s; "
            f"task=plan estimated {sweep['plan_estimate_s']} s (measured/plan {sweep['measured_over_plan']}).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(prog="python -m resnext_lab.tools.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (a CPU check that the command works)")
    parser.add_argument("--out", type=Path, default=Path("reports/gpu-check"))
    parser.add_argument("--skip-compile", action="store_true", help="leave out the compiled benchmark")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible here; use --device cpu --tiny")
    start = time.perf_counter()
    report: dict[str, Any] = {
        "command": " ".join(["python -m resnext_lab.tools.gpu_check", *(argv or sys.argv[1:])]),
        "device": bench.device_info(args.device),
        "versions": bench.library_versions(),
    }
    cases = ["resnet50", "resnext50_32x4d", *([] if args.tiny else ["family"]), "proxy", "loop_overhead"]
    steps = [("bench_eager", lambda: bench.run(_settings(args.device, args.tiny, False), cases, log=_log))]
    if not args.skip_compile:
        steps.append(
            (
                "bench_compiled",
                lambda: bench.run(
                    _settings(args.device, args.tiny, True), ["resnet50", "resnext50_32x4d", "family"], log=_log
                ),
            )
        )
    steps.append(("sweep", lambda: sweep_check(args.device, args.tiny)))
    for name, step in steps:
        _log(f"gpu-check: {name} ...")
        try:
            report[name] = step()
        except Exception as err:  # one failed step must not cost the others' figures
            report[name] = {"error": f"{type(err).__name__}: {err}"}
        report["elapsed_s"] = round(time.perf_counter() - start, 1)
        write_json_atomic(args.out / "gpu-check.json", report)
        write_text_atomic(args.out / "gpu-check.md", summary_markdown(report))
    print(summary_markdown(report))
    print(f"written {args.out / 'gpu-check.json'} and {args.out / 'gpu-check.md'}")
    failed = [name for name, _ in steps if "error" in report[name]]
    return 1 if failed or report["sweep"].get("exit_status") else 0


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
