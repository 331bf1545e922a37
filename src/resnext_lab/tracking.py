"""Weights & Biases: whether runs go online, each job's run, and the report run that carries a sweep's answer;
and each job's TensorBoard logger (`logger.tensorboard`), the offline viewer beside W&B's `wandb beta leet`.

Every training job logs its own run (`wandb_logger`, a Lightning WandbLogger), in its sweep's group. At the end of a sweep one more run,
`job_type=report` in the sweep's group, holds the ablation report as a `wandb.Table` and its plots as
images, so the group's dashboard shows the answer beside the jobs; offline it waits for `wandb sync`.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resnext_lab.hardware import process_rank


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


def wandb_group(config: Any, sweep_dir: Any) -> str:
    """The W&B group of a sweep's runs: `logger.wandb.group`, else the sweep folder under out_root ("runs" alone)."""
    if config.logger.wandb.get("group"):
        return str(config.logger.wandb.group)
    if sweep_dir is None:
        return "runs"
    return Path(str(sweep_dir)).as_posix().split(f"{config.out_root}/", 1)[-1]


def wandb_logger(
    config: dict[str, Any], run_dir: Path, w: Any, group: str, name: str | None, own_run: bool = False
) -> tuple[Any, dict[str, Any]]:
    """The run's WandbLogger (resuming the run id kept in `wandb_id`) and what results.json says of it.

    `w`: the `logger.wandb` settings; `config`: the whole resolved config, which the run records.
    `own_run`: the run is started now, beside any other run of this process (the seeds of a stack each log
    their own run at once); WandbLogger alone would log into the run already open."""
    from pytorch_lightning.loggers import WandbLogger  # Lightning: only where a job trains

    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
    if process_rank() == 0:  # WandbLogger starts no run on other ranks; their id would clobber this one
        id_file.write_text(run_id)
    mode = wandb_mode(w.mode)
    init = {
        "project": w.project,
        "entity": w.entity,
        "group": group,
        "name": name,
        "tags": list(w.tags),
        "job_type": w.job_type,
        "id": run_id,
        "resume": "allow",
        "mode": mode,
        "config": config,
    }
    experiment = None
    if own_run and process_rank() == 0:
        import wandb

        experiment = wandb.init(dir=str(run_dir), reinit="create_new", **init)
        # the x-axis WandbLogger defines for the runs it starts itself
        experiment.define_metric("trainer/global_step")
        experiment.define_metric("*", step_metric="trainer/global_step", step_sync=True)
    logger = WandbLogger(save_dir=str(run_dir), experiment=experiment, **init)
    return logger, {"id": run_id, "mode": mode, "project": w.project}


def tensorboard_logger(run_dir: Path) -> Any:
    """TensorBoard's event files in `run_dir`/tensorboard, under the metric names of csv/metrics.csv and W&B; a
    resumed run adds its events to the same folder. `make board OUT=...` serves every run below OUT."""
    from pytorch_lightning.loggers import TensorBoardLogger  # Lightning: only where a job trains

    return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)


def finish_wandb(exit_code: int) -> None:
    """Close a W&B run left open by a failed job, or the next job of the sweep would log into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def log_report_run(
    report: Mapping[str, Any], images: Sequence[Path], out_dir: Path, wandb_cfg: Mapping[str, Any], group: str
) -> Path | None:
    """One `job_type=report` run in `group` with the ablation's table and plots; its run folder (None: disabled)."""
    import pandas as pd

    per_seed = pd.DataFrame(report.get("per_seed") or [], columns=["group", "seed", "metric", "value", "excluded"])
    config = {"swept": list(report["keys"]), "seeds": list(report["seeds"])}
    config.update({k: report.get(k) for k in ("baseline", "min_effect", "test", "exclude", "alpha")})
    return log_tables_run(
        {
            "ablation": pd.DataFrame(report["rows"]).drop(columns="_outcome", errors="ignore"),
            "per_seed": per_seed.astype({"seed": str}),
        },
        images,
        out_dir,
        wandb_cfg,
        group,
        config=config,
        summary={
            "warnings": list(report["warnings"]),
            "verdicts": {_label(r, report["keys"]): r["verdict"] for r in report["rows"]},
        },
    )


def log_tables_run(
    tables: Mapping[str, Any],
    images: Sequence[Path],
    out_dir: Path,
    wandb_cfg: Mapping[str, Any],
    group: str,
    *,
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
) -> Path | None:
    """One `job_type=report` run in `group`: each DataFrame of `tables` as a wandb.Table, each image under
    plots/, `summary` in its summary; its run folder (None: W&B disabled)."""
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
        config=dict(config),
        reinit="finish_previous",
        settings=wandb.Settings(silent=True),
    )
    logged: dict[str, Any] = {f"plots/{p.stem}": wandb.Image(str(p)) for p in images}
    for name, frame in tables.items():
        frame = frame.astype(object).where(lambda f: f.notna(), None)
        logged[name] = wandb.Table(
            columns=[str(c) for c in frame.columns],
            data=[[_cell(v) for v in row] for row in frame.itertuples(index=False)],
            allow_mixed_types=True,
        )  # mixed: "seeds needed" is "12 [5, 140]", ">1000" or empty
    run.log(logged)
    run.summary.update(dict(summary))
    folder = Path(run.dir).parent
    run.finish()
    return folder


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, int | float | str | bool) else str(value)


def _label(row: Mapping[str, Any], keys: Sequence[str]) -> str:
    return ",".join(f"{k}={row[k]}" for k in keys) or "all"
