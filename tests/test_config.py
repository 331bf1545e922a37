"""The config schemas: each setting's default, type and range stated once, and the docs that list them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from resnext_lab.config import (
    LoggerSettings,
    OptimSettings,
    RunSettings,
    TrainerSettings,
    defaults,
    parse,
)
from resnext_lab.data.settings import DATA_SCHEMAS
from resnext_lab.errors import ConfigError
from resnext_lab.job import GROUPS, compose
from resnext_lab.tools.settings_doc import settings_markdown

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def test_settings_doc_is_current() -> None:
    """docs/SETTINGS.md is what `make settings` writes from the schemas today."""
    assert (ROOT / "docs" / "SETTINGS.md").read_text() == settings_markdown()


def _restated(node: Any, base: Any, key: str = "") -> list[str]:
    """The settings of `node` that repeat `base`'s value: a default stated a second time."""
    if isinstance(node, dict) and isinstance(base, dict):
        return [
            k
            for name, value in node.items()
            if name in base
            for k in _restated(value, base[name], f"{key}.{name}" if key else name)
        ]
    return [key] if node == base else []


def _group_files() -> list[tuple[Path, dict[str, Any]]]:
    """Every YAML of a group that has a schema, with the defaults it extends (by the node's package)."""
    out = []
    for group in (*GROUPS, "data"):
        for path in sorted((CONF / group).glob("*.yaml")):
            base = defaults(DATA_SCHEMAS[path.stem]) if group == "data" else defaults(GROUPS[group])
            if path.read_text().startswith("# @package _global_"):  # its other nodes pin a recipe's values
                base = {group: base}
            out.append((path, base))
    return out


@pytest.mark.parametrize(("path", "base"), _group_files(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_group_yaml_states_only_what_it_changes(path: Path, base: dict[str, Any]) -> None:
    node = OmegaConf.to_container(OmegaConf.load(path))
    node.pop("defaults", None)
    assert not _restated(node, base), (
        f"{path.relative_to(ROOT)} restates the schema's default of {_restated(node, base)}"
    )


def test_composed_groups_equal_their_schemas() -> None:
    cfg = compose()
    for group, schema in GROUPS.items():
        assert parse(schema, cfg[group], group) == schema()
    assert parse(RunSettings, cfg, "") == RunSettings()


@pytest.mark.parametrize(
    ("schema", "node", "message"),
    [
        (OptimSettings, {"lr": "fast"}, "optim.lr='fast': must be a number > 0"),
        (OptimSettings, {"momentum": 0, "nesterov": True}, "optim.nesterov=true: needs optim.momentum > 0 (got 0.0)"),
        (OptimSettings, {"warmup": 1}, "optim.warmup=1: no such setting here; optim has lr, momentum, nesterov"),
        (TrainerSettings, {"devices": [0, -1]}, "trainer.devices=[0, -1]: must be an integer >= 1, auto, or a list"),
        (
            LoggerSettings,
            {"wandb": {"mode": "sometimes"}},
            "logger.wandb.mode='sometimes': must be one of auto, online",
        ),
        (
            LoggerSettings,
            {"wandb": {"projects": "x"}},
            "logger.wandb.projects='x': no such setting here; logger.wandb has",
        ),
        (RunSettings, {"report": {"min_effect": 0}}, "report.min_effect=0: must be a number > 0 or null"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_setting(schema: type, node: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(
            schema,
            node,
            {OptimSettings: "optim", TrainerSettings: "trainer", LoggerSettings: "logger", RunSettings: ""}[schema],
        )
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_values_are_converted_to_the_schema_types() -> None:
    optim = parse(OptimSettings, {"lr": 1, "milestones": [30, 60]}, "optim")
    assert isinstance(optim.lr, float) and optim.milestones == (30, 60)
    assert parse(TrainerSettings, {"devices": [0, 1]}, "trainer").devices == (0, 1)
    run = parse(RunSettings, {"seed": 3, "model": {"anything": 1}, "report": {"table": {"rows": []}}}, "")
    assert run.seed == 3  # the other groups, and a report's table, are not the top level's to check
