"""The comparison across sweeps, on two real tiny sweeps: one table, only the settings that differ, warnings when
precision or commit differ, and a paired contrast through the report's statistics."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, cli_env, tiny


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory, run_cli) -> list[Path]:
    """Two sweeps of residual true/false: seed 0 in fp32, then a follow-up with seed 1 in bf16."""
    out = tmp_path_factory.mktemp("compare")
    folders = []
    for name, seed, precision in (("first", 0, "32-true"), ("second", 1, "bf16-mixed")):
        overrides = tiny(f"trainer.precision={precision}", f"seed={seed}", "logger=csv")
        done = run_cli("-m", *overrides, "model.residual=true,false", f"name={name}", f"out_root={out}")
        assert done.returncode == 0, done.stderr[-3000:]
        folders.append(out / name)
    return folders


def _compare(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resnext_lab.compare", *args, "--out", str(tmp_path / "out")],
        cwd=ROOT,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _errors(folder: Path) -> dict[bool, list[float]]:
    out: dict[bool, list[float]] = {True: [], False: []}
    for path in sorted(folder.glob("*/results.json")):
        result = json.loads(path.read_text())
        out[result["model"]["residual"]].append(result["metrics"]["test/top1_err"])
    return out


def test_one_row_per_cell_with_only_the_settings_that_differ(sweeps: list[Path], tmp_path: Path) -> None:
    done = _compare(tmp_path, *map(str, sweeps))
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if line.startswith("row"))
    assert header.split()[:4] == ["row", "model.residual", "trainer.precision", "n"]  # seed and the rest: the same
    assert done.stdout.count("\nrow ") == 1  # one table
    assert "warning: the compared runs differ in precision: 32-true (rows 1, 3); bf16-mixed (rows 2, 4)" in done.stderr
    assert "differ in commit" not in done.stderr
    with (tmp_path / "out" / "compare.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert "| row | model.residual | trainer.precision | n |" in (tmp_path / "out" / "compare.md").read_text()


def test_cells_by_one_setting_pool_the_sweeps_and_contrast_paired(sweeps: list[Path], tmp_path: Path) -> None:
    first, second = _errors(sweeps[0]), _errors(sweeps[1])
    done = _compare(
        tmp_path,
        *map(str, sweeps),
        "--by",
        "model.residual",
        "--contrast",
        "model.residual=false",
        "model.residual=true",
    )
    assert done.returncode == 0, done.stderr
    rows = {line.split()[1]: line.split() for line in done.stdout.splitlines() if line.strip()[:1].isdigit()}
    for residual in (True, False):
        values = first[residual] + second[residual]
        mean = sum(values) / len(values)
        assert rows[str(residual).lower()][2] == "2" and rows[str(residual).lower()][3] == f"{mean:.2f}"
        assert rows[str(residual).lower()][-1] == "1,2"  # both sweeps in the row
    delta = (first[False][0] - first[True][0] + second[False][0] - second[True][0]) / 2
    assert f"contrast row 1 vs row 2: Δ {delta:+.2f} [" in done.stdout and "(paired, n=2)" in done.stdout
    assert "row 1 pools runs that differ in trainer.precision" in done.stderr
    assert "## Contrasts" in (tmp_path / "out" / "compare.md").read_text()


def test_runs_of_another_commit_are_warned_about(sweeps: list[Path], tmp_path: Path) -> None:
    """The first sweep beside a copy of it recorded at another commit (as a sweep made before a change would be)."""
    older = tmp_path / "older"
    shutil.copytree(sweeps[0], older, symlinks=True)
    for path in older.glob("*/results.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "git_commit": "0" * 40}))
    done = _compare(tmp_path, str(sweeps[0]), str(older))
    assert done.returncode == 0, done.stderr
    assert (
        "warning: the compared runs differ in commit: " in done.stderr and "0000000000 (rows 1, 2)" in done.stderr
    )  # pooled with the runs it repeats
    assert "differ in precision" not in done.stderr
    header = next(line for line in done.stdout.splitlines() if line.startswith("row"))
    assert header.split()[:3] == ["row", "model.residual", "n"]  # the same settings: one row per cell


def test_bad_input_is_one_line_and_exit_2(sweeps: list[Path], tmp_path: Path) -> None:
    for args, expected in (
        ([str(tmp_path / "none")], "no such folder"),
        ([str(sweeps[0]), "--where", "model.nothing=1"], "--where model.nothing=...: no run has the setting"),
        ([str(sweeps[0]), "--contrast", "model.residual=true", "9"], "--contrast 9: there are rows 1 to 2"),
        ([str(sweeps[0]), "--contrast", "model.depth=11", "1"], "names 2 rows (1, 2); it must name one"),
    ):
        done = _compare(tmp_path, *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
