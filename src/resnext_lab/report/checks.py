"""Per-job checks of how a run trained, read from its per-epoch curves, and the exclusion rules.

A table declares its exclusion rule before it runs (`report.exclude: <rule>`); the rule is applied to
every job of the table alike, excluded jobs are listed with their reason, and a row that loses half
of its jobs or more to it is rendered "not interpretable" by the code, not by a hand-written note.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from resnext_lab.config import EXCLUSION_RULES
from resnext_lab.errors import ConfigError
from resnext_lab.report.collect import load_curves, lookup

#: the plateau criterion's defaults: the best validation error of the last WINDOW epochs improves on the best
#: before them by less than TOL points
PLATEAU_METRIC, PLATEAU_WINDOW, PLATEAU_TOL = "val/top1_err", 2, 0.25


def _chance(result: Mapping[str, Any]) -> float:
    return math.log(int(lookup(result, "model.num_classes") or 10))


def regime(result: Mapping[str, Any], num_classes: int | None = None) -> dict[str, Any]:
    """One job's training regime from its per-epoch curves.

    `settled`: the last epoch's mean training loss is below chance (ln of the class count) and below
    the first epoch's; `falling`: the training error of the last epoch is below the one before;
    `rough_start`: the first epoch's mean training loss is above chance (the loss rose before it fell);
    `plateau`: the plateau criterion (`plateau`), None where the curve is too short to judge.
    """
    chance = math.log(num_classes) if num_classes else _chance(result)
    curves = load_curves(result)
    loss = curves["train/loss"].dropna() if "train/loss" in curves else []
    err = curves["train/top1_err"].dropna() if "train/top1_err" in curves else []
    out: dict[str, Any] = {"epochs": len(loss), "first_loss": None, "last_loss": None, "last_err": None}
    if len(loss):
        out["first_loss"], out["last_loss"] = float(loss.iloc[0]), float(loss.iloc[-1])
        out["settled"] = out["last_loss"] < chance and out["last_loss"] < out["first_loss"]
        out["rough_start"] = out["first_loss"] > chance
    if len(err):
        out["last_err"] = float(err.iloc[-1])
        out["falling"] = bool(len(err) > 1 and err.iloc[-1] < err.iloc[-2])
    out["plateau"] = plateau(result, curves=curves)
    return out


def plateau(
    result: Mapping[str, Any],
    metric: str = PLATEAU_METRIC,
    window: int = PLATEAU_WINDOW,
    tol: float = PLATEAU_TOL,
    curves: Any = None,
) -> bool | None:
    """Whether the job trained to a plateau: the best `metric` of its last `window` epochs is less than
    `tol` points below the best of all epochs before them. None with fewer than `window` + 1 epochs."""
    curves = load_curves(result) if curves is None else curves
    if metric not in curves:
        return None
    values = curves[metric].dropna()
    if len(values) < window + 1:
        return None
    return bool(values.iloc[:-window].min() - values.iloc[-window:].min() < tol)


def first_epoch_above_chance(result: Mapping[str, Any]) -> str | None:
    """Excluded when the first epoch's mean training loss is above ln(classes): the loss rose before it fell."""
    curves = load_curves(result)
    if "train/loss" not in curves or curves["train/loss"].dropna().empty:
        return None
    first = float(curves["train/loss"].dropna().iloc[0])
    chance = _chance(result)
    return f"first-epoch training loss {first:.2f} above chance ({chance:.2f})" if first > chance else None


#: `report.exclude` -> the rule: a job's reason to be excluded, or None to keep it
EXCLUSIONS: dict[str, Callable[[Mapping[str, Any]], str | None]] = {
    "first_epoch_above_chance": first_epoch_above_chance,
}
assert tuple(EXCLUSIONS) == EXCLUSION_RULES, "config.EXCLUSION_RULES names the rules coded here"


def exclusion_rule(name: str | None) -> Callable[[Mapping[str, Any]], str | None] | None:
    """The rule `report.exclude` names (None: exclude nothing); a ConfigError line for an unknown name."""
    if name is None:
        return None
    if name not in EXCLUSIONS:
        raise ConfigError(f"report.exclude={name!r}: must be null or one of {', '.join(EXCLUSIONS)}")
    return EXCLUSIONS[name]


#: a row is not interpretable when the exclusion rule removes at least this fraction of its completed jobs
ROW_EXCLUDED_FRACTION = 0.5
