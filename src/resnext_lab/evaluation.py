"""eval.json: a run's checkpoint scored again (task=eval), kept beside its results.json.

results.json says what a run measured when it trained; eval.json holds every later scoring of its checkpoint,
one entry per metric prefix (`eval/test`, `eval/val`, `eval/cifar10/test`, ...), each with the checkpoint,
the data, the precision and the commit it was scored with. Readers merge its metrics into the run's
(`with_evaluations`), so a report or a comparison can take `eval/test/top1_err` as its metric. Light to
import (no torch): the sweep's callbacks and the reports use it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

from resnext_lab.files import write_json_atomic
from resnext_lab.overrides import hydra_quote

FILE = "eval.json"
LOCK = ".eval.json.lock"
RESULTS = "results.json"
CHECKPOINT = "checkpoints/last.ckpt"


def load(run_dir: str | Path) -> dict[str, Any]:
    """The run's eval.json as {prefix: entry}; empty when there is none or it cannot be read."""
    try:
        data = json.loads((Path(run_dir) / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    evaluations = data.get("evaluations") if isinstance(data, dict) else None
    return dict(evaluations) if isinstance(evaluations, dict) else {}


def record(run_dir: str | Path, prefix: str, entry: Mapping[str, Any]) -> Path:
    """Add (or replace) the scoring under `prefix` in the run's eval.json, written atomically; scorings of one run
    that end at once (a packed sweep over its splits) take turns, so that none is lost."""
    with FileLock(Path(run_dir) / LOCK):
        evaluations = {**load(run_dir), prefix: dict(entry)}
        metrics = {k: v for e in evaluations.values() for k, v in (e.get("metrics") or {}).items()}
        return write_json_atomic(Path(run_dir) / FILE, {"metrics": metrics, "evaluations": evaluations})


def with_evaluations(result: Mapping[str, Any]) -> dict[str, Any]:
    """A result read back (with `_dir`) whose metrics also hold its eval.json's (`eval/...`): what the reports read."""
    run_dir = result.get("_dir")
    extra = {k: v for e in load(run_dir).values() for k, v in (e.get("metrics") or {}).items()} if run_dir else {}
    if not extra:
        return dict(result)
    metrics = result.get("metrics") if isinstance(result.get("metrics"), Mapping) else {}
    return {**result, "metrics": {**metrics, **extra}}


def run_folders(folder: str | Path) -> list[Path]:
    """The run folders with a last checkpoint at any depth below `folder` (a sweep's jobs), sorted."""
    return sorted(p.parent.parent for p in Path(folder).rglob(CHECKPOINT) if (p.parent.parent / RESULTS).is_file())


def expand_sweep(overrides: list[str]) -> list[str] | None:
    """`ckpt_path=SWEEP_DIR` (a folder of runs, not a run itself) as one quoted `ckpt_path=RUN1,RUN2,...` sweep
    over its runs; None when the overrides name no such folder (a checkpoint, a run, or a list already)."""
    for i, text in enumerate(overrides):
        key, _, value = text.partition("=")
        if key != "ckpt_path" or not value or "," in value or value.startswith(("'", '"')):
            continue
        folder = Path(value).expanduser()
        if not folder.is_dir() or (folder / RESULTS).is_file():
            return None
        runs = run_folders(folder)
        if not runs:
            return None
        return [*overrides[:i], "ckpt_path=" + ",".join(hydra_quote(str(r)) for r in runs), *overrides[i + 1 :]]
    return None
