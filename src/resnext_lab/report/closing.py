"""The end of a training sweep: one table of every job, then its report (the ablation, or a design-space sweep's
EDFs), written and logged to W&B."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd

from resnext_lab.config import to_python
from resnext_lab.design_space import is_design_sweep
from resnext_lab.errors import ConfigError, fail, first_line
from resnext_lab.files import output_fault
from resnext_lab.overrides import job_order
from resnext_lab.render import terminal
from resnext_lab.report.ablation import write_ablation
from resnext_lab.report.ablation_text import to_terminal
from resnext_lab.report.design_space import to_terminal as design_space_terminal
from resnext_lab.report.design_space import write_design_space_report
from resnext_lab.results import load_sweep
from resnext_lab.tracking import log_report_run, log_tables_run, wandb_group

SWEEP_COLUMNS = ("job", "C", "d", "depth", "params", "GFLOPs", "test top-1 err %", "epochs", "status")
NUMERIC = SWEEP_COLUMNS[1:-1]


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
    """Print the sweep's table, jobs in the order of their swept values; return the jobs that did not complete."""
    found = load_sweep(sweep_dir)
    jobs = [(found[i].pop("_dir"), found[i]) for i in job_order([r.get("overrides") or [] for r in found])]
    rows, bad = [], []
    for run_dir, result in jobs:
        rows.append(_row(run_dir, sweep_dir, result))
        if result.get("status") != "completed":
            bad.append(f"{run_dir.relative_to(sweep_dir)}: {result.get('status')}: {result.get('error') or ''}")
    lines = [terminal(SWEEP_COLUMNS, rows, title=f"sweep {sweep_dir} ({len(rows)} jobs)", right=NUMERIC)]
    if bad:
        lines.append(f"{len(bad)} job(s) did not complete:")
        lines += [f"  {b}" for b in bad]
    print("\n".join(lines), flush=True)
    return bad


def write_sweep_report(sweep_dir: Path, config: Any) -> None:
    """The ablation report of the sweep in `<sweep>/report/`, printed in short; a failure to write it is one line."""
    settings = config.get("report") or {}
    design = is_design_sweep(config)
    try:
        if design:
            report, written = write_design_space_report(
                sweep_dir, settings.get("design_space"), str(config.hydra.sweeper.band.quantity)
            )
        else:
            report, written = write_ablation(
                sweep_dir,
                None,
                settings.get("baseline"),
                settings.get("min_effect"),
                test=settings.get("test") or "difference",
                exclude=settings.get("exclude"),
                alpha=settings.get("alpha") or 0.05,
            )
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return
    except Exception as err:  # the sweep's jobs are done and recorded: a report bug must not hide that
        if fault := output_fault(err, sweep_dir):  # a full disk: one line, exit 2, as in a job
            fail(
                f"{fault[0]}: cannot write the report in {sweep_dir / 'report'}: {fault[1]}, then run the same "
                "command again (the jobs are done and kept)"
            )
        print(f"warning: the sweep's report failed: {type(err).__name__}: {first_line(err)}", file=sys.stderr)
        return
    if design:
        _log_design_space(report, written, config, sweep_dir)
        return
    try:
        run = log_report_run(
            report,
            [p for p in written if p.suffix == ".png"],
            written[0].parent,
            config.logger.wandb,
            wandb_group(config, sweep_dir),
        )
    except Exception as err:  # W&B unreachable or misconfigured: the files are the report
        run = None
        print(f"warning: the W&B report run failed: {type(err).__name__}: {first_line(err)}", file=sys.stderr)
    print(to_terminal(report), flush=True)
    print(f"report: {written[0]} (and report.csv, plots)" + (f"; W&B report run: {run}" if run else ""), flush=True)


def _log_design_space(result: dict[str, Any], written: list[Path], config: Any, sweep_dir: Path) -> None:
    """The design-space report's tables and plots as the sweep's W&B report run, then its short form."""
    summary = {"ks_D": result["ks"]["D"], "ks_p": result["ks"]["p"], "verdict": result["verdict"], **result["counts"]}
    try:
        run = log_tables_run(
            {
                "networks": result["frame"],
                "edf": result["curves"],
                "quantiles": pd.DataFrame(result["quantiles"]),
            },
            [p for p in written if p.suffix == ".png"],
            written[0].parent,
            config.logger.wandb,
            wandb_group(config, sweep_dir),
            config={"spaces": result["spaces"], "band": to_python(config.hydra.sweeper.band)},
            summary=summary,
        )
    except Exception as err:  # W&B unreachable or misconfigured: the files are the report
        run = None
        print(f"warning: the W&B report run failed: {type(err).__name__}: {first_line(err)}", file=sys.stderr)
    print(design_space_terminal(result), flush=True)
    print(f"report: {written[0]} (and csv, plots)" + (f"; W&B report run: {run}" if run else ""), flush=True)
