"""The run's settings, each one's default, type and range stated once: a frozen dataclass per config
group of a run (`RunSettings`, `OptimSettings`, `TrainerSettings`, `LoggerSettings`); the `model` group's
is `models.spec.Model`, each data set's in `data.settings`, written with the same rules.

Every field is a `setting(default, rule, doc)`. `job.register()` stores each schema's defaults in
Hydra's ConfigStore, as the base that the group's YAML extends (`defaults: [schema, _self_]`), so the
YAML files only override. `parse(Schema, node, prefix)` checks a node against its schema and returns
the frozen settings; a bad value raises `ConfigError` with one line: the setting, the value and what
is accepted.

Types are checked here, not by OmegaConf at compose time (Hydra's error is several lines and exit 1, a bad
setting here one line and exit 2), so ConfigStore holds plain defaults. This module is the bottom of the
project: it imports nothing of it but `errors`; `job.py` joins settings, data and network into one job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple, TypeVar

from resnext_lab.errors import ConfigError, first_line

SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")
TASKS = ("train", "complexity", "plan", "eval", "preregister")
WANDB_MODES = ("auto", "online", "offline", "disabled")
#: `report.exclude`: the rules report/checks.py codes
EXCLUSION_RULES = ("first_epoch_above_chance",)


class Rule(NamedTuple):
    """What one setting accepts: a test, its wording, and the conversion of an accepted value."""

    ok: Callable[[Any], bool]
    accepted: str
    convert: Callable[[Any], Any] = lambda v: v


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """An int or float, not a bool (YAML's true would otherwise pass as 1)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _or_none(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else convert(v)


def integer(minimum: int, *, null: bool = False) -> Rule:
    return Rule(
        lambda v: (null and v is None) or (_is_int(v) and v >= minimum),
        f"an integer >= {minimum}" + (" or null" if null else ""),
        _or_none(int),
    )


def number(
    low: float, high: float | None = None, *, open_low: bool = False, open_high: bool = False, null: bool = False
) -> Rule:
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
    return Rule(ok, text + (" or null" if null else ""), _or_none(float))


def boolean(*, auto: bool = False) -> Rule:
    return Rule(lambda v: isinstance(v, bool) or (auto and v == "auto"), "true or false" + (" or auto" if auto else ""))


def choice(*values: str) -> Rule:
    return Rule(lambda v: v in values, "one of " + ", ".join(values))


def string(accepted: str, *, null: bool = False) -> Rule:
    """A name or path; Hydra reads `name=2024` or `name=nan` as a number, which names it as well."""
    return Rule(
        lambda v: (null and v is None) or (isinstance(v, str) and v != "") or _is_number(v),
        accepted + (" or null" if null else ""),
        _or_none(str),
    )


def _devices(v: Any) -> bool:
    if v == "auto" or (_is_int(v) and v >= 1):
        return True
    return isinstance(v, list | tuple) and len(v) > 0 and all(_is_int(i) and i >= 0 for i in v)


def _batches(v: Any) -> bool:
    """Lightning's `limit_*_batches`: a fraction in [0, 1] (float), a number of batches (int), or null (all)."""
    return v is None or (_is_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0)


def _milestones(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(_is_number(m) and m > 0 for m in v) and list(v) == sorted(v)


BATCH_LIMIT = Rule(_batches, "a fraction in [0, 1], a number of batches >= 0, or null")
DEVICE_LIST = Rule(
    _devices,
    "an integer >= 1, auto, or a list of device indices",
    lambda v: tuple(v) if isinstance(v, list | tuple) else v,
)


def setting(default: Any, rule: Rule, doc: str) -> Any:
    """A schema field: its default (or REQUIRED), what it accepts and what it means (docs/SETTINGS.md lists them)."""
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={"rule": rule, "doc": doc})
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: tuple(default), metadata={"rule": rule, "doc": doc})
    return dataclasses.field(default=default, metadata={"rule": rule, "doc": doc})


S = TypeVar("S")


def to_python(node: Any) -> Any:
    """An OmegaConf node as plain Python containers (resolved); anything else as it is."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def parse(schema: type[S], node: Mapping[str, Any] | None, prefix: str) -> S:
    """`node` checked against `schema` into its frozen settings; fields it leaves out take their defaults.

    A key the schema does not have is an error, unless the schema says `open_keys` (its extra keys
    belong to someone else, and are neither read nor resolved); a nested schema is parsed under its key.
    """
    from omegaconf.errors import OmegaConfBaseException

    node = {} if node is None else node
    if not isinstance(node, Mapping):
        raise ConfigError(f"{prefix}={node!r}: must be a group of settings")
    fields = {f.name: f for f in dataclasses.fields(schema)}  # type: ignore[arg-type]
    unknown = sorted(set(node) - set(fields))
    if unknown and not getattr(schema, "open_keys", False):
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(
            f"{name}={node[unknown[0]]!r}: no such setting here; {prefix or 'the top level'} has {', '.join(fields)}"
        )
    values = {}
    for name, f in fields.items():
        if name not in node:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                key = f"{prefix}.{name}" if prefix else name
                raise ConfigError(f"{key}: missing; must be {f.metadata['rule'].accepted}")
            continue
        key = f"{prefix}.{name}" if prefix else name
        try:
            value = to_python(node[name])
        except OmegaConfBaseException as err:  # an interpolation that does not resolve
            raise ConfigError(first_line(err)) from None
        if "schema" in f.metadata:
            values[name] = parse(f.metadata["schema"], value, key)
            continue
        if "items" in f.metadata:
            values[name] = _parse_items(f, value, key)
            continue
        rule: Rule = f.metadata["rule"]
        if not rule.ok(value):
            raise ConfigError(f"{key}={value!r}: must be {rule.accepted}")
        values[name] = rule.convert(value)
    return schema(**values)


def _parse_items(f: dataclasses.Field, value: Any, key: str) -> tuple[Any, ...] | None:
    schema, minimum, null = f.metadata["items"], f.metadata["minimum"], f.metadata["null"]
    if value is None and null:
        return None
    if not isinstance(value, list | tuple) or len(value) < minimum:
        raise ConfigError(f"{key}={value!r}: must be {f.metadata['rule'].accepted}")
    return tuple(parse(schema, item, f"{key}[{i}]") for i, item in enumerate(value))


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def defaults(schema: type) -> dict[str, Any]:
    """A schema's defaults as the plain node Hydra's ConfigStore holds (tuples as lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(schema):
        if "schema" in f.metadata:
            out[f.name] = defaults(f.metadata["schema"])
        else:
            value = default_of(f)
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def with_default(schema: type, name: str, default: Any, doc: str | None = None) -> Any:
    """`schema`'s field `name`, with the same rule (and meaning, unless `doc` says more), at another default."""
    meta = schema.__dataclass_fields__[name].metadata
    return setting(default, meta["rule"], doc or meta["doc"])


#: `setting(REQUIRED, ...)`: a field without a default, which a node must give.
REQUIRED: Any = dataclasses.MISSING


def items(schema: type, doc: str, *, minimum: int = 0, null: bool = False) -> Any:
    """A schema field that is a list of `schema` nodes (each parsed under `key[i]`): at least `minimum` of them,
    or null where `null` (the default then), else empty by default."""
    accepted = f"a list of {minimum or 'zero'} or more {{{', '.join(f.name for f in dataclasses.fields(schema))}}}"
    meta = {"items": schema, "minimum": minimum, "null": null, "rule": Rule(lambda v: True, accepted), "doc": doc}
    if null:
        return dataclasses.field(default=None, metadata=meta)
    return dataclasses.field(default=() if minimum == 0 else dataclasses.MISSING, metadata=meta)


def group(schema: type) -> Any:
    """A schema field that is itself a schema, at its defaults."""
    return dataclasses.field(default_factory=schema, metadata={"schema": schema})


# --- the schemas ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """`optim`: SGD with momentum, as the paper trains."""

    lr: float = setting(0.1, number(0, open_low=True), "learning rate (per base_batch_size images when scale_lr)")
    momentum: float = setting(0.9, number(0, 1, open_high=True), "SGD momentum")
    nesterov: bool = setting(True, boolean(), "Nesterov momentum (needs momentum > 0)")
    weight_decay: float = setting(5e-4, number(0), "L2 weight decay")
    no_decay_bn_bias: bool = setting(False, boolean(), "no weight decay on BN parameters and biases")
    schedule: str = setting(
        "cosine",
        choice(*SCHEDULES),
        "step: divide by 1/gamma at each epoch in milestones (the paper's); cosine; constant",
    )
    milestones: tuple[float, ...] = setting(
        [],
        Rule(_milestones, "a list of increasing epochs > 0", tuple),
        "epochs at which the step schedule multiplies the lr by gamma",
    )
    gamma: float = setting(0.1, number(0, open_low=True), "the step schedule's factor")
    warmup_epochs: float = setting(0.0, number(0), "linear warm-up from lr * warmup_start over this many epochs")
    warmup_start: float = setting(0.1, number(0, 1), "the warm-up's first lr, as a fraction of lr")
    scale_lr: bool = setting(False, boolean(), "linear scaling rule: lr * global batch / base_batch_size")
    base_batch_size: int = setting(256, integer(1), "the batch size that lr is stated for, with scale_lr")

    def __post_init__(self) -> None:
        if self.nesterov and not self.momentum:
            raise ConfigError(f"optim.nesterov=true: needs optim.momentum > 0 (got {self.momentum!r})")


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """`trainer`: the Lightning Trainer and this project's speed settings."""

    accelerator: str = setting("auto", choice(*ACCELERATORS), "auto: the GPU when present, else the CPU")
    devices: Any = setting(1, DEVICE_LIST, "devices per node")
    num_nodes: int = setting(1, integer(1), "nodes (SLURM)")
    strategy: str = setting(
        "auto", string("a Lightning strategy name (auto, ddp, ddp_spawn, ...)"), "Lightning's strategy"
    )
    sync_batchnorm: bool = setting(False, boolean(), "synchronise BN statistics across devices")
    max_epochs: int = setting(10, integer(1), "epochs")
    precision: str = setting(
        "auto",
        choice(*PRECISIONS),
        "auto: bf16-mixed on GPUs and on CPUs with native bf16 (AMX, AVX512-BF16), else 32-true",
    )
    channels_last: Any = setting(
        "auto", boolean(auto=True), "channels_last memory layout (auto: on; faster on GPUs and, measured, on CPUs)"
    )
    compile: bool = setting(False, boolean(), "torch.compile the network (off: docs/PERFORMANCE.md)")
    benchmark: Any = setting("auto", boolean(auto=True), "cuDNN autotuning (auto: on unless deterministic)")
    log_every_n_steps: int = setting(50, integer(1), "Lightning's logging cadence; metrics are logged per epoch")
    limit_train_batches: Any = setting(None, BATCH_LIMIT, "fraction (float) or number (int) of batches; null: all")
    limit_val_batches: Any = setting(None, BATCH_LIMIT, "as limit_train_batches, for validation")
    limit_test_batches: Any = setting(None, BATCH_LIMIT, "as limit_train_batches, for the test")
    gradient_clip_val: float | None = setting(None, number(0, null=True), "gradient norm clipping; null: none")
    check_finite_every_n_steps: int = setting(50, integer(1), "check the loss for NaN/inf every n steps (a host sync)")
    enable_progress_bar: bool = setting(True, boolean(), "the progress bar")
    progress_bar_interval_s: float = setting(0.5, number(0), "redraw the progress bar at most this often")


@dataclasses.dataclass(frozen=True)
class WandbSettings:
    """`logger.wandb`: Weights & Biases, offline unless credentials are set."""

    enabled: bool = setting(True, boolean(), "log each run to W&B")
    project: str = setting("resnext-lab", string("a W&B project name"), "W&B project")
    entity: str | None = setting(None, string("a W&B entity", null=True), "W&B entity (null: your default)")
    mode: str = setting("auto", choice(*WANDB_MODES), "auto: online with credentials, else offline; WANDB_MODE wins")
    group: str | None = setting(
        None, string("a W&B group name", null=True), "null: the sweep's folder under out_root, or runs"
    )
    tags: tuple[str, ...] = setting([], Rule(lambda v: isinstance(v, list | tuple), "a list of tags", tuple), "tags")
    job_type: str = setting("train", string("a W&B job type"), "the runs' job type")


@dataclasses.dataclass(frozen=True)
class LoggerSettings:
    """`logger`: the CSV log (csv/metrics.csv, read by the reports), TensorBoard and W&B."""

    csv: bool = setting(True, boolean(), "write csv/metrics.csv (the reports read it)")
    tensorboard: bool = setting(False, boolean(), "write TensorBoard event files in tensorboard/ (`make board`)")
    wandb: WandbSettings = group(WandbSettings)


@dataclasses.dataclass(frozen=True)
class ReportSettings:
    """`report`: the analysis of a sweep, declared before it runs. Experiment files add their paper table here."""

    open_keys: ClassVar[bool] = True  # table, omitted, contrasts, ...: report/tables.py checks them

    baseline: str | None = setting(
        None,
        Rule(lambda v: v is None or (isinstance(v, str) and "=" in v), "null or a swept setting as key=value"),
        "the group every other is compared with (null: the first value swept first)",
    )
    min_effect: float | None = setting(
        None,
        number(0, open_low=True, null=True),
        "the declared minimum effect (error points): the equivalence margin, and the "
        "effect seeds needed is computed for (null: none, no power analysis)",
    )
    test: str = setting(
        "difference",
        choice("difference", "equivalence"),
        "difference: better/worse/inconclusive; equivalence: a tie claimed by TOST at min_effect",
    )
    exclude: str | None = setting(
        None,
        Rule(lambda v: v is None or v in EXCLUSION_RULES, "null or one of " + ", ".join(EXCLUSION_RULES)),
        "the exclusion rule applied to every job alike (null: exclude nothing)",
    )
    alpha: float = setting(
        0.05,
        number(0, 1, open_low=True, open_high=True),
        "the significance level of every test, Holm-adjusted within a table's family",
    )
    sequential: Any = setting(
        None, Rule(lambda v: v is None or isinstance(v, Mapping), "null or a mapping"), "SEQUENTIAL.md"
    )


@dataclasses.dataclass(frozen=True)
class PlanSettings:
    """`plan`: task=plan's estimate of each job's wall time."""

    device: str = setting(
        "here",
        string("here or a GPU name (h100, a100, v100)"),
        "here: measured on this machine; a GPU name: from FLOPs at its stated throughput",
    )


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """`sweep`: how `python run.py -m` treats invalid jobs, and long paper-table sweeps."""

    skip_invalid: bool = setting(
        False, boolean(), "false: one invalid job stops the sweep (exit 2); true: the valid ones run, the others fail"
    )
    confirm: bool = setting(
        False, boolean(), "train a paper table priced above an hour here (false: print the plan and stop, exit 2)"
    )


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The top level; the groups model, data, optim, trainer and logger have their own schemas."""

    open_keys: ClassVar[bool] = True  # the groups, hydra, and an experiment's own keys

    task: str = setting("train", choice(*TASKS), "train; complexity; plan (a sweep's cost); eval; preregister")
    seed: int = setting(0, integer(0), "seeds the weights, the batch order and augmentation")
    deterministic: bool = setting(False, boolean(), "torch.use_deterministic_algorithms + cuDNN determinism")
    name: str | None = setting(None, string("a sweep name", null=True), "the sweep's name: its folder is out_root/name")
    out_root: str = setting("outputs", string("a folder path"), "where runs and sweeps are written")
    resume: bool = setting(True, boolean(), "a rerun skips completed jobs and resumes interrupted ones")
    experiment_name: str | None = setting(None, string("an experiment name", null=True), "set by experiment files")
    scale_name: str | None = setting(None, string("a scale name", null=True), "set by scale files")
    plan: PlanSettings = group(PlanSettings)
    sweep: SweepSettings = group(SweepSettings)
    report: ReportSettings = group(ReportSettings)
