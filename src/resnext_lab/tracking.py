"""Weights & Biases: whether runs go online, and the report run that carries a sweep's aggregated answer.

Every training job logs its own run (WandbLogger, in train.py). At the end of a sweep one more run,
`job_type=report` in the sweep's group, holds the ablation report as a `wandb.Table` and its plots as
images, so the group's dashboard shows the answer beside the jobs; offline it waits for `wandb sync`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc for api.wandb.ai (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def wandb_mode(setting: str = "auto") -> str:
    """`logger.wandb.mode`: WANDB_MODE wins; auto is online with credentials, else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if setting != "auto":
        return setting
    return "online" if has_credentials() else "offline"


def log_report_run(
    report: Mapping[str, Any], images: Sequence[Path], out_dir: Path, wandb_cfg: Mapping[str, Any], group: str
) -> Path | None:
    """One `job_type=report` run in `group` with the report's table and plots; its run folder (None: disabled)."""
    import pandas as pd
    import wandb

    mode = wandb_mode(str(wandb_cfg.get("mode", "auto")))
    if mode == "disabled" or not wandb_cfg.get("enabled", True):
        return None
    run = wandb.init(
        project=wandb_cfg.get("project"),
        entity=wandb_cfg.get("entity"),
        group=group,
        job_type="report",
        name=f"report: {group}",
        dir=str(out_dir),
        mode=mode,
        config={
            "swept": list(report["keys"]),
            "seeds": list(report["seeds"]),
            "baseline": report.get("baseline"),
            "min_effect": report.get("min_effect"),
            "test": report.get("test"),
            "exclude": report.get("exclude"),
            "alpha": report.get("alpha"),
        },
        reinit="finish_previous",
        settings=wandb.Settings(silent=True),
    )
    frame = pd.DataFrame(report["rows"]).drop(columns="_outcome", errors="ignore")
    frame = frame.astype(object).where(lambda f: f.notna(), None)
    table = wandb.Table(
        columns=[str(c) for c in frame.columns],
        data=[[_cell(v) for v in row] for row in frame.itertuples(index=False)],
        allow_mixed_types=True,
    )  # "seeds needed" is "12 [5, 140]", ">1000" or empty
    per_seed = pd.DataFrame(report.get("per_seed") or [], columns=["group", "seed", "metric", "value", "excluded"])
    run.log(
        {
            "ablation": table,
            "per_seed": wandb.Table(dataframe=per_seed.astype({"seed": str})),
            **{f"plots/{p.stem}": wandb.Image(str(p)) for p in images},
        }
    )
    run.summary.update(
        {
            "warnings": list(report["warnings"]),
            "verdicts": {_label(r, report["keys"]): r["verdict"] for r in report["rows"]},
        }
    )
    folder = Path(run.dir).parent
    run.finish()
    return folder


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, int | float | str | bool) else str(value)


def _label(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    return ",".join(f"{k}={row[k]}" for k in keys) or "all"
