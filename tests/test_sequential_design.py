"""A sequential design's looks on a sweep's results: decisions both ways, kept once made, the cells that run on,
sequential.json refused for another design, and one-line errors for a bad design."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from resnext_lab.errors import ConfigError
from resnext_lab.report import sequential


def _report(**design: object) -> dict:
    return {
        "metric": "test/top1_err",
        "paired_by": "seed",
        "min_effect": 1.0,
        "rows": [
            {
                "label": "r",
                "baseline": "on",
                "cells": [
                    {"label": "on", "match": {"model.residual": True}},
                    {"label": "off", "match": {"model.residual": False}},
                ],
            }
        ],
        "sequential": {"start": 3, "step": 2, "max": 7, **design},
    }


def _jobs(seeds: range, effect: float, rng: np.random.Generator) -> list[dict]:
    out = []
    for s in seeds:
        base = 20 + rng.normal(0, 1)
        for residual, value in ((True, base), (False, base + effect + rng.normal(0, 0.05))):
            out.append(
                {
                    "status": "completed",
                    "seed": s,
                    "overrides": [f"model.residual={residual}", f"seed={s}"],
                    "model": {"residual": residual},
                    "metrics": {"test/top1_err": value},
                }
            )
    return out


def test_a_large_effect_is_decided_at_the_first_look_and_stays_decided(tmp_path: Path) -> None:
    design = sequential.design_of(_report())
    assert design is not None and design.looks == (3, 5, 7) and design.round_seeds(1) == [3, 4]
    rng = np.random.default_rng(0)
    jobs = _jobs(range(3), 10.0, rng)
    state = sequential.take_look(sequential.load_state(tmp_path, design), jobs, design)
    decision = state["decisions"]["off vs on"]
    assert (decision["decision"], decision["verdict"], decision["look"]) == ("differs", "worse", 1)
    assert sequential.finished(state, design)
    keys = [frozenset({"model.residual=True"}), frozenset({"model.residual=False"})]
    assert sequential.open_keys(keys, jobs, design, state) == []  # no cell runs on
    # the next look sees the opposite; the decision made at look 1 stands
    later = sequential.take_look(state, _jobs(range(5), -10.0, rng), design)
    assert later["decisions"]["off vs on"] == decision and later["looks"][0] == state["looks"][0]


def test_no_effect_ends_equivalent_and_a_recorded_design_is_kept(tmp_path: Path) -> None:
    design = sequential.design_of(_report())
    state = sequential.load_state(tmp_path, design)
    rng = np.random.default_rng(1)
    for k in range(3):
        state = sequential.take_look(state, _jobs(range(design.looks[k]), 0.0, rng), design)
        if sequential.finished(state, design):
            break
    assert state["decisions"]["off vs on"]["decision"] == "equivalent"
    sequential.write_state(tmp_path, state)
    assert sequential.load_state(tmp_path, design) == state
    with pytest.raises(ConfigError, match=r"report.sequential: .* records looks of another design \(max: 7 there"):
        sequential.load_state(tmp_path, sequential.design_of(_report(max=9)))


def test_only_cells_of_an_open_contrast_run_on(tmp_path: Path) -> None:
    report = _report()
    report["rows"][0]["cells"].append({"label": "same", "match": {"model.width": 2}})
    rng = np.random.default_rng(2)
    jobs = _jobs(range(3), 10.0, rng)
    for s in range(3):  # a third cell with no effect against the baseline
        base = next(j for j in jobs if j["seed"] == s and j["model"]["residual"])
        value = base["metrics"]["test/top1_err"] + rng.normal(0, 1)
        jobs.append(
            {
                "status": "completed",
                "seed": s,
                "overrides": ["model.width=2", f"seed={s}"],
                "model": {"residual": True, "width": 2},
                "metrics": {"test/top1_err": value},
            }
        )
    for j in jobs:  # the baseline's match must not take the third cell's jobs
        j["model"].setdefault("width", 4)
    report["rows"][0]["cells"][0]["match"] = {"model.residual": True, "model.width": 4}
    design = sequential.design_of(report)
    state = sequential.take_look(sequential.load_state(tmp_path, design), jobs, design)
    assert state["decisions"]["off vs on"]["decision"] == "differs"
    assert state["decisions"]["same vs on"]["decision"] == "open"
    keys = [frozenset({"model.residual=True"}), frozenset({"model.residual=False"}), frozenset({"model.width=2"})]
    assert sequential.open_keys(keys, jobs, design, state) == [keys[0], keys[2]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"spending": "linear"}, "report.sequential.spending='linear': must be one of obrien_fleming, pocock"),
        ({"start": 1}, "report.sequential.start=1: must be an integer >= 2"),
        ({"max": 2}, "report.sequential.max=2: must be >= report.sequential.start (3)"),
        ({"looks": 3}, "report.sequential.looks=3: no such setting here"),
    ],
)
def test_a_bad_design_is_one_line_naming_the_setting(change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        sequential.design_of(_report(**change))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_the_sweeper_refuses_a_bad_design_before_any_job(run_cli: Callable, tmp_path: Path) -> None:
    done = run_cli(
        "-m",
        "experiment=demo",
        "scale=smoke",
        "hydra/sweeper=sequential",
        f"out_root={tmp_path}",
        "report.sequential={start:4,max:3}",
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()  # every job checked before the first: one line each, then the count
    assert (
        lines[0]
        == "error: job model.residual=True seed=0: report.sequential.max=3: must be >= report.sequential.start (4)"
    )
    assert lines[-1].startswith("2 of 2 job(s) invalid, nothing was run")
    assert not list(tmp_path.rglob("results.json"))
