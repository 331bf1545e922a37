"""How to run a CPU sweep fastest: one job at a time with every core, or packed jobs of one thread each,
in fp32 and in bf16. Each way runs the same real sweep (Fashion-MNIST) from nothing, and is timed end to end.

    python -m resnext_lab.tools.thread_policy                       # `make thread-policy`; JSON in reports/policy/
    python -m resnext_lab.tools.thread_policy --precisions 32-true  # one precision only
    python -m resnext_lab.tools.thread_policy --policy packed --compile --overrides experiment=demo scale=cpu
                                                       # eager against torch.compile, compilation included

The sweep is `cpu`-scale sized (a 50-layer cifar-template network at 1/8 width and its 8-path counterpart,
two seeds, 2 epochs of 6,000 images); `--overrides` replaces it. The jobs are the same either way, but another
thread count rounds floating-point sums in another order, so their errors differ as two runs with
`deterministic=false` do; only the wall time is compared.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from resnext_lab.files import write_json_atomic
from resnext_lab.results import load_sweep

ROOT = Path(__file__).resolve().parents[3]
SWEEP = (
    "model.template=cifar",
    "model.depth=null",
    "model.stage_blocks=[3,4,9]",
    "model.width_scale=0.125",
    "model.reference.width=8",
    "model.width=auto",
    "model.cardinality=1,8",
    "seed=0,1",
    "data.limit_train=6000",
    "data.limit_eval=2000",
    "data.batch_size=128",
    "trainer.max_epochs=2",
    "trainer.enable_progress_bar=false",
    "logger=csv",
)
#: --policy name -> (its label in the report, its launcher overrides)
POLICIES = {
    "one": ("1 job x all cores", []),
    "packed": (
        "packed: 2 jobs x 1 thread",
        ["hydra/launcher=packed", "hydra.launcher.devices=cpu", "hydra.launcher.jobs_per_device=2"],
    ),
}


def time_sweep(overrides: Sequence[str], launcher: Sequence[str], precision: str, out: Path) -> dict[str, object]:
    """Run the sweep in a fresh folder; its wall time and the jobs' own times."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("OMP_NUM_THREADS", None)  # the launcher decides the threads
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "-m",
            *launcher,
            *overrides,
            f"trainer.precision={precision}",
            f"out_root={out}",
            "name=policy",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start

    results = load_sweep(out)  # the sweep is out/policy, or out/<experiment>/<scale> with experiment=
    if proc.returncode != 0 or len(results) == 0:
        raise RuntimeError(f"the sweep failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return {
        "wall_s": round(wall, 1),
        "jobs": len(results),
        "job_s": [r.get("wall_time_s") for r in results],
        "test_top1_err": [r.get("metrics", {}).get("test/top1_err") for r in results],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resnext_lab.tools.thread_policy", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--precisions", default="32-true,bf16-mixed", help="comma-separated trainer.precision values")
    parser.add_argument("--overrides", nargs="*", default=list(SWEEP), help="the sweep (Hydra overrides)")
    parser.add_argument("--policy", choices=["all", *POLICIES], default="all", help="time only this policy")
    parser.add_argument("--compile", action="store_true", help="also time each policy with trainer.compile=true")
    parser.add_argument("--out", type=Path, default=Path("reports/policy") / f"{platform.node() or 'host'}.json")
    args = parser.parse_args(argv)

    rows: list[dict[str, object]] = []
    report = {
        "host": platform.node(),
        "cores": os.cpu_count(),
        "command": " ".join(sys.argv),
        "sweep": list(args.overrides),
        "rows": rows,
    }
    chosen = [policy for key, policy in POLICIES.items() if args.policy in ("all", key)]
    compiles = (False, True) if args.compile else (False,)
    for precision in args.precisions.split(","):
        for (name, launcher), compiled in itertools.product(chosen, compiles):
            label = f"{name}, compiled" if compiled else name
            extra = ["trainer.compile=true"] if compiled else []
            with tempfile.TemporaryDirectory() as tmp:
                print(f"{precision}, {label} ...", file=sys.stderr, flush=True)
                rows.append(
                    {
                        "precision": precision,
                        "policy": label,
                        **time_sweep([*args.overrides, *extra], launcher, precision, Path(tmp)),
                    }
                )
            write_json_atomic(args.out, report)  # after each sweep: a stopped run keeps what it measured
    fastest = min(rows, key=lambda r: r["wall_s"])
    for r in rows:
        print(
            f"{r['precision']:<11} {r['policy']:<38} {r['wall_s']:>7.1f} s  "
            f"({fastest['wall_s'] / r['wall_s']:.2f}x the fastest's speed)"
        )
    print(f"fastest: {fastest['precision']}, {fastest['policy']}; written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
