"""Publish a finished paper-table sweep: its table, plots and ablation report, with how it was measured.

    python -m resnext_lab.tools.publish residual --scale cpu [--sweep outputs/residual/cpu]
        [--reports reports/residual/cpu] [--out docs/results/cpu/residual] [--plan plan.txt]

`make <table> SCALE=...` writes the table into reports/<table>/<scale> and the ablation report into the
sweep's report/ folder; this copies both into `--out` and writes its README.md, with the notes of `--note` (kept in `notes.txt` for the next publish): the command, the
machine, the versions, the git commit, the measured wall time (first job's start to last job's end),
the plan's estimate when `--plan` names its output, and the regime check of every cell (did the loss
settle below chance, was the training error still falling in the last epoch). Beside them: every job's per-epoch
metrics in one csv (`epochs.csv`) and the pre-registration (`prereg.json`) when the experiment has one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from resnext_lab.errors import ConfigError
from resnext_lab.hardware import cpu_name
from resnext_lab.overrides import split_overrides
from resnext_lab.report.checks import PLATEAU_METRIC, PLATEAU_TOL, PLATEAU_WINDOW, regime
from resnext_lab.report.collect import load_curves, lookup
from resnext_lab.report.prereg_status import find as find_prereg
from resnext_lab.results import load_sweep

#: files of the table report (reports/<table>/<scale>) and of the ablation report (<sweep>/report) to copy
TABLE_FILES = ("table.md", "table.csv", "per_seed.csv", "contrasts.csv", "curves.png", "size.png", "bars.png")
ABLATION_FILES = ("report.md", "report.csv", "per_seed.csv")
#: the per-epoch columns a referee recounts plateaus from, first in epochs.csv (then any other the jobs logged)
EPOCH_COLUMNS = ("train/loss", "train/top1_err", "val/loss", "val/top1_err", "best/val/top1_err", "test/top1_err")


def epoch_rows(results: Sequence[Mapping[str, Any]]) -> Any:
    """Every job's per-epoch metrics (its csv/metrics.csv) as one frame: job, seed, status, epoch, metrics.

    The test set is evaluated once, after the last epoch: its values sit on the row after the last training epoch."""
    frames = []
    for res in sorted(results, key=_job_label):
        curves = load_curves(res)
        if curves.empty:
            continue
        curves = curves.reset_index()
        curves.insert(0, "status", res.get("status"))
        curves.insert(0, "seed", res.get("seed"))
        curves.insert(0, "job", _job_label(res))
        frames.append(curves)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["job", "seed", "status", "epoch"])
    first = ["job", "seed", "status", "epoch", *(c for c in EPOCH_COLUMNS if c in frame.columns)]
    return frame[first + sorted(c for c in frame.columns if c not in first)]


def _time(text: Any) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None


def wall_span(results: Sequence[Mapping[str, Any]]) -> tuple[float | None, float]:
    """(seconds from the first job's start to the last job's end, sum of the jobs' wall times)."""
    spans = []
    total = 0.0
    for res in results:
        start, secs = _time(res.get("started")), res.get("wall_time_s")
        if start is None or not isinstance(secs, int | float):
            continue
        spans.append((start, start + dt.timedelta(seconds=float(secs))))
        total += float(secs)
    if not spans:
        return None, total
    return (max(end for _, end in spans) - min(start for start, _ in spans)).total_seconds(), total


def _job_label(result: Mapping[str, Any]) -> str:
    """The job's own overrides, without those every job of a table shares (experiment, scale, out_root...)."""

    swept, fixed = split_overrides([str(o) for o in result.get("overrides") or []])
    return " ".join(swept + fixed) or str(result.get("_dir"))


def regime_lines(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """A markdown table of every completed job's regime check, and a one-line summary."""
    done = [r for r in results if r.get("status") == "completed"]
    rows, settled, falling, rough, plateaued = [], 0, 0, 0, 0
    for res in sorted(done, key=_job_label):
        check = regime(res, int(lookup(res, "model.num_classes") or 10))
        settled += bool(check.get("settled"))
        falling += bool(check.get("falling"))
        rough += bool(check.get("rough_start"))
        plateaued += bool(check.get("plateau"))
        fmt = lambda v, p=3: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
        rows.append(
            f"| {_job_label(res)} | {check['epochs']} | {fmt(check['first_loss'])} → {fmt(check['last_loss'])} | "
            f"{fmt(check['last_err'], 2)} | {'yes' if check.get('settled') else 'no'} | "
            f"{'yes' if check.get('falling') else 'no'} | {'yes' if check.get('rough_start') else 'no'} | "
            f"{ {True: 'yes', False: 'no', None: 'n/a'}[check.get('plateau')] } |"
        )
    head = [
        f"Loss settled (last epoch's training loss below ln(classes) and below the first epoch's): "
        f"{settled} of {len(done)} jobs. Training error still falling in the last epoch: {falling} of {len(done)}. "
        f"First epoch's mean training loss above chance (the loss rose before it fell): {rough} of {len(done)}. "
        f"At a plateau (the best `{PLATEAU_METRIC}` of the last {PLATEAU_WINDOW} epochs less than {PLATEAU_TOL:g} "
        f"points below the best before them): {plateaued} of {len(done)}.",
        "",
        "| job | epochs | train loss, first → last epoch | last train error (%) | settled | still falling | "
        "first epoch above chance | plateau |",
        "|---|---:|---|---:|---|---|---|---|",
    ]
    return head + rows


def regime_settings(results: Sequence[Mapping[str, Any]]) -> str | None:
    """The training regime of the sweep, from the first job's composed config (`.hydra/config.yaml`)."""
    from omegaconf import OmegaConf

    for res in results:
        path = Path(str(res.get("_dir"))) / ".hydra" / "config.yaml"
        if not path.is_file():
            continue
        cfg = OmegaConf.load(path)
        data, optim, trainer = cfg.data, cfg.optim, cfg.trainer
        images, batch, epochs = data.limit_train, int(data.batch_size), int(trainer.max_epochs)
        steps = f"{images // batch * epochs} steps" if images else "all steps"
        warmup = float(optim.warmup_epochs)
        warmup_text = f", warm-up {warmup:g} epoch(s) from lr x {optim.warmup_start:g}" if warmup else ""
        init = (
            f"init {lookup(res, 'model.init') or 'official'}, "
            f"zero_init_last_bn {str(bool(lookup(res, 'model.zero_init_last_bn'))).lower()}; "
        )
        return (
            f"{images or 'all'} training images x {epochs} epochs at batch {batch} ({steps}); {init}"
            f"SGD lr {optim.lr:g}, momentum {optim.momentum:g}{' Nesterov' if optim.nesterov else ''}, "
            f"weight decay {optim.weight_decay:g}, {optim.schedule} schedule{warmup_text}; "
            f"{data.val_size} images held out for validation, test on {data.limit_eval or 'all'} images."
        )
    return None


def _first(results: Sequence[Mapping[str, Any]], key: str) -> Any:
    return next((lookup(r, key) for r in results if lookup(r, key) is not None), None)


def readme(
    experiment: str,
    scale: str,
    results: Sequence[Mapping[str, Any]],
    table_md: str,
    plan_text: str | None,
    notes: Sequence[str] = (),
    command: str | None = None,
) -> str:
    span, total = wall_span(results)
    statuses: dict[str, int] = {}
    for res in results:
        statuses[str(res.get("status"))] = statuses.get(str(res.get("status")), 0) + 1
    commits = sorted({str(r.get("git_commit")) for r in results if r.get("git_commit")})
    versions = _first(results, "versions") or {}
    started = min((s for s in (_time(r.get("started")) for r in results) if s), default=None)
    precision = _first(results, "precision.used")
    planned = re.search(r"estimate: ([0-9.]+ (?:s|min|h))", plan_text or "")
    lines = [
        f"# {experiment} at the `{scale}` scale: measured",
        "",
        f"- **Command:** `{command or f'make {experiment} SCALE={scale}'}` (resumable; `make {experiment} "
        f"SCALE={scale} ARGS=task=plan` prints the plan).",
        f"- **Machine:** {cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}; precision {precision or 'n/a'}.",
        "- **Versions:** " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        f"- **Git commit:** {', '.join(c[:10] for c in commits) or 'unknown'}"
        + (" (the jobs ran at more than one commit)" if len(commits) > 1 else "")
        + ".",
        f"- **Started:** {started.isoformat(timespec='minutes') if started else 'unknown'}; "
        f"jobs: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) + ".",
        f"- **Wall time:** {span / 60:.1f} min from the first job's start to the last job's end"
        if span is not None
        else "- **Wall time:** unknown",
    ]
    lines[-1] += f" ({total / 60:.1f} min of job time)" + (
        f"; the plan estimated {planned.group(1)} (plan.txt)." if planned else "."
    )
    settings = regime_settings(results)
    if settings:
        lines.append(f"- **Regime:** {settings}")
    lines += [f"- **Note:** {note}" for note in notes]
    lines += ["", table_md.strip(), "", "## Regime of every job", "", *regime_lines(results), ""]
    lines += [
        "## Files",
        "",
        "- `table.md`, `table.csv`: the table beside the paper's numbers; `per_seed.csv`: every seed's value; "
        "`contrasts.csv`: the declared contrasts with raw and Holm-adjusted p; plots beside them.",
        "- `ablation/`: the sweep's own ablation report (every group, Δ with 95% CI, verdicts, seeds needed).",
        "- `epochs.csv`: every job's per-epoch training loss and error, validation error and loss (the test error once, "
        "after the last epoch), to recount the plateau check; `prereg.json`: the pre-registration, when there is one.",
        "",
    ]
    return "\n".join(lines)


def publish(
    experiment: str,
    scale: str,
    sweep: Path,
    reports: Path,
    out: Path,
    plan: Path | None = None,
    notes: Sequence[str] = (),
    command: str | None = None,
) -> list[Path]:
    """Copy the table and ablation reports into `out` and write its README.md; the files written."""
    table = reports / "table.md"
    if not table.is_file():
        raise ConfigError(f"{table} does not exist: run `make {experiment} SCALE={scale}` first")
    results = load_sweep(sweep)
    if not results:
        raise ConfigError(f"{sweep}: no results.json below it")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLE_FILES:
        if (reports / name).is_file():
            written.append(Path(shutil.copy2(reports / name, out / name)))
    ablation = sweep / "report"
    if ablation.is_dir():
        (out / "ablation").mkdir(exist_ok=True)
        for path in sorted(ablation.iterdir()):
            if path.name in ABLATION_FILES or path.suffix == ".png":
                written.append(Path(shutil.copy2(path, out / "ablation" / path.name)))
    notes_file = out / "notes.txt"  # kept across publishes: what a reader must know that the numbers do not say
    kept = notes_file.read_text(encoding="utf-8").splitlines() if notes_file.is_file() else []
    notes = list(dict.fromkeys([*(n for n in kept if n.strip()), *notes]))
    if notes:
        notes_file.write_text("\n".join(notes) + "\n", encoding="utf-8")
        written.append(notes_file)
    epochs = out / "epochs.csv"  # every job's curves, so that a referee can recount plateaus
    epochs.write_text(epoch_rows(results).to_csv(index=False), encoding="utf-8")
    written.append(epochs)
    prereg = find_prereg(results)
    if prereg is not None:
        written.append(Path(shutil.copy2(prereg, out / "prereg.json")))
    plan_text = None
    if plan is not None and plan.is_file():
        plan_text = plan.read_text(encoding="utf-8")
        if plan.resolve() != (out / "plan.txt").resolve():
            written.append(Path(shutil.copy2(plan, out / "plan.txt")))
    text = readme(experiment, scale, results, table.read_text(encoding="utf-8"), plan_text, notes, command)
    (out / "README.md").write_text(text, encoding="utf-8")
    return [out / "README.md", *written]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnext_lab.tools.publish", description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--scale", default="cpu")
    parser.add_argument("--sweep", type=Path, help="default outputs/EXPERIMENT/SCALE")
    parser.add_argument("--reports", type=Path, help="default reports/EXPERIMENT/SCALE")
    parser.add_argument("--out", type=Path, help="default docs/results/SCALE/EXPERIMENT")
    parser.add_argument("--plan", type=Path, help="the saved output of the sweep's task=plan")
    parser.add_argument("--command", help="the command that ran it (default: make EXPERIMENT SCALE=SCALE)")
    parser.add_argument("--note", action="append", default=[], help="a line for the README (repeatable)")
    args = parser.parse_args(argv)
    sweep = args.sweep or Path("outputs") / args.experiment / args.scale
    reports = args.reports or Path("reports") / args.experiment / args.scale
    out = args.out or Path("docs/results") / args.scale / args.experiment
    try:
        written = publish(args.experiment, args.scale, sweep, reports, out, args.plan, args.note, args.command)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
