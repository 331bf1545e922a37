"""`make gpu-check`: one command that checks and times the GPU path end to end, for a short slot on one GPU.

    python -m resnext_lab.tools.gpu_check                    # on a GPU: JSON + markdown in reports/gpu-check/
    python -m resnext_lab.tools.gpu_check --tiny --device cpu  # the same steps at tiny size (the tests run this)

It runs, in order, and writes what it measured after each step (a slot that ends early keeps the rest):
1. `bench` eager, then compiled: our networks against torchvision's and the ResNet-50 family;
2. the proxy's Fashion-MNIST epoch through Lightning against the plain loop, with the CUDA host-sync audit
   (bench's `proxy` and `loop_overhead` cases);
3. stacking: table3's cells trained as stacks of S seeds against lone networks (bench's `stacking` case), S up
   to 64, in bf16 and fp32, channels_last on and off (grouped convs in channels_last are slow for some group
   sizes on cuDNN, pytorch#70954), and compiled with `mode="reduce-overhead"` (CUDA graphs, which help small
   networks); each variant within its share of `--stack-budget` seconds;
4. one small packed proxy sweep (Table 3's 50-layer row, one seed, one epoch) through `run.py`, its measured
   wall time beside `task=plan`'s estimate for this device.
"""

from __future__ import annotations

import argparse
import dataclasses
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


#: the stacking step's variants: (name, bf16, layout, compiled with reduce-overhead)
STACK_VARIANTS = (
    ("bf16 channels_last", True, "channels_last", False),
    ("bf16 NCHW", True, "contiguous", False),
    ("fp32 channels_last", False, "channels_last", False),
    ("fp32 NCHW", False, "contiguous", False),
    ("bf16 channels_last reduce-overhead", True, "channels_last", True),
)


def stacking_check(device: str, tiny: bool, budget_s: float, compile: bool = True) -> dict[str, Any]:
    """bench's stacking case in each variant: S = 1, 4, 16, 64 at both table3 scales (compiled: the proxy scale,
    S = 1, 16, 64, since each network compiles anew); `budget_s` shared out, the compiled variant's share twice
    an eager one's. Tiny: S = 1, 2 at the cpu scale."""
    variants = [v for v in STACK_VARIANTS if compile or not v[3]]
    shares = sum(2 if v[3] else 1 for v in variants)
    out: dict[str, Any] = {"budget_s": budget_s, "variants": []}
    for name, bf16, layout, compiled in variants:
        settings = bench.settings_for(device, "tiny" if tiny else "full", compiled, layout, None, bf16)
        sizes = (1, 2) if tiny else ((1, 16, 64) if compiled else (1, 4, 16, 64))
        settings = dataclasses.replace(
            settings,
            compile_mode="reduce-overhead" if compiled else "default",
            stack_sizes=sizes,
            stack_scales=("cpu",) if tiny else (("proxy",) if compiled else ("cpu", "proxy")),
            stack_budget_s=budget_s * (2 if compiled else 1) / shares,
        )
        _log(f"gpu-check: stacking, {name} ...")
        try:
            report = bench.run(settings, ["stacking"], log=_log)
            out["variants"].append({"name": name, "settings": report["settings"], "results": report["results"]})
        except Exception as err:  # a variant that cannot run here (a compiler missing) must not cost the others
            out["variants"].append({"name": name, "error": f"{type(err).__name__}: {err}"})
    return out


def stacking_markdown(stacking: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"Stacking (seed-images/s of a stack of S seeds against one lone network; budget {stacking['budget_s']:.0f} s):",
        "",
        "| variant | cell | S | batch | stack seed-img/s | lone img/s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in stacking["variants"]:
        if "error" in variant:
            lines.append(f"| {variant['name']} | failed: {variant['error']} | | | | | |")
        for row in variant.get("results", []):
            x = row["extra"]
            lines.append(
                f"| {variant['name']} | {x['scale']} {x['cell']} | {x['stack']} | {row['batch']} | "
                f"{row['ours']['images_per_s']:.1f} | {row['baseline']['images_per_s']:.1f} | {row['ratio']:.3f} |"
            )
    return lines


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
    if "variants" in (report.get("stacking") or {}):
        lines += stacking_markdown(report["stacking"])
    for name in ("bench_eager", "bench_compiled", "stacking", "sweep"):
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
    parser.add_argument("--skip-compile", action="store_true", help="leave out the compiled benchmarks")
    parser.add_argument(
        "--stack-budget", type=float, default=150.0, help="seconds for the stacking step's larger stacks (default 150)"
    )
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
    steps.append(("stacking", lambda: stacking_check(args.device, args.tiny, args.stack_budget, not args.skip_compile)))
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
    failed += [v["name"] for v in report["stacking"].get("variants", []) if "error" in v]
    return 1 if failed or report["sweep"].get("exit_status") else 0


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
