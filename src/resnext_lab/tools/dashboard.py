"""A W&B Report for one experiment's sweep: `python -m resnext_lab.tools.dashboard EXP [--scale S]`.

The report shows the runs of the sweep's W&B group (`<experiment>/<scale>`, the
sweep folder's name under `out_root`): validation error per epoch grouped by the
swept field, the final test error as bars, and a parallel-coordinates panel of
the design point (C, d, depth, residual, params, FLOPs) against test error.
Building it needs neither network nor credentials (`build_report`); saving it
needs both, and without them the command says how to upload the offline runs.

`compose_experiment` is also how `python -m resnext_lab.report ... --scale S`
reads a table as the experiment composes at that scale (its depths and widths).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from resnext_lab.errors import ConfigError, first_line
from resnext_lab.job import compose_experiment, scales
from resnext_lab.tracking import has_credentials

#: Parallel-coordinates axes: W&B summary keys written by every training run, then the error.
DESIGN_AXES = (
    ("model/cardinality", "C"),
    ("model/width", "d"),
    ("model/depth", "depth"),
    ("model/residual", "residual"),
    ("model/params", "params"),
    ("model/flops", "FLOPs"),
)
ERROR = "test/top1_err"


def swept_fields(cfg: DictConfig) -> list[str]:
    """The config keys the sweep varies, seeds left out (e.g. model.depth, model.cardinality)."""
    params = cfg.hydra.sweeper.get("params") or {}
    return [str(key) for key in params if key != "seed"]


def group_name(cfg: DictConfig) -> str:
    """The sweep's W&B group: its folder below out_root, `<experiment>/<scale>`."""
    return f"{cfg.experiment_name}/{cfg.scale_name}"


def build_report(cfg: DictConfig, entity: str, project: str | None = None) -> Any:
    """The W&B Report object of a composed experiment; nothing is sent anywhere."""
    import wandb_workspaces.reports.v2 as wr

    project = project or str(cfg.logger.wandb.project)
    group = group_name(cfg)
    swept = swept_fields(cfg)
    runs = wr.Runset(entity=entity, project=project, name=group, filters=f"Group = '{group}'")
    by = wr.Config(swept[0]) if swept else None
    title = str((cfg.get("report") or {}).get("title") or cfg.experiment_name)

    def curve(title: str, key: str, x: int) -> Any:
        """Per-epoch error of one metric, runs grouped by the swept field: mean and its standard error."""
        return wr.LinePlot(
            title=title,
            x="epoch",
            y=[key],
            groupby=by,
            groupby_aggfunc="mean",
            groupby_rangefunc="stderr",
            layout=wr.Layout(x=x, y=0, w=12, h=8),
        )

    panels = [
        curve("validation top-1 error (%) per epoch", "val/top1_err", 0),
        curve("training top-1 error (%) per epoch", "train/top1_err", 12),
        wr.BarPlot(
            title="final test top-1 error (%)",
            metrics=[wr.SummaryMetric(ERROR)],
            groupby=by,
            groupby_aggfunc="mean",
            groupby_rangefunc="stderr",
            layout=wr.Layout(x=0, y=8, w=12, h=8),
        ),
        wr.ParallelCoordinatesPlot(
            title="design point vs test error",
            columns=[
                *(
                    wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(key), display_name=label)
                    for key, label in DESIGN_AXES
                ),
                wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(ERROR), display_name="test top-1 err %"),
            ],
            layout=wr.Layout(x=12, y=8, w=12, h=8),
        ),
    ]
    swept_text = ", ".join(swept) or "nothing"
    return wr.Report(
        entity=entity,
        project=project,
        title=f"{title} ({cfg.scale_name})"[:128],
        description=f"W&B group {group}: runs of `python run.py -m experiment={cfg.experiment_name} "
        f"scale={cfg.scale_name}`, grouped by {swept_text}.",
        blocks=[
            wr.H1(text=title),
            wr.P(text=f"Sweep over {swept_text}; lines and bars are means over seeds with standard errors."),
            wr.PanelGrid(runsets=[runs], panels=panels),
        ],
    )


def offline_hint(cfg: DictConfig) -> str:
    sweep = Path(str(cfg.out_root)) / group_name(cfg)
    return (
        f"W&B is offline here (no credentials, no network or WANDB_MODE=offline): upload the runs of "
        f"{group_name(cfg)} with "
        f"`wandb login` and `wandb sync {sweep}/*/wandb/offline-run-*`, then run this again"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Build and save the report; 0 with its URL, 1 when W&B cannot be reached, 2 on a config error."""
    parser = argparse.ArgumentParser(
        prog="python -m resnext_lab.tools.dashboard",
        description="Build the W&B Report of an experiment's sweep (group <experiment>/<scale>).",
    )
    parser.add_argument("experiment", help="experiment name, e.g. table3")
    parser.add_argument("--scale", default="proxy", choices=scales(), help="the sweep's scale (default: proxy)")
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY"), help="W&B entity (default: yours)")
    parser.add_argument("--project", default=None, help="W&B project (default: logger.wandb.project)")
    args = parser.parse_args(argv)
    try:
        cfg = compose_experiment(args.experiment, args.scale)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not has_credentials() or os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        print(f"error: {offline_hint(cfg)}", file=sys.stderr)
        return 1
    try:
        import wandb

        entity = args.entity or cfg.logger.wandb.get("entity") or wandb.Api().default_entity
        report = build_report(cfg, entity=str(entity), project=args.project)
        report.save()
    except ImportError:
        print("error: the dashboard needs wandb-workspaces: pip install wandb-workspaces", file=sys.stderr)
        return 1
    except Exception as exc:  # network, permissions, server: one line, not a traceback
        print(
            f"error: {type(exc).__name__}: {first_line(exc)}; {offline_hint(cfg)}",
            file=sys.stderr,
        )
        return 1
    print(report.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
