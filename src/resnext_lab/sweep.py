"""Hydra's side of a sweep: the output folder checked and pinned before jobs start, the closing table after.

Kept free of torch and Lightning: Hydra loads these callbacks for every command, `task=complexity` included.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, open_dict, read_write

from resnext_lab.errors import fail

#: Overrides that do not change what a job computes: left out of job folder names and of the check that a
#: rerun finds the same job in its folder.
RUN_INVARIANT = frozenset({
    "name", "out_root", "resume", "experiment", "scale", "trainer.accelerator",
    "trainer.enable_progress_bar", "trainer.progress_bar_interval_s", "logger.wandb.mode",
})


def split_overrides(overrides: Sequence[str]) -> tuple[list[str], list[str]]:
    """Command-line overrides as (swept, fixed); fixed leaves out run-invariant and hydra.* settings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept, fixed = [], []
    for text, parsed in zip(overrides, OverridesParser.create().parse_overrides(list(overrides)), strict=True):
        key = parsed.key_or_group
        if key in RUN_INVARIANT or key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        (swept if parsed.is_sweep_override() else fixed).append(text)
    return swept, fixed


def comparable(overrides: Sequence[str]) -> list[str]:
    """A job's overrides as they decide what it computes (for the rerun check)."""
    swept, fixed = split_overrides(overrides)
    return sorted(swept + fixed)


COLUMNS = ("job", "C", "d", "depth", "params", "GFLOPs", "test top-1 err %", "epochs", "status")


def _row(run_dir: Path, sweep_dir: Path, result: dict[str, Any]) -> tuple[str, ...]:
    m, model = result.get("metrics") or {}, result.get("model") or {}
    err = m.get("test/top1_err")
    return (
        str(run_dir.relative_to(sweep_dir)),
        str(model.get("cardinality", "?")),
        str(model.get("width", "?")),
        str(model.get("depth", "?")),
        f"{model['params']:,}" if "params" in model else "?",
        f"{model['flops'] / 1e9:.3f}" if "flops" in model else "?",
        f"{err:.2f}" if isinstance(err, int | float) else "-",
        str(result.get("epochs", "-")),
        str(result.get("status", "?")),
    )


def summarize_sweep(sweep_dir: Path) -> list[str]:
    """Print the sweep's table; return the job folders that did not complete."""
    rows, bad = [], []
    for path in sorted(sweep_dir.rglob("results.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            result = {"status": "unreadable"}
        rows.append(_row(path.parent, sweep_dir, result))
        if result.get("status") != "completed":
            bad.append(f"{path.parent.relative_to(sweep_dir)}: {result.get('status')}: {result.get('error') or ''}")
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(COLUMNS)]
    lines = [f"sweep {sweep_dir} ({len(rows)} jobs)", "  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    if bad:
        lines.append(f"{len(bad)} job(s) did not complete:")
        lines += [f"  {b}" for b in bad]
    print("\n".join(lines), flush=True)
    return bad


def unwritable(folder: Path) -> str | None:
    """Why `folder` cannot be created and written, else None: the nearest existing ancestor decides."""
    path = folder.absolute()
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                return f"{existing} is not a folder"
            if not os.access(existing, os.W_OK | os.X_OK):
                return f"{existing} is not writable"
            return None
    return None


def hydra_quote(value: str) -> str:
    """`value` as a quoted override value: Hydra reads backslashes literally except before a quote."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return f"'{escaped}'"


class OutputFolder(HydraCallback):
    """Checks the run or sweep folder before Hydra creates it, and pins a sweep's folder for its jobs.

    Hydra creates the folder before any job code runs, so an unwritable `out_root`
    would otherwise end in a traceback. The sweep folder is named after the swept
    overrides (`hydra.overrides.task` of the whole sweep); each job's config is composed
    again from that job's own overrides and would name a different folder, so the
    resolved name is passed to every job as a `hydra.sweep.dir` override.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config, str(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = str(config.hydra.sweep.dir)
        self._check(config, sweep_dir)
        # job folders are named by what varies inside the sweep; what all jobs share names the sweep folder
        _, fixed = split_overrides(list(config.hydra.overrides.task))
        exclude = sorted(RUN_INVARIANT | {o.split("=", 1)[0].lstrip("+~") for o in fixed})
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.overrides.hydra.append(f"hydra.sweep.dir={hydra_quote(sweep_dir)}")
            config.hydra.overrides.hydra.append(
                f"hydra.job.config.override_dirname.exclude_keys=[{','.join(hydra_quote(k) for k in exclude)}]"
            )

    @staticmethod
    def _check(config: DictConfig, folder: str) -> None:
        if config.get("experiment_name") and not config.get("scale_name"):
            fail(f"scale={config.hydra.runtime.choices.get('scale')!r}: experiment={config.experiment_name} "
                 "needs scale=smoke, proxy or paper")
        reason = unwritable(Path(folder))
        if reason:
            fail(f"out_root={config.get('out_root')!r}: cannot write the output folder {folder}: {reason}")


class SweepSummary(HydraCallback):
    """At the end of a training multirun: one table of every job in the sweep folder, failures last.

    Exits with status 1 when any job failed or diverged, after the table is printed.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("task") != "train":
            return
        if summarize_sweep(Path(config.hydra.sweep.dir)):
            raise SystemExit(1)
