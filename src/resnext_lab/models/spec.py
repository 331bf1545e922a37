"""The one description of a network: a small frozen spec.

Both the builder (`network.py`) and the analytic complexity (`complexity.py`)
read only this spec, so the params/FLOPs printed before training always describe
the network that trains. `spec_from_config` turns a Hydra `model` node into a
spec, validating every field first and solving `width: auto`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from resnext_lab.errors import ConfigError

TEMPLATES = ("imagenet", "cifar")
BLOCKS = ("grouped", "aggregated", "concat")
MATCH = ("params", "flops")
INITS = ("official", "per_path")

#: ImageNet template depths (paper Table 1 and the 200-layer net of Table 4).
IMAGENET_STAGE_BLOCKS: dict[int, tuple[int, ...]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
#: Number of stages of each template.
NUM_STAGES = {"imagenet": 4, "cifar": 3}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One point of the ResNeXt design space.

    `width` is d, the bottleneck width of one path in the first stage; the
    grouped width of stage i is `cardinality * width * 2**i`. Block output
    widths are `256 * 2**i` scaled by `width_scale`, the stem `64 * width_scale`.
    `init` and `zero_init_last_bn` choose the initialisation (`ResNeXt.reset_parameters`);
    they change neither params nor FLOPs, but they are part of what a run trained.
    """

    template: str = "imagenet"
    stage_blocks: tuple[int, ...] = (3, 4, 6, 3)
    cardinality: int = 1
    width: int = 64
    residual: bool = True
    block: str = "grouped"
    num_classes: int = 1000
    in_channels: int = 3
    image_size: int = 224
    width_scale: float = 1.0
    init: str = "official"
    zero_init_last_bn: bool = False
    stem_stride: int = 1

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


def _int_field(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"model.{name}={value!r}: must be an integer >= {minimum}")
    return value


def _choice(name: str, value: Any, accepted: tuple[str, ...]) -> str:
    if value not in accepted:
        raise ConfigError(f"model.{name}={value!r}: must be one of {', '.join(accepted)}")
    return value


def _bool_field(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"model.{name}={value!r}: must be true or false")
    return value


def spec_from_config(cfg: Mapping[str, Any], **data: int) -> ModelSpec:
    """Validate a `model` config node and turn it into a spec.

    `data` may override `num_classes`, `in_channels` and `image_size`: the data a
    network trains on fixes those. `width: auto` is solved against the node's
    `reference` (by default C=1, d=64 of the same template and depth), matching
    `match` (params or flops).
    """
    cfg = dict(cfg)
    template = _choice("template", cfg.get("template", "imagenet"), TEMPLATES)
    blocks_cfg = cfg.get("stage_blocks")
    if blocks_cfg is not None:
        blocks = tuple(blocks_cfg)
        if len(blocks) != NUM_STAGES[template] or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in blocks
        ):
            raise ConfigError(
                f"model.stage_blocks={list(blocks)}: the {template} template takes {NUM_STAGES[template]} integers >= 1"
            )
        depth = cfg.get("depth")
        if depth is not None and depth != 3 * sum(blocks) + 2:
            raise ConfigError(
                f"model.depth={depth}: conflicts with model.stage_blocks={list(blocks)} "
                f"(depth {3 * sum(blocks) + 2}); set one of them, or depth=null"
            )
    else:
        depth = cfg.get("depth")
        if depth is None:
            raise ConfigError("model.depth=null: set model.depth or model.stage_blocks")
        blocks = stage_blocks_for(template, _int_field("depth", depth))
    residual = _bool_field("residual", cfg.get("residual", True))
    scale = cfg.get("width_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
        raise ConfigError(f"model.width_scale={scale!r}: must be a number > 0")

    fields = dict(
        template=template,
        stage_blocks=blocks,
        cardinality=_int_field("cardinality", cfg.get("cardinality", 1)),
        residual=residual,
        block=_choice("block", cfg.get("block", "grouped"), BLOCKS),
        num_classes=_int_field("num_classes", data.get("num_classes", cfg.get("num_classes", 1000))),
        in_channels=_int_field("in_channels", data.get("in_channels", cfg.get("in_channels", 3))),
        image_size=_int_field("image_size", data.get("image_size", cfg.get("image_size", 224))),
        width_scale=float(scale),
        init=_choice("init", cfg.get("init", "official"), INITS),
        zero_init_last_bn=_bool_field("zero_init_last_bn", cfg.get("zero_init_last_bn", False)),
        stem_stride=_int_field("stem_stride", cfg.get("stem_stride", 1)),
    )
    width = cfg.get("width", 64)
    if width == "auto":
        from resnext_lab.models.complexity import solve_width

        ref_cfg = dict(cfg.get("reference") or {})
        ref = ModelSpec(
            **{
                **fields,
                "cardinality": _int_field("reference.cardinality", ref_cfg.get("cardinality", 1)),
                "width": _int_field("reference.width", ref_cfg.get("width", 64)),
            }
        )
        match = cfg.get("match", "params")
        _choice("match", match, MATCH)
        return dataclasses.replace(
            ref, cardinality=fields["cardinality"], width=solve_width(ref, fields["cardinality"], match)
        )
    return ModelSpec(**fields, width=_int_field("width", width))
