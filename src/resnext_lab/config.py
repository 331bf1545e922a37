"""Every scalar run setting's type and range, stated once and checked before anything is built or trained.

The YAML files under `conf/` hold the defaults; this module says what each setting accepts.
`validate(cfg)` checks the top level, `optim` and `trainer` (the `model` node is checked by
`models.spec_from_config`, the `data` node by `data.parse_settings`) and raises `ConfigError`
with one line: the setting, the value and what is accepted. `check_job(cfg)` does all of it
for one training job, data presence included, without reading a data file: a sweep runs it on
every job before the first one starts. Torch is imported only by `check_job`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from resnext_lab.errors import ConfigError, first_line

#: (test, what is accepted): one setting's rule.
Rule = tuple[Callable[[Any], bool], str]

SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")
TASKS = ("train", "complexity", "plan")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """An int or float, not a bool (YAML's true would otherwise pass as 1)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(minimum: int, *, null: bool = False) -> Rule:
    return (lambda v: (null and v is None) or (_is_int(v) and v >= minimum),
            f"an integer >= {minimum}" + (" or null" if null else ""))


def number(low: float, high: float | None = None, *, open_low: bool = False, open_high: bool = False,
           null: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        if null and v is None:
            return True
        if not _is_number(v):
            return False
        above = v > low if open_low else v >= low
        below = high is None or (v < high if open_high else v <= high)
        return above and below

    if high is None:
        text = f"a number {'>' if open_low else '>='} {low:g}"
    else:
        text = f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    return ok, text + (" or null" if null else "")


def boolean(*, auto: bool = False) -> Rule:
    return (lambda v: isinstance(v, bool) or (auto and v == "auto"), "true or false" + (" or auto" if auto else ""))


def choice(*values: str) -> Rule:
    return (lambda v: v in values), "one of " + ", ".join(values)


def _devices(v: Any) -> bool:
    if v == "auto" or (_is_int(v) and v >= 1):
        return True
    return isinstance(v, list | tuple) and len(v) > 0 and all(_is_int(i) and i >= 0 for i in v)


def _batches(v: Any) -> bool:
    """Lightning's `limit_*_batches`: a fraction in [0, 1] (float), a number of batches (int), or null (all)."""
    return v is None or (_is_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)


def _text(v: Any) -> bool:
    return isinstance(v, str) and v != ""


REPORT: dict[str, Rule] = {
    "baseline": (lambda v: v is None or (isinstance(v, str) and "=" in v), "null or a swept setting as key=value"),
    "min_effect": number(0, open_low=True, null=True),
}

BATCHES: Rule = (_batches, "a fraction in [0, 1], a number of batches >= 0, or null")

TOP: dict[str, Rule] = {
    "task": choice(*TASKS),
    "seed": integer(0),
    "deterministic": boolean(),
    "resume": boolean(),
    "out_root": (_text, "a folder path"),
}

OPTIM: dict[str, Rule] = {
    "lr": number(0, open_low=True),
    "momentum": number(0, 1, open_high=True),
    "nesterov": boolean(),
    "weight_decay": number(0),
    "no_decay_bn_bias": boolean(),
    "schedule": choice(*SCHEDULES),
    "gamma": number(0, open_low=True),
    "warmup_epochs": number(0),
    "warmup_start": number(0, 1),
    "scale_lr": boolean(),
    "base_batch_size": integer(1),
}

TRAINER: dict[str, Rule] = {
    "accelerator": choice(*ACCELERATORS),
    "devices": (_devices, "an integer >= 1, auto, or a list of device indices"),
    "num_nodes": integer(1),
    "strategy": (_text, "a Lightning strategy name (auto, ddp, ddp_spawn, ...)"),
    "sync_batchnorm": boolean(),
    "max_epochs": integer(1),
    "precision": choice(*PRECISIONS),
    "channels_last": boolean(auto=True),
    "compile": boolean(),
    "benchmark": boolean(auto=True),
    "log_every_n_steps": integer(1),
    "limit_train_batches": BATCHES,
    "limit_val_batches": BATCHES,
    "limit_test_batches": BATCHES,
    "gradient_clip_val": number(0, null=True),
    "check_finite_every_n_steps": integer(1),
    "enable_progress_bar": boolean(),
    "progress_bar_interval_s": number(0),
}


def check(prefix: str, node: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    """Raise ConfigError for the first setting of `node` that breaks its rule; settings it leaves out pass."""
    for key, (ok, accepted) in rules.items():
        if key in node and not ok(node[key]):
            name = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{name}={node[key]!r}: must be {accepted}")


def validate_optim(optim: Mapping[str, Any]) -> None:
    """Every optimiser setting, and the rules that tie two of them together."""
    optim = plain(optim)
    check("optim", optim, OPTIM)
    if "lr" not in optim:
        raise ConfigError("optim.lr is not set: must be a number > 0")
    if optim.get("nesterov") and not optim.get("momentum"):
        raise ConfigError(f"optim.nesterov=true: needs optim.momentum > 0 (got {optim.get('momentum')!r})")
    milestones = list(optim.get("milestones") or [])
    if any(not _is_number(m) or m <= 0 for m in milestones) or milestones != sorted(milestones):
        raise ConfigError(f"optim.milestones={milestones}: must be increasing epochs > 0")


def validate_trainer(trainer: Mapping[str, Any]) -> None:
    trainer = plain(trainer)
    check("trainer", trainer, TRAINER)
    if "max_epochs" not in trainer:
        raise ConfigError("trainer.max_epochs is not set: must be an integer >= 1")


def plain(node: Any) -> Any:
    """An OmegaConf node as plain Python containers (resolved); anything else as it is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def validate(cfg: Mapping[str, Any]) -> None:
    """The top-level, `optim` and `trainer` settings of a composed config."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        top = {key: plain(cfg.get(key)) for key in TOP if key in cfg}
        optim, trainer = plain(cfg.get("optim")) or {}, plain(cfg.get("trainer")) or {}
    except OmegaConfBaseException as err:  # an interpolation that does not resolve
        raise ConfigError(first_line(err)) from None
    check("", top, TOP)
    check("report", plain(cfg.get("report")) or {}, REPORT)
    validate_optim(optim)
    validate_trainer(trainer)


def check_job(cfg: Mapping[str, Any], check_data: bool = True) -> tuple[Any, Any]:
    """Validate one training job completely, reading no data file: its (datamodule, model spec).

    Settings, the data node (and, with `check_data`, that its files exist where the data set looks for
    them, unless `data.download` may fetch them), the model node with `width: auto` solved.
    """
    from resnext_lab.data import build_datamodule
    from resnext_lab.models import spec_from_config

    validate(cfg)
    dm = build_datamodule(plain(cfg.get("data")))
    available = getattr(dm, "check_available", None)
    if check_data and available is not None:
        available()
    spec = spec_from_config(plain(cfg.get("model")), num_classes=dm.num_classes, in_channels=dm.in_channels,
                            image_size=dm.image_size)
    return dm, spec
