"""Design spaces as populations: networks sampled from a space, each an ordinary job of the sweep.

A design space gives ranges: blocks per stage, the width d of one path, the cardinality C (C = 1 alone is
the ResNet space). `sample` draws networks from each space with its own seeded generator, computes each
one's exact params and FLOPs (`models.complexity`, before anything trains) and keeps those inside the
complexity band, until each space has `networks` distinct ones. The same settings draw the same networks
on any machine. `jobs` turns them into the sweep's job overrides, crossed with whatever else the command
line sweeps (seeds, say); the design-space sweeper (`hydra/sweeper=design_space`) launches them, and the
sweep's checks and `task=plan` see the same list (`job.check_sweep`).

Following Radosavovic et al., "On Network Design Spaces for Visual Recognition" (ICCV 2019), the spaces
are compared by their error EDFs, normalised for complexity: `report/design_space.py`.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from typing import Any

from resnext_lab.config import REQUIRED, Rule, choice, group, integer, number, parse, setting, to_python
from resnext_lab.data.settings import DATA_SCHEMAS
from resnext_lab.errors import ConfigError
from resnext_lab.models import complexity
from resnext_lab.models.spec import NUM_STAGES, spec_from_config

#: Where the sweeper's settings live in a composed config, and its target there.
SWEEPER_TARGET = "hydra_plugins.resnext_lab.design_space_sweeper.DesignSpaceSweeper"
#: The keys each sampled job sets: which space and which of its networks, and the network itself.
SPACE_KEY, INDEX_KEY = "sample.space", "sample.index"
#: Draws per network kept before a space is declared out of its band.
MAX_DRAWS_PER_NETWORK = 1000


def _int_list(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) > 0 and all(isinstance(i, int) and i >= 1 for i in v)


def _pair(v: Any) -> bool:
    return _int_list(v) and len(v) == 2 and v[0] <= v[1]


@dataclasses.dataclass(frozen=True)
class Space:
    """One design space: each network draws its stages' blocks, its d and its C uniformly from these."""

    blocks: tuple[int, int] = setting(
        [1, 4], Rule(_pair, "[min, max], integers >= 1", tuple), "blocks of each stage, drawn per stage"
    )
    width: tuple[int, int] = setting(
        [4, 32], Rule(_pair, "[min, max], integers >= 1", tuple), "d, one path's width in the first stage"
    )
    cardinality: tuple[int, ...] = setting(
        [1], Rule(_int_list, "a list of integers >= 1", tuple), "the values C is drawn from (1: the ResNet space)"
    )


@dataclasses.dataclass(frozen=True)
class Band:
    """The complexity band every sampled network must fall in (bounds included)."""

    quantity: str = setting("flops", choice("params", "flops"), "what the band bounds")
    low: float = setting(0.0, number(0), "the lowest params or FLOPs (multiply-adds) kept")
    high: float = setting(1e18, number(0, open_low=True), "the highest kept")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Population:
    """`hydra.sweeper` of a design-space sweep: the spaces, how many networks each, the band, the seed."""

    open_keys = True  # _target_ and params: the sweeper's, not the population's

    networks: int = setting(50, integer(1), "networks sampled from each space")
    seed: int = setting(0, integer(0), "seeds the sampling (each space draws from its own generator)")
    band: Band = group(Band)
    spaces: Any = setting(
        REQUIRED, Rule(lambda v: isinstance(v, Mapping) and len(v) > 0, "a mapping of space names to spaces"), "spaces"
    )


@dataclasses.dataclass(frozen=True)
class Network:
    """One sampled network: its space, its index there, its shape and its exact complexity."""

    space: str
    index: int
    stage_blocks: tuple[int, ...]
    cardinality: int
    width: int
    params: int
    flops: int

    def overrides(self) -> list[str]:
        blocks = ",".join(map(str, self.stage_blocks))
        return [
            f"{SPACE_KEY}={self.space}",
            f"{INDEX_KEY}={self.index}",
            f"model.stage_blocks=[{blocks}]",
            f"model.cardinality={self.cardinality}",
            f"model.width={self.width}",
        ]


def population(node: Mapping[str, Any]) -> tuple[Population, dict[str, Space]]:
    """The sweeper node checked: its settings and each space's."""
    pop = parse(
        Population, {k: v for k, v in to_python(node).items() if k not in ("_target_", "params")}, "hydra.sweeper"
    )
    spaces = {str(name): parse(Space, space, f"hydra.sweeper.spaces.{name}") for name, space in pop.spaces.items()}
    return pop, spaces


def sample(
    pop: Population, spaces: Mapping[str, Space], model: Mapping[str, Any], data: Mapping[str, Any]
) -> list[Network]:
    """`pop.networks` distinct networks of each space within the band, built on the `model` node (template,
    width_scale, ...) for the `data` node's images; a ConfigError when a space cannot fill the band."""
    settings = parse(DATA_SCHEMAS[str(data.get("name", "fashion_mnist"))], data, "data")
    dims = dict(num_classes=settings.num_classes, in_channels=settings.in_channels, image_size=settings.image_size)
    template = str(model.get("template", "imagenet"))
    found: list[Network] = []
    for name, space in spaces.items():
        rng = random.Random(f"{pop.seed}:{name}")
        seen: set[tuple[Any, ...]] = set()
        draws = 0
        while len(seen) < pop.networks:
            draws += 1
            if draws > MAX_DRAWS_PER_NETWORK * pop.networks:
                raise ConfigError(
                    f"hydra.sweeper.band={pop.band.quantity} in [{pop.band.low:g}, {pop.band.high:g}]: space {name} "
                    f"gave {len(seen)} of {pop.networks} distinct networks in {draws - 1} draws; widen the band "
                    "or the space"
                )
            blocks = tuple(rng.randint(*space.blocks) for _ in range(NUM_STAGES[template]))
            width = rng.randint(*space.width)
            cardinality = rng.choice(space.cardinality)
            shape = (blocks, cardinality, width)
            if shape in seen:
                continue
            node = {**model, "depth": None, "stage_blocks": list(blocks), "cardinality": cardinality, "width": width}
            cost = complexity(spec_from_config(node, **dims))
            if not pop.band.low <= cost[pop.band.quantity] <= pop.band.high:
                continue
            seen.add(shape)
            found.append(Network(name, len(seen) - 1, blocks, cardinality, width, cost["params"], cost["flops"]))
    return found


def is_design_sweep(config: Any) -> bool:
    """Whether a composed config (hydra node included) sweeps with the design-space sweeper."""
    return str(config.hydra.sweeper.get("_target_", "")) == SWEEPER_TARGET


def jobs(config: Any, expand: Any) -> list[list[str]]:
    """Every job of a design-space sweep: each sampled network crossed with the other swept settings.

    `expand(texts)`: the jobs of a list of plain overrides as the basic sweeper expands them (the sweeper's
    `params`, then the command line); the network's own overrides come first in each job."""
    pop, spaces = population(config.hydra.sweeper)
    model, data = to_python(config.model), to_python(config.data)
    networks = sample(pop, spaces, model, data)
    params = to_python(config.hydra.sweeper.get("params") or {})
    rest = expand([f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task))
    return [[*n.overrides(), *other] for n in networks for other in rest]


def network_of(overrides: Sequence[str]) -> tuple[str, int] | None:
    """(space, index) of a job's overrides; None for a job that was not sampled."""
    values = dict(o.split("=", 1) for o in overrides if "=" in o)
    if SPACE_KEY not in values or INDEX_KEY not in values:
        return None
    return values[SPACE_KEY], int(values[INDEX_KEY])
