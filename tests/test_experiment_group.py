"""The top-level experiments/ as Hydra's config group `experiment`: no symlinks, any working directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.object_type import ObjectType

from hydra_plugins.resnext_lab.experiments import CHECKOUT_EXPERIMENTS, ExperimentsConfigSource
from resnext_lab.job import compose

ROOT = Path(__file__).resolve().parents[1]


def run_py(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_conf_and_experiments_hold_no_symlinks() -> None:
    links = [p for folder in ("conf", "experiments") for p in (ROOT / folder).rglob("*") if p.is_symlink()]
    assert links == []


def test_the_source_serves_the_checkouts_experiments_as_one_group() -> None:
    source = ExperimentsConfigSource("test", "resnext-experiments://")
    assert Path(source.path) == CHECKOUT_EXPERIMENTS == ROOT / "experiments"
    assert source.available() and source.is_group("") and source.is_group("experiment")
    assert source.list("", ObjectType.GROUP) == ["experiment"]
    names = source.list("experiment", ObjectType.CONFIG)
    assert names == sorted(p.stem for p in (ROOT / "experiments").glob("*.yaml")) and "table3" in names
    assert "table3" in source.list("experiment", ObjectType.GROUP)
    assert source.list("experiment/table3", ObjectType.CONFIG) == ["cpu", "gpu", "paper", "proxy", "smoke"]
    assert source.is_config("experiment/table3") and source.is_config("experiment/table3/smoke")
    loaded = source.load_config("experiment/table3/smoke")
    assert loaded.header["package"] == "_global_" and loaded.config.depths.d50 == 14
    # nothing outside the group: conf/ keeps every other group
    assert not source.is_group("model") and not source.is_config("config") and source.list("model", None) == []


def test_an_experiment_and_its_scale_compose() -> None:
    cfg = compose(["experiment=table4_top5", "scale=smoke"], hydra=True)
    assert cfg.experiment_name == "table4" and cfg.scale_name == "smoke" and cfg.report.metric == "test/top5_err"
    assert cfg.hydra.runtime.choices["experiment"] == "table4_top5"
    assert cfg.hydra.runtime.choices["experiment@_global_"] == "table4_top5/smoke"
    # no experiment: no scale settings of one either
    assert compose(["scale=smoke"]).get("experiment_name") is None


def test_run_py_finds_experiments_from_another_working_directory(tmp_path: Path) -> None:
    done = run_py("experiment=table3", "scale=smoke", "--cfg", "job", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "experiment_name: table3" in done.stdout and "d50: 14" in done.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+experiment=table3", "Multiple values for experiment"),  # Hydra's own: the group is in the defaults
        ("experiment=no_such_table", "Could not find 'experiment/no_such_table'"),
    ],
)
def test_wrong_experiment_overrides_get_hydras_message(override: str, message: str, tmp_path: Path) -> None:
    done = run_py(override, "--cfg", "job", cwd=tmp_path)
    assert done.returncode != 0 and message in done.stderr, done.stderr
