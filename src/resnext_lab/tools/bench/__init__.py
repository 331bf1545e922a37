"""Timed training steps: our networks against torchvision's, and a Lightning proxy epoch against a plain loop.

    python -m resnext_lab.tools.bench                          # cuda when present (full sizes), else cpu (small sizes)
    python -m resnext_lab.tools.bench --device cpu --size small
    python -m resnext_lab.tools.bench --device cuda --compile --out reports/bench/h100-compiled.json

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
one-layer network, which leaves the host time per step. The stacking case times S seeds
as one stacked network against lone networks, in seed-images/s (stacking.py). Method and
figures: docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from resnext_lab.tools.bench.cases import (
    ALIGNMENT,
    CASES,
    TORCHVISION_PAIRS,
    cifar_row,
    family_rows,
    loop_overhead_row,
    proxy_row,
    torchvision_case,
)
from resnext_lab.tools.bench.harness import (
    BENCH_SIZES,
    SCHEMA_VERSION,
    BenchError,
    BenchSettings,
    Row,
    check_same_params,
    device_info,
    format_precisions,
    fraction_of_peak,
    library_versions,
    load_average,
    matmul_peak,
    settings_for,
)
from resnext_lab.tools.bench.stacking import SCALES as STACK_SCALES
from resnext_lab.tools.bench.stacking import stacking_rows
from resnext_lab.tools.bench.syncs import HostSyncs

__all__ = [
    "CASES",
    "SCHEMA_VERSION",
    "TORCHVISION_PAIRS",
    "BenchError",
    "HostSyncs",
    "BenchSettings",
    "check_same_params",
    "device_info",
    "format_precisions",
    "format_table",
    "fraction_of_peak",
    "main",
    "matmul_peak",
    "run",
    "settings_for",
    "torchvision_case",
    "library_versions",
]


def run(settings: BenchSettings, cases: Sequence[str] = CASES, log: Callable[[str], object] = print) -> dict[str, Any]:
    """Measure `cases` (names from CASES) and return the report (what --out writes)."""
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise BenchError(f"unknown case(s) {', '.join(unknown)}: choose from {', '.join(CASES)}")
    if settings.device == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started, load = time.strftime("%Y-%m-%dT%H:%M:%S%z"), [load_average()]
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
            elif case == "stacking":
                rows.extend(stacking_rows(settings, log))
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
        "versions": library_versions(),
        "settings": dataclasses.asdict(settings),
        "load_average": [*load, load_average()],  # 1-min load at start and end: other work shares a CPU
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
    parser = argparse.ArgumentParser(prog="python -m resnext_lab.tools.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--size",
        choices=tuple(BENCH_SIZES),
        help="tiny (a check that it runs), small (CPU default) or full (GPU default)",
    )
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
    parser.add_argument(
        "--stack-sizes", help="the stacking case's seeds per stack, comma-separated (default: the size's)"
    )
    parser.add_argument("--stack-scales", help="the stacking case's table3 scales: cpu, proxy or cpu,proxy")
    parser.add_argument("--stack-batch", type=int, help="the stacking case's batch per seed (default: the scale's)")
    parser.add_argument("--out", type=Path, help="JSON report (default reports/bench/<host>-<device>-<size>.json)")
    args = parser.parse_args(argv)
    stacking = stack_options(parser, args)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible here; use --device cpu")
    cases = [c.strip() for c in args.only.split(",") if c.strip()]
    if set(cases) - set(CASES):
        parser.error(f"--only {args.only}: cases are {', '.join(CASES)}")
    size = args.size or ("full" if args.device == "cuda" else "small")
    command = " ".join(["python -m resnext_lab.tools.bench", *(argv if argv is not None else sys.argv[1:])])
    out = args.out or default_out(args.device, size, args.compile)
    out.parent.mkdir(parents=True, exist_ok=True)
    precisions = {"auto": [None], "fp32": [False], "bf16": [True], "both": [False, True]}[args.precision]
    reports = {}
    for bf16 in precisions:
        settings = settings_for(args.device, size, args.compile, args.layout, args.threads or None, bf16)
        settings = dataclasses.replace(settings, **stacking)
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


def stack_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The stacking case's settings given on the command line, checked (parser.error otherwise)."""
    out: dict[str, Any] = {}
    if args.stack_sizes:
        try:
            out["stack_sizes"] = tuple(int(v) for v in args.stack_sizes.split(","))
        except ValueError:
            out["stack_sizes"] = ()
        if not out["stack_sizes"] or min(out["stack_sizes"]) < 1:
            parser.error(f"--stack-sizes {args.stack_sizes}: integers >= 1, comma-separated (e.g. 1,2,4)")
    if args.stack_scales:
        out["stack_scales"] = tuple(v.strip() for v in args.stack_scales.split(","))
        if not set(out["stack_scales"]) <= set(STACK_SCALES):
            parser.error(f"--stack-scales {args.stack_scales}: choose from {', '.join(STACK_SCALES)}")
    if args.stack_batch is not None:
        if args.stack_batch < 1:
            parser.error(f"--stack-batch {args.stack_batch}: an integer >= 1")
        out["stack_batch"] = args.stack_batch
    return out


if __name__ == "__main__":
    raise SystemExit(main())
