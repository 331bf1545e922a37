"""The paper's tables as experiments: composition at every scale, smoke sweeps end to end, reports, dashboards.

Every training experiment of experiments/ (each with a smoke.yaml) has its smoke sweep run once, when a test
first asks for it, as `run.py -m experiment=X scale=smoke` in a scratch folder that holds tiny fake CIFAR
files; the tests then read its results.json files and reports (the slow layer: marked e2e).
The paper scale is checked by composition and one batch on a fake ImageNet folder.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
try:
    import resnext_lab  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))

from resnext_lab.job import compose_experiment  # noqa: E402
from resnext_lab.models.spec import spec_from_config  # noqa: E402
from resnext_lab.report import validate_table  # noqa: E402
from resnext_lab.report.__main__ import main as report_main  # noqa: E402
from resnext_lab.tools.dashboard import build_report  # noqa: E402
from resnext_lab.tools.dashboard import main as dashboard_main  # noqa: E402

SCALES = ("smoke", "cpu", "proxy", "paper")


def compose(experiment: str, scale: str, *overrides: str) -> DictConfig:
    cfg = compose_experiment(experiment, scale)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return cfg


def _sweep_jobs(cfg: DictConfig) -> int:
    """The number of jobs of a composed sweep: the product of its swept values."""
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True) or {}
    return math.prod(len(str(values).split(",")) for values in params.values())


def _experiments() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Read from experiments/ (each file as written, without composing: collection stays quick), so that a new
    table is tested without editing this file: every experiment but the design-space comparison (its own
    report, tests/test_design_space.py); the complexity tables (computed, not trained); those that report
    another's sweep (no `experiment_name` of their own: they take it with that experiment's defaults); those
    that train (each experiments/<name>/smoke.yaml)."""
    files = {path.stem: OmegaConf.load(path) for path in sorted((ROOT / "experiments").glob("*.yaml"))}
    tables = {name: raw for name, raw in files.items() if "design_space" not in raw.get("report", {})}
    complexity = tuple(name for name, raw in tables.items() if raw.get("report", {}).get("kind") == "complexity")
    report_only = tuple(name for name, raw in tables.items() if "experiment_name" not in raw)
    trained = tuple(
        name for name in tables if (ROOT / "experiments" / name / "smoke.yaml").is_file() and name not in report_only
    )
    return tuple(tables), complexity, report_only, trained


#: Every experiment with a paper table; the complexity tables; those that report another's sweep; those that train
EXPERIMENTS, COMPLEXITY, REPORT_ONLY, TRAINED = _experiments()


def swept_by(experiment: str) -> str:
    """The experiment whose sweep `experiment` reports (itself, but for REPORT_ONLY)."""
    return str(compose(experiment, "smoke").experiment_name) if experiment in REPORT_ONLY else experiment


#: The smoke sweep that the rerun test runs again
RERUN = "forms"


def run_env() -> dict[str, str]:
    # one thread each: the smoke sweeps run two at a time on small tensors
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT / "src"),
    }


def run_py(*args: str, cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=run_env(),
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


# --- composition ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_at_every_scale(experiment: str, scale: str) -> None:
    cfg = compose(experiment, scale)
    assert cfg.experiment_name == swept_by(experiment)
    assert cfg.scale_name == scale
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    assert params and all(isinstance(v, str) and v for v in params.values())
    report = OmegaConf.to_container(cfg.report, resolve=True)
    if experiment in COMPLEXITY:
        assert report["kind"] == "complexity" and all(row["paper"] for row in report["rows"])
        return
    table = validate_table(report)
    assert any(cell["paper"] is not None for row in table["rows"] for cell in row["cells"])
    # the default job of the sweep builds
    spec = spec_from_config(OmegaConf.to_container(cfg.model, resolve=True))
    assert spec.depth == cfg.model.depth


def test_proxy_keeps_the_papers_structure() -> None:
    """Same cardinalities, width=auto, depths 50/101 and 2x complexity where the paper has them."""
    cfg = compose("table3", "proxy")
    assert cfg.hydra.sweeper.params["model.cardinality"] == "1,2,4,8,32" and cfg.model.width == "auto"
    assert OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)["model.depth"] == "50,101"
    assert cfg.data.name == "fashion_mnist" and len(cfg.seeds.split(",")) >= 3
    flops = {}
    for variant in ("resnet101", "resnet200", "resnet101_1x100d", "resnext101_2x64d", "resnext101_64x4d"):
        from resnext_lab.models.complexity import complexity

        model = compose("table4", "proxy", f"variant={variant}").model
        flops[variant] = complexity(spec_from_config(OmegaConf.to_container(model, resolve=True)))["flops"]
    for variant in ("resnet200", "resnet101_1x100d", "resnext101_2x64d", "resnext101_64x4d"):
        assert 1.9 < flops[variant] / flops["resnet101"] < 2.1, variant


def _jobs_but_seed(experiment: str, scale: str) -> list[list[str]]:
    params = OmegaConf.to_container(compose(experiment, scale).hydra.sweeper.params, resolve=True)
    axes = [[f"{key}={value}" for value in str(values).split(",")] for key, values in params.items() if key != "seed"]
    return [list(combo) for combo in itertools.product(*axes)]


@pytest.mark.parametrize("experiment", ["table3", "residual", "fig5", "forms", "demo"])
def test_cpu_scale_matches_complexity_in_every_cell(experiment: str) -> None:
    """Three seeds or more, packed on the CPU, and every job within 5% of its reference's params."""
    from resnext_lab.models.complexity import complexity

    cfg = compose(experiment, "cpu")
    assert len(str(cfg.seeds).split(",")) >= 3 and cfg.hydra.launcher.devices == "cpu"
    assert cfg.trainer.accelerator == "cpu" and cfg.data.name == "fashion_mnist"
    for overrides in _jobs_but_seed(experiment, "cpu"):
        model = OmegaConf.to_container(compose(experiment, "cpu", *overrides).model, resolve=True)
        spec = spec_from_config(model)
        if model["width"] == "auto":
            ref = spec_from_config({**model, "cardinality": model["reference"]["cardinality"],
                                    "width": model["reference"]["width"]})  # fmt: skip
            assert abs(complexity(spec)["params"] / complexity(ref)["params"] - 1) <= 0.05, overrides
        assert 15 <= spec.depth <= 60, overrides  # CPU-sized


def test_cpu_table4_doubles_the_flops_in_each_2x_model() -> None:
    from resnext_lab.models.complexity import complexity

    flops = {}
    for (variant,) in _jobs_but_seed("table4", "cpu"):
        model = OmegaConf.to_container(compose("table4", "cpu", variant).model, resolve=True)
        flops[variant.split("=")[1]] = complexity(spec_from_config(model))["flops"]
    double = [v for k, v in flops.items() if k not in ("resnet101", "resnext101_32x4d")]
    assert len(double) == 4 and all(1.85 < v / flops["resnet101"] < 2.05 for v in double)
    assert max(double) / min(double) < 1.05  # the 2x models match each other within 5%


def test_paper_scale_is_the_papers_recipe() -> None:
    imagenet = compose("table3", "paper")
    assert imagenet.data.name == "imagenet" and imagenet.model.template == "imagenet"
    assert (imagenet.trainer.devices, imagenet.data.batch_size, imagenet.trainer.strategy) == (8, 32, "ddp")
    assert imagenet.trainer.max_epochs == 100 and list(imagenet.optim.milestones) == [30, 60, 90]
    assert (imagenet.optim.lr, imagenet.optim.momentum, imagenet.optim.weight_decay) == (0.1, 0.9, 1e-4)
    assert imagenet.optim.nesterov and imagenet.optim.schedule == "step" and imagenet.optim.gamma == 0.1
    cifar = compose("table7", "paper")
    assert cifar.data.name == "cifar10" and cifar.model.template == "cifar" and cifar.model.depth == 29
    assert cifar.trainer.devices * cifar.data.batch_size == cifar.optim.base_batch_size == 128
    assert cifar.trainer.max_epochs == 300 and list(cifar.optim.milestones) == [150, 225]
    assert cifar.optim.weight_decay == 5e-4 and cifar.optim.lr == 0.1 and cifar.data.val_size == 0
    assert len(cifar.seeds.split(",")) == 10


def test_complexity_tables_match_the_paper(tmp_path: Path) -> None:
    for experiment in COMPLEXITY:
        proc = run_py("-m", f"experiment={experiment}", "scale=smoke", f"out_root={tmp_path}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        report = OmegaConf.to_container(compose(experiment, "smoke").report, resolve=True)
        assert len(rows) == len(report["rows"])
        for want in report["rows"]:
            (row,) = [r for r in rows if all(r[k] == v for k, v in want["match"].items())]
            paper = want["paper"]
            if "params" in paper:  # the paper rounds down to 0.1M and 0.1G
                assert abs(row["params"] / 1e6 - paper["params"] / 1e6) < 0.1
                assert abs(row["flops"] / 1e9 - paper["flops"] / 1e9) < 0.1
            else:
                assert (row["width"], row["cardinality"] * row["width"]) == (paper["width"], paper["group_width"])


# --- smoke sweeps ---------------------------------------------------------------------------------


def write_fake_cifar(root: Path, n_train: int = 200, n_test: int = 64) -> None:
    """CIFAR-10/100 pickles in their real layout with random images, under `root` (default data root)."""
    rng = np.random.default_rng(0)

    def batch(n: int, key: str, classes: int) -> dict[str, Any]:
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: rng.integers(0, classes, n).tolist()}

    c10 = root / "cifar-10-batches-py"
    c10.mkdir(parents=True)
    for i in range(1, 6):
        (c10 / f"data_batch_{i}").write_bytes(pickle.dumps(batch(n_train // 5, "labels", 10)))
    (c10 / "test_batch").write_bytes(pickle.dumps(batch(n_test, "labels", 10)))
    c100 = root / "cifar-100-python"
    c100.mkdir(parents=True)
    (c100 / "train").write_bytes(pickle.dumps(batch(n_train, "fine_labels", 100)))
    (c100 / "test").write_bytes(pickle.dumps(batch(n_test, "fine_labels", 100)))


@pytest.fixture(scope="module")
def smoke(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Callable[[str], tuple[subprocess.CompletedProcess[str], Path]]:
    """`smoke(name)`: the smoke sweep of a training experiment, run once: those that the selected tests read
    (the layer's, -k's) two at a time when the first of them starts, any other when a test first asks for it.
    Returns its process and sweep folder."""
    work = tmp_path_factory.mktemp("smoke")
    write_fake_cifar(work / "data")  # ./data is the CIFAR datamodules' default root
    runs: dict[str, tuple[subprocess.CompletedProcess[str], Path]] = {}

    def one(name: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        proc = run_py("-m", f"experiment={name}", "scale=smoke", f"out_root={work / 'outputs'}", cwd=work)
        return proc, work / "outputs" / name / "smoke"

    def run(name: str) -> tuple[subprocess.CompletedProcess[str], Path]:
        if name not in runs:
            runs[name] = one(name)
        return runs[name]

    wanted = {
        swept_by(item.callspec.params["experiment"]) if hasattr(item, "callspec") else RERUN
        for item in request.session.items
        if "smoke" in getattr(item, "fixturenames", ()) and item.module is request.module
    }
    with ThreadPoolExecutor(max_workers=2) as pool:  # one thread each: two sweeps share the two cores
        runs.update(zip(sorted(wanted), pool.map(one, sorted(wanted)), strict=True))
    run.work = work  # type: ignore[attr-defined]
    return run


# e2e: a paper table's sweep first prices itself on this machine (task=plan), and on a machine it has not
# seen that means timing sweeps of its own; the fast layer's sweep is test_train.py's
@pytest.mark.e2e
@pytest.mark.parametrize("experiment", [*TRAINED, *REPORT_ONLY])
def test_smoke_sweep_runs_and_its_report_renders(smoke: Any, experiment: str, tmp_path: Path) -> None:
    proc, sweep = smoke(swept_by(experiment))
    assert proc.returncode == 0, f"{experiment}: {proc.stderr[-3000:]}"
    results = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(results) == _sweep_jobs(compose(swept_by(experiment), "smoke"))
    assert {r["status"] for r in results} == {"completed"}
    assert {(r["experiment"], r["scale"]) for r in results} == {(swept_by(experiment), "smoke")}
    assert all(r["wandb"]["mode"] == "offline" for r in results)

    assert report_main([str(sweep), "--experiment", experiment, "--scale", "smoke", "--out", str(tmp_path)]) == 0
    markdown = (tmp_path / "table.md").read_text()
    table = validate_table(OmegaConf.to_container(compose(experiment, "smoke").report, resolve=True))
    cells = [cell for row in table["rows"] for cell in row["cells"]]
    lines = [line for line in markdown.splitlines() if line.startswith("| ") and "(n=1)" in line]
    assert len(lines) == len(cells), markdown  # one line per cell, in table order, each with its job
    for cell, line in zip(cells, lines, strict=True):
        paper = cell["paper"]
        shown = "–" if paper is None else f"{paper:.1f}" if round(paper, 1) == paper else f"{paper:.2f}"
        assert f"| {cell['label']} | " in line and f" | {shown} | " in line, line
    assert "### Contrasts" in markdown and (tmp_path / "per_seed.csv").is_file()
    assert "missing" not in markdown and "match no cell" not in markdown
    assert (tmp_path / "bars.png").is_file()


@pytest.mark.e2e
def test_a_rerun_reuses_finished_jobs(smoke: Any) -> None:
    _, sweep = smoke(RERUN)
    before = {p: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")}
    out = smoke.work / "outputs"
    proc = run_py("-m", f"experiment={RERUN}", "scale=smoke", f"out_root={out}", cwd=smoke.work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*/results.json")} == before
    assert (proc.stdout + proc.stderr).count("skipping") == _sweep_jobs(compose(RERUN, "smoke"))


# --- the paper scale: one batch ----------------------------------------------------------------------


@pytest.mark.e2e
def test_paper_scale_runs_one_batch_on_fake_imagenet(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("n01", "n02"):
            folder = tmp_path / "imagenet" / split / label
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    proc = run_py(
        "experiment=table3",
        "scale=paper",
        "model.cardinality=32",
        f"out_root={tmp_path / 'out'}",
        f"data.root={tmp_path / 'imagenet'}",
        "data.num_classes=2",
        "data.image_size=64",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.strategy=auto",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "logger=csv",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("results.json")]
    assert result["status"] == "completed" and result["scale"] == "paper"
    assert result["model"]["name"] == "ResNeXt-50 32x4d" and result["model"]["template"] == "imagenet"


# --- dashboards ----------------------------------------------------------------------------------------


def test_dashboard_report_is_built_offline() -> None:
    pytest.importorskip("wandb_workspaces")
    import wandb_workspaces.reports.v2 as wr

    report = build_report(compose("table3", "proxy"), entity="someone")
    assert report.project == "resnext-lab" and "Table 3" in report.title
    (grid,) = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert "table3/proxy" in str(grid.runsets[0].filters)
    kinds = [type(p).__name__ for p in grid.panels]
    assert kinds == ["LinePlot", "LinePlot", "BarPlot", "ParallelCoordinatesPlot"]
    assert grid.panels[0].y == ["val/top1_err"] and grid.panels[0].groupby == wr.Config("model.depth")
    columns = [c.display_name for c in grid.panels[3].columns]
    assert columns == ["C", "d", "depth", "residual", "params", "FLOPs", "test top-1 err %"]


def test_dashboard_without_credentials_says_how_to_sync(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    for scale in SCALES:  # every scale of conf/scale/ is offered
        assert dashboard_main(["table4", "--scale", scale]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"wandb sync outputs/table4/{scale}/" in err and "again" in err
