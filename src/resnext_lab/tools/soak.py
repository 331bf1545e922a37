"""A soak: many tiny jobs through the packed launcher on this machine's CPU, to see that its long-lived workers
do not grow from job to job (a leak would take a long sweep's memory, job after job).

    python -m resnext_lab.tools.soak                 # `make soak`: 50 jobs, 2 workers; one JSON line on stdout
    python -m resnext_lab.tools.soak --jobs 200      # longer

Each job is a real one (Fashion-MNIST, a 27k-parameter network, one epoch of 256 images, W&B offline and the
CSV log), with its own seed. The packed launcher writes each finished job's worker RSS to
`<sweep>/.packed/rss.jsonl`; the line printed compares the workers' RSS once 5 jobs are done with their RSS
after the last job. Exit status 1 when a job did not complete or the growth exceeds --max-growth-pct.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
TINY = (
    "model.width_scale=0.125",
    "model.cardinality=2",
    "model.width=4",
    "data.limit_train=256",
    "data.limit_eval=128",
    "data.batch_size=64",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "logger.wandb.mode=offline",
)
#: The first jobs warm the workers up (imports, allocator pools, W&B's service): growth is measured after them.
WARM_JOBS = 5


def rss_growth(records: Sequence[dict[str, Any]], warm_jobs: int = WARM_JOBS) -> dict[str, Any]:
    """The workers' summed RSS once `warm_jobs` jobs were done (each worker's latest record by then) and after
    the last job (each worker's last record), and the growth between them in percent."""

    def total(upto: float) -> int:
        latest: dict[int, int] = {}
        for r in sorted(records, key=lambda r: r["done"]):
            if r["done"] <= upto and r.get("rss_kb"):
                latest[r["worker"]] = r["rss_kb"]
        return sum(latest.values())

    first, last = total(warm_jobs), total(float("inf"))
    return {
        "rss_mb_after_first": round(first / 1024, 1),
        "rss_mb_after_last": round(last / 1024, 1),
        "rss_growth_pct": round(100 * (last - first) / first, 2) if first else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50, help="tiny jobs to run (at least 50 for `make soak`)")
    parser.add_argument("--workers", type=int, default=2, help="packed workers (jobs_per_device on the CPU)")
    parser.add_argument("--max-growth-pct", type=float, default=10.0, help="the RSS growth that fails the soak")
    parser.add_argument("--out", type=Path, default=None, help="where the sweep goes (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.jobs <= WARM_JOBS:
        print(f"error: --jobs={args.jobs}: must be more than the {WARM_JOBS} warm-up jobs", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="resnext-soak-") as scratch:
        out = args.out or Path(scratch)
        seeds = ",".join(str(s) for s in range(args.jobs))
        command = [
            sys.executable,
            str(ROOT / "run.py"),
            "-m",
            "hydra/launcher=packed",
            "hydra.launcher.devices=cpu",
            f"hydra.launcher.jobs_per_device={args.workers}",
            *TINY,
            f"seed={seeds}",
            f"out_root={out}",
            "name=soak",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        sweep = out / "soak"
        results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
        rss_file = sweep / ".packed" / "rss.jsonl"
        records = [json.loads(line) for line in rss_file.read_text().splitlines()] if rss_file.exists() else []
    completed = sum(r.get("status") == "completed" for r in results)
    line = {
        "jobs": completed,
        "of": args.jobs,
        "workers": args.workers,
        **rss_growth(records),
        "max_growth_pct": args.max_growth_pct,
        "wall_s": round(wall, 1),
        "exit": proc.returncode,
    }
    growth = line["rss_growth_pct"]
    line["ok"] = bool(
        proc.returncode == 0 and completed == args.jobs and growth is not None and growth <= args.max_growth_pct
    )
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
    print(json.dumps(line), flush=True)
    return 0 if line["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
