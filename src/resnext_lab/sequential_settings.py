"""The schema of `report.sequential`, a sweep's sequential design (docs/SEQUENTIAL.md), in config.py's style:
apart from the statistics (report/sequential.py) so that every job's check (`job.validate`) reads it cheaply."""

from __future__ import annotations

import dataclasses

from resnext_lab.config import choice, integer, number, setting, string
from resnext_lab.errors import ConfigError

#: the Lan-DeMets spending functions report/spending.py computes
SPENDING = ("obrien_fleming", "pocock")


@dataclasses.dataclass(frozen=True)
class SequentialSettings:
    """`report.sequential`: the design, checked (one line naming the setting) before the first job."""

    start: int = setting(5, integer(2), "seeds per cell in the first round (the first look)")
    step: int = setting(5, integer(1), "seeds added to each open cell per round")
    max: int = setting(30, integer(2), "seeds per cell at most: the last look")
    spending: str = setting("obrien_fleming", choice(*SPENDING), "the Lan-DeMets alpha-spending function")
    first_seed: int = setting(0, integer(0), "the design's seeds: first_seed, first_seed + 1, ..., max of them")
    sd: float | None = setting(
        None, number(0, open_low=True, null=True), "a contrast's per-seed spread for task=plan (null: the pilot's)"
    )
    pilot: str | None = setting(
        None, string("a pilot sweep's folder", null=True), "task=plan takes the spread from this sweep's contrasts"
    )

    def __post_init__(self) -> None:
        if self.max < self.start:
            raise ConfigError(f"report.sequential.max={self.max}: must be >= report.sequential.start ({self.start})")
