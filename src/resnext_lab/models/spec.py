"""The one description of a network: a small frozen spec.

Both the builder (`network.py`) and the analytic complexity (`complexity.py`)
read only this spec, so the params/FLOPs printed before training always describe
the network that trains. `Model` is the `model` config group's schema (its defaults and what each
setting accepts, stated once); `spec_from_config` checks a node against it and turns it into a spec,
solving `width: auto`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from resnext_lab.config import Rule, boolean, choice, group, integer, number, parse, setting
from resnext_lab.errors import ConfigError
from resnext_lab.models.complexity import solve_width

#: The one list of each: templates, the paper's three block forms, what width=auto matches, initialisations.
TEMPLATES = ("imagenet", "cifar")
BLOCKS = ("grouped", "aggregated", "concat")
MATCH = ("params", "flops")
INITS = ("official", "per_path")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: ImageNet template depths (paper Table 1 and the 200-layer net of Table 4).
IMAGENET_STAGE_BLOCKS: dict[int, tuple[int, ...]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
#: Number of stages of each template.
NUM_STAGES = {"imagenet": 4, "cifar": 3}


def _stage_blocks(v: Any) -> bool:
    return v is None or (isinstance(v, list | tuple) and all(_is_int(b) and b >= 1 for b in v))


def _tuple_or_none(v: Any) -> tuple[int, ...] | None:
    return None if v is None else tuple(v)


def _width(v: Any) -> bool:
    return v == "auto" or (_is_int(v) and v >= 1)


@dataclasses.dataclass(frozen=True)
class Reference:
    """`model.reference`: the network `width: auto` matches, at the same template and depth."""

    cardinality: int = setting(1, integer(1), "its cardinality C")
    width: int = setting(64, integer(1), "its width d")


@dataclasses.dataclass(frozen=True)
class Model:
    """`model`: one point of the design space (conf/model/*.yaml extend these defaults)."""

    template: str = setting("imagenet", choice(*TEMPLATES), "imagenet (paper Table 1) or cifar (Sec. 5.3)")
    depth: int | None = setting(
        50, integer(1, null=True), "imagenet: 50, 101, 152, 200; cifar: 9n+2; null: from stage_blocks"
    )
    stage_blocks: tuple[int, ...] | None = setting(
        None,
        Rule(_stage_blocks, "a list of integers >= 1, one per stage, or null", _tuple_or_none),
        "blocks per stage (null: from depth); depth then follows",
    )
    cardinality: int = setting(1, integer(1), "C, the number of paths")
    width: Any = setting(
        64, Rule(_width, "an integer >= 1 or auto"), "d, one path's width in the first stage; auto: matched"
    )
    residual: bool = setting(True, boolean(), "the identity shortcuts (false: a plain network)")
    block: str = setting(
        "grouped", choice(*BLOCKS), "the paper's equivalent forms: grouped (c), aggregated (a), concat (b)"
    )
    num_classes: int = setting(1000, integer(1), "classes (the data set's, when it trains)")
    in_channels: int = setting(3, integer(1), "image channels (the data set's, when it trains)")
    image_size: int = setting(224, integer(1), "image side (the data set's, when it trains)")
    width_scale: float = setting(1.0, number(0, open_low=True), "multiplies the stem (64) and block output widths")
    stem_stride: int = setting(1, integer(1), "the cifar stem's stride (2 quarters every later layer's cost)")
    init: str = setting(
        "official",
        choice(*INITS),
        "official: N(0, 2/fan_out) ignoring groups (the official code's, torchvision's); per_path: each group its own conv",
    )
    zero_init_last_bn: bool = setting(
        False, boolean(), "gamma = 0 on each block's last BN: every block starts as its shortcut"
    )
    reference: Reference = group(Reference)
    match: str = setting("params", choice(*MATCH), "what width=auto matches to the reference: params or flops")


#: The spec's defaults are the schema's (the imagenet template at depth 50).
_DEFAULT = {f.name: f.default for f in dataclasses.fields(Model)}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One point of the ResNeXt design space.

    `width` is d, the bottleneck width of one path in the first stage; the
    grouped width of stage i is `cardinality * width * 2**i`. Block output
    widths are `256 * 2**i` scaled by `width_scale`, the stem `64 * width_scale`.
    `init` and `zero_init_last_bn` choose the initialisation (`ResNeXt.reset_parameters`);
    they change neither params nor FLOPs, but they are part of what a run trained.
    """

    template: str = _DEFAULT["template"]
    stage_blocks: tuple[int, ...] = IMAGENET_STAGE_BLOCKS[_DEFAULT["depth"]]
    cardinality: int = _DEFAULT["cardinality"]
    width: int = _DEFAULT["width"]
    residual: bool = _DEFAULT["residual"]
    block: str = _DEFAULT["block"]
    num_classes: int = _DEFAULT["num_classes"]
    in_channels: int = _DEFAULT["in_channels"]
    image_size: int = _DEFAULT["image_size"]
    width_scale: float = _DEFAULT["width_scale"]
    init: str = _DEFAULT["init"]
    zero_init_last_bn: bool = _DEFAULT["zero_init_last_bn"]
    stem_stride: int = _DEFAULT["stem_stride"]

    def __post_init__(self) -> None:
        if self.stem_stride != 1 and self.template != "cifar":
            raise ConfigError(
                f"model.stem_stride={self.stem_stride}: only the cifar template's stem takes a "
                "stride (the imagenet stem is the paper's 7x7/2 and max pool)"
            )
        if self.zero_init_last_bn and not self.residual:
            raise ConfigError(
                "model.zero_init_last_bn=true needs model.residual=true: without shortcuts a zero gamma "
                "silences every block, and nothing would train"
            )

    @property
    def depth(self) -> int:
        """Weighted layers: 3 per bottleneck block, plus the stem and the classifier."""
        return 3 * sum(self.stage_blocks) + 2

    @property
    def stem_width(self) -> int:
        return _scaled(64, self.width_scale)

    @property
    def stage_out_widths(self) -> tuple[int, ...]:
        return tuple(_scaled(256 * 2**i, self.width_scale) for i in range(len(self.stage_blocks)))

    @property
    def stage_group_widths(self) -> tuple[int, ...]:
        return tuple(self.cardinality * self.width * 2**i for i in range(len(self.stage_blocks)))

    @property
    def name(self) -> str:
        family = "ResNet" if self.cardinality == 1 else "ResNeXt"
        suffix = "" if self.residual else " (no shortcuts)"
        return f"{family}-{self.depth} {self.cardinality}x{self.width}d{suffix}"

    def summary(self) -> dict[str, Any]:
        """The spec as a flat JSON-ready dict, in paper vocabulary."""
        out = dataclasses.asdict(self)
        out["stage_blocks"] = list(self.stage_blocks)
        out["depth"] = self.depth
        out["name"] = self.name
        return out


def _scaled(channels: int, scale: float) -> int:
    return max(1, int(round(channels * scale)))


def cifar_stage_blocks(depth: int) -> tuple[int, int, int]:
    n, rem = divmod(depth - 2, 9)
    if rem or n < 1:
        raise ConfigError(f"model.depth={depth}: the cifar template builds depth 9n+2 (11, 20, 29, 38, ...)")
    return (n, n, n)


def stage_blocks_for(template: str, depth: int) -> tuple[int, ...]:
    if template == "cifar":
        return cifar_stage_blocks(depth)
    if depth not in IMAGENET_STAGE_BLOCKS:
        valid = ", ".join(map(str, IMAGENET_STAGE_BLOCKS))
        raise ConfigError(
            f"model.depth={depth}: the imagenet template builds depth {valid} (or set model.stage_blocks)"
        )
    return IMAGENET_STAGE_BLOCKS[depth]


def spec_from_config(node: Mapping[str, Any] | None, **data: int) -> ModelSpec:
    """A `model` node, checked against `Model`, as a spec.

    `data` may override `num_classes`, `in_channels` and `image_size`: the data a network trains on
    fixes those. `width: auto` is solved against `reference` (same template and depth), matching
    `match` (params or flops).
    """
    return spec_from_settings(parse(Model, node, "model"), **data)


def spec_from_settings(m: Model, **data: int) -> ModelSpec:
    """`spec_from_config` of a node already checked against `Model`."""
    if m.stage_blocks is not None:
        blocks = m.stage_blocks
        if len(blocks) != NUM_STAGES[m.template]:
            raise ConfigError(
                f"model.stage_blocks={list(blocks)}: the {m.template} template takes {NUM_STAGES[m.template]} "
                "integers >= 1"
            )
        if m.depth is not None and m.depth != 3 * sum(blocks) + 2:
            raise ConfigError(
                f"model.depth={m.depth}: conflicts with model.stage_blocks={list(blocks)} "
                f"(depth {3 * sum(blocks) + 2}); set one of them, or depth=null"
            )
    elif m.depth is None:
        raise ConfigError("model.depth=null: set model.depth or model.stage_blocks")
    else:
        blocks = stage_blocks_for(m.template, m.depth)
    for key, value in data.items():
        if not _is_int(value) or value < 1:
            raise ConfigError(f"model.{key}={value!r}: must be an integer >= 1")
    fields = dict(
        template=m.template,
        stage_blocks=blocks,
        cardinality=m.cardinality,
        residual=m.residual,
        block=m.block,
        num_classes=data.get("num_classes", m.num_classes),
        in_channels=data.get("in_channels", m.in_channels),
        image_size=data.get("image_size", m.image_size),
        width_scale=m.width_scale,
        init=m.init,
        zero_init_last_bn=m.zero_init_last_bn,
        stem_stride=m.stem_stride,
    )
    if m.width != "auto":
        return ModelSpec(**fields, width=m.width)
    ref = ModelSpec(**{**fields, "cardinality": m.reference.cardinality, "width": m.reference.width})
    return dataclasses.replace(ref, cardinality=m.cardinality, width=solve_width(ref, m.cardinality, m.match))


def reference_spec(spec: ModelSpec, m: Model) -> ModelSpec | None:
    """The network `spec`'s width was matched to (`width: auto` in `m`), else None: what train, plan and
    the report compare a matched network's complexity with."""
    if m.width != "auto":
        return None
    return dataclasses.replace(spec, cardinality=m.reference.cardinality, width=m.reference.width)
