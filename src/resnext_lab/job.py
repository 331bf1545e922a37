"""One job, checked: the one place that joins settings, data and network.

`register()` puts every group's schema in Hydra's ConfigStore (the YAML under conf/ extends them) with
the folder resolvers; `compose()` composes `python run.py OVERRIDES` outside a run; `check_job()` checks
one composed job completely (settings, the data set and its files, the network, `width: auto` solved)
without reading a data file; `check_sweep()` does it for every job of a sweep before the first starts.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resnext_lab import design_space
from resnext_lab.config import (
    LoggerSettings,
    OptimSettings,
    RunSettings,
    TrainerSettings,
    defaults,
    parse,
    to_python,
)
from resnext_lab.data.settings import DATA_SCHEMAS
from resnext_lab.errors import ConfigError, fail, first_line
from resnext_lab.models import Model, ModelSpec, complexity, reference_spec
from resnext_lab.models.spec import spec_from_settings
from resnext_lab.overrides import expand, register_resolvers, split_overrides, sweep_jobs
from resnext_lab.sequential_settings import SequentialSettings

#: conf/, the configs run.py composes
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def scales() -> tuple[str, ...]:
    """The scale presets, `conf/scale/*.yaml`, `none` (no preset) last: the one list every tool offers."""
    names = sorted(p.stem for p in (CONF_DIR / "scale").glob("*.yaml"))
    return (*[n for n in names if n != "none"], *[n for n in names if n == "none"])


@dataclasses.dataclass(frozen=True)
class Settings:
    """A composed config's settings, checked: the top level and the optim, trainer and logger groups."""

    run: RunSettings
    optim: OptimSettings
    trainer: TrainerSettings
    logger: LoggerSettings


#: group -> schema, as ConfigStore holds them (the model: models.spec.Model; the data sets:
#: data.settings.DATA_SCHEMAS); the root's is `schema`.
GROUPS: dict[str, type] = {"optim": OptimSettings, "trainer": TrainerSettings, "logger": LoggerSettings}


def validate(cfg: Mapping[str, Any]) -> Settings:
    """The top-level, `optim`, `trainer` and `logger` settings of a composed config."""
    settings = Settings(
        parse(RunSettings, cfg, ""),
        *(parse(schema, cfg.get(name), name) for name, schema in GROUPS.items()),
    )
    if (design := (cfg.get("report") or {}).get("sequential")) is not None:
        parse(SequentialSettings, design, "report.sequential")  # a sequential sweep's design (docs/SEQUENTIAL.md)
    return settings


def register() -> None:
    """The schemas in Hydra's ConfigStore (each group's YAML extends its `schema`) and the folder resolvers."""
    store = ConfigStore.instance()
    store.store(name="schema", node=defaults(RunSettings))
    for name, schema in {**GROUPS, "model": Model}.items():
        store.store(group=name, name="schema", node=defaults(schema))
    for name, schema in DATA_SCHEMAS.items():
        store.store(group="data", name=f"{name}_schema", node=defaults(schema))
    register_resolvers()


def compose(overrides: list[str] | tuple[str, ...] = (), *, hydra: bool = False) -> Any:
    """The config `python run.py OVERRIDES` composes (with `hydra`, its hydra node too), outside a run."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=hydra)


def compose_experiment(name: str, scale: str) -> DictConfig:
    """The config `python run.py -m experiment=NAME scale=SCALE` composes (hydra node included)."""
    try:
        return compose([f"experiment={name}", f"scale={scale}"], hydra=True)
    except HydraException as exc:
        raise ConfigError(f"experiment={name} scale={scale}: cannot compose ({first_line(exc)})") from exc


def table_at_scale(name: str, scale: str) -> dict[str, Any]:
    """The `report:` table of an experiment as it composes at `scale` (its depths and widths resolved)."""
    cfg = compose_experiment(name, scale)
    table = cfg.get("report")
    if not isinstance(table, DictConfig) or "rows" not in table:
        raise ConfigError(f"experiment={name} scale={scale}: has no report: table")
    return OmegaConf.to_container(table, resolve=True)  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Job:
    """One training job, checked completely: its settings, its datamodule (no file read yet) and network."""

    settings: Settings
    datamodule: Any
    spec: ModelSpec
    reference: ModelSpec | None  # what `width: auto` matched, else None
    match: str  # what it matched: params or flops

    def model_info(self) -> dict[str, Any]:
        """What results.json and the plan say of the network: the spec, its params and FLOPs, and the
        reference it was matched to."""
        info = {**self.spec.summary(), **complexity(self.spec)}
        if self.reference is not None:
            info["reference"] = {
                "cardinality": self.reference.cardinality,
                "width": self.reference.width,
                "match": self.match,
                **complexity(self.reference),
            }
        return info


def check_job(cfg: Mapping[str, Any], check_data: bool = True) -> Job:
    """Validate one training job completely, reading no data file.

    Settings, the data node (and, with `check_data`, that its files exist where the data set looks for
    them, unless `data.download` may fetch them), the model node with `width: auto` solved.
    """
    from resnext_lab.data.modules import build_datamodule  # Lightning and torch: not for every command

    settings = validate(cfg)
    dm = build_datamodule(to_python(cfg.get("data")))
    available = getattr(dm, "check_available", None)
    if check_data and available is not None:
        available()
    model = parse(Model, to_python(cfg.get("model")), "model")
    spec = spec_from_settings(model, num_classes=dm.num_classes, in_channels=dm.in_channels, image_size=dm.image_size)
    return Job(settings, dm, spec, reference_spec(spec, model), model.match)


def check_sweep(config: DictConfig, config_name: str | None) -> list[tuple[list[str], DictConfig]]:
    """Compose and validate every job of a training sweep before the first starts; exit 2 if any is invalid.

    With `sweep.skip_invalid=true` the invalid jobs are only listed: they run, fail at once, are recorded
    as failed, and the sweep exits 1 at the end. Returns the valid jobs' (overrides, composed config).
    """
    try:
        jobs = design_space.jobs(config, expand) if design_space.is_design_sweep(config) else sweep_jobs(config)
    except ConfigError as err:
        fail(str(err))
    if not jobs:
        return []
    # where configs are found: a job composes with the command line's hydra.searchpath, as the launcher's will
    searchpath = [o for o in config.hydra.overrides.hydra if o.split("=", 1)[0].lstrip("+~") == "hydra.searchpath"]
    invalid, composed = [], []
    for overrides in jobs:
        try:
            cfg = hydra_compose(config_name=config_name, overrides=[*searchpath, *overrides])
            validate(cfg)  # settings first: cheap, no torch import
            composed.append((overrides, cfg))
        except (ConfigError, HydraException, OmegaConfBaseException) as err:  # one line each
            invalid.append((overrides, first_line(err)))
    for overrides, cfg in composed if not invalid else ():
        try:
            check_job(cfg, check_data=cfg.get("task") != "plan")  # a plan may be for data that lives elsewhere
        except ConfigError as err:
            invalid.append((overrides, first_line(err)))
    if not invalid:
        return composed
    swept, _ = split_overrides(list(config.hydra.overrides.task))
    varying = {o.split("=", 1)[0] for o in swept} | set((config.hydra.sweeper.get("params") or {}).keys())
    lines = []
    for overrides, reason in invalid:
        named = [o for o in overrides if o.split("=", 1)[0] in varying]
        lines.append(f"job {' '.join(named)}: {reason}" if named else reason)
    if config.get("sweep", {}).get("skip_invalid"):
        for line in lines:
            print(f"warning: {line} (sweep.skip_invalid=true: it will be recorded as failed)", file=sys.stderr)
        bad = [o for o, _ in invalid]
        return [(o, c) for o, c in composed if o not in bad]
    for line in lines:
        print(f"error: {line}", file=sys.stderr)
    print(
        f"{len(invalid)} of {len(jobs)} job(s) invalid, nothing was run: fix them, or set sweep.skip_invalid=true "
        "to run the valid ones and record the others as failed",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(2)
