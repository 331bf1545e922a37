"""logger=tensorboard: a real run's event files load in TensorBoard's own reader, with the metric names and final
values of csv/metrics.csv and results.json."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import tiny


def test_a_run_with_logger_tensorboard_writes_event_files_tensorboard_reads(run_cli, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    done = run_cli(*tiny("trainer.max_epochs=2"), "logger=tensorboard", f"hydra.run.dir={run}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (run / "wandb").exists()  # logger=tensorboard: csv and TensorBoard, no W&B run
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    with (run / "csv" / "metrics.csv").open() as handle:
        columns = set(next(csv.reader(handle))) - {"step"}
    assert tags == columns  # the same names as the CSV log (and W&B)
    metrics = json.loads((run / "results.json").read_text())["metrics"]
    for name in ("train/loss", "val/top1_err", "best/val/top1_err", "test/top1_err", "test/top5_err"):
        assert events.Scalars(name)[-1].value == pytest.approx(metrics[name], rel=1e-6)
    assert len(events.Scalars("val/top1_err")) == 2  # one point per epoch
