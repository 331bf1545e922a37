"""results.json: the one record of a run, and the only module that reads or writes it.

The training task writes it when the job starts (`running`) and again when it ends (`completed`,
`failed`, `diverged` or `interrupted`), atomically, so a reader never sees half a file. The sweep's
closing table, the packed launcher (for a job whose process died) and the reports read it back
through `load` and `load_sweep`. The fields are those of `RunResult`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypedDict

from resnext_lab.errors import first_line
from resnext_lab.files import write_json_atomic

FILE = "results.json"
STATUSES = ("running", "completed", "failed", "diverged", "interrupted")
#: What a results.json that cannot be parsed is reported as: the sweep shows it, never drops it.
UNREADABLE = "unreadable"
PACKAGES = ("torch", "torchvision", "pytorch-lightning", "torchmetrics", "hydra-core", "wandb", "resnext-lab")


class RunResult(TypedDict, total=False):
    """The fields of results.json (README "Runs and their files")."""

    status: str  # one of STATUSES
    error: str | None  # the error's first line; the traceback is in error.txt
    overrides: list[str]  # the job's Hydra overrides
    experiment: str | None
    scale: str | None
    seed: int
    stacked: dict[str, Any] | None  # {seeds, size}: trained as one stacked network with these seeds; None: alone
    task: str
    model: dict[str, Any]  # the spec, params, flops and, for width=auto, the reference it matched
    metrics: dict[str, float]  # train/val/test errors and losses, best/val/top1_err
    epochs: int
    resumed: bool
    precision: dict[str, str]  # used, why
    metrics_csv: str | None
    wandb: dict[str, Any]  # id, mode, project, dir
    versions: dict[str, str]
    git_commit: str | None
    git_dirty: bool | None  # the tree differed from the commit (None: not known, e.g. outside a git checkout)
    git_diff_hash: str | None  # its diff's hash: <sweep>/provenance/<hash>.diff (provenance.py)
    prereg: dict[str, Any] | None  # the pre-registration checked against: file, settings_hash, role (prereg.py)
    placement: dict[str, Any]  # host, cuda_visible_devices, omp_num_threads
    started: str
    wall_time_s: float


def write(run_dir: Path, result: RunResult | dict[str, Any]) -> Path:
    return write_json_atomic(Path(run_dir) / FILE, result)


def load(run_dir: Path) -> dict[str, Any] | None:
    """The run's results.json, or None when there is none or it cannot be read."""
    try:
        data = json.loads((Path(run_dir) / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def load_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every results.json at any depth below `sweep_dir`, sorted by path, each with `_dir` (its folder).

    A file that cannot be parsed, is not a JSON object or has no status comes back as status
    "unreadable" with the reason as its error.
    """
    out = []
    for path in sorted(Path(sweep_dir).rglob(FILE)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            out.append({"status": UNREADABLE, "error": f"{type(exc).__name__}: {first_line(exc)}", "_dir": path.parent})
            continue
        if not isinstance(data, dict):
            out.append(
                {"status": UNREADABLE, "error": f"not a JSON object ({type(data).__name__})", "_dir": path.parent}
            )
        elif not isinstance(data.get("status"), str):
            out.append({**data, "status": UNREADABLE, "error": "no status field", "_dir": path.parent})
        else:
            out.append({**data, "_dir": path.parent})
    return out


def record_lost_job(sweep_dir: Path, overrides: Sequence[str], error: str) -> Path | None:
    """Mark the sweep's job with these overrides failed when its process died without saying so; its folder.

    A job killed from outside (out of memory, a signal) leaves results.json at "running"; a launcher
    that saw the process die records why, so that the sweep's table reports it. None if no such job.
    """
    for result in load_sweep(sweep_dir):
        if result.get("status") == "running" and result.get("overrides") == list(overrides):
            run_dir = result.pop("_dir")
            write(run_dir, {**result, "status": "failed", "error": error})
            return run_dir
    return None


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def placement() -> dict[str, Any]:
    """Where the job ran: the host, the GPUs it was given and its thread count as the environment set them."""
    return {
        "host": platform.node(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None
