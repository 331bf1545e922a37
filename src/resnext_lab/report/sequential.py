"""Sequential sweeps: seeds in rounds until every declared contrast of a table is decided, both ways.

An experiment declares the design beside its table (docs/SEQUENTIAL.md):

    report:
      min_effect: 0.5          # the equivalence margin, and the effect the design is powered for
      sequential: {start: 5, step: 5, max: 30, spending: obrien_fleming}

After each round (look) every open contrast is tested both ways, on the same t-tests as the closing report
(`tables.analyse`, `stats.difference`): "differs" (two-sided, level alpha) and "equivalent within
min_effect" (TOST, level alpha), each against Lan-DeMets boundaries that hold its level over all looks,
with the group-sequential Holm procedure within each declared family (`spending.py`). A decision is
recorded in `<sweep>/sequential.json` with the look that made it, and never made again; a cell whose
contrasts are all decided gets no more seeds. The design's seeds are first_seed, first_seed + 1, ...: round
k runs the seeds between the (k-1)-th and the k-th look's count, so a resumed sweep runs the same seeds.

    python -m resnext_lab.report.sequential --simulate    # error rates, power and cost (sequential_sim.py)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnext_lab import render
from resnext_lab.config import parse, to_python
from resnext_lab.errors import ConfigError
from resnext_lab.files import write_json_atomic
from resnext_lab.report import stats
from resnext_lab.report.collect import load_results, matches
from resnext_lab.report.sequential_sim import look_sizes, summary
from resnext_lab.report.spending import SPENDING, level_table, step_down
from resnext_lab.report.table_def import cell_names, validate_table
from resnext_lab.report.tables import analyse
from resnext_lab.sequential_settings import SequentialSettings

FILE = "sequential.json"
DIFFERS, EQUIVALENT, OPEN, UNDECIDED, NOT_RUN = "differs", "equivalent", "open", "undecided", "not run"


@dataclasses.dataclass(frozen=True)
class Design:
    """A table's sequential design: its settings, the table's analysis and its declared contrasts."""

    settings: SequentialSettings
    table: dict[str, Any]

    @property
    def looks(self) -> tuple[int, ...]:
        s = self.settings
        return look_sizes(s.start, s.step, s.max)

    def round_seeds(self, k: int) -> list[int]:
        """The seeds round k (0-based) adds to each open cell."""
        first, sizes = self.settings.first_seed, (0, *self.looks)
        return list(range(first + sizes[k], first + sizes[k + 1]))

    def record(self) -> dict[str, Any]:
        """What sequential.json holds of the design: a resumed sweep must find the same."""
        t = self.table
        return {
            **dataclasses.asdict(self.settings),
            "alpha": t["alpha"],
            "min_effect": t["min_effect"],
            "test": t["test"],
            "metric": t["metric"],
            "contrasts": [f"{c['cell']} vs {c['vs']} ({c['family']})" for c in t["contrasts"]],
        }


SETTINGS = ("spending", "first_seed", "start", "step", "max", "alpha", "min_effect", "test", "metric", "contrasts")


def design_of(report: Any) -> Design | None:
    """The sequential design of a config's `report` node (None where it declares none); a ConfigError names the
    bad setting."""
    report = to_python(report) or {}
    node = report.get("sequential") if isinstance(report, Mapping) else None
    if node is None:
        return None
    settings = parse(SequentialSettings, node, "report.sequential")
    if not report.get("rows"):
        raise ConfigError("report.sequential: needs a table (report.rows and its contrasts) whose contrasts it decides")
    table = validate_table(report)
    if not table["contrasts"]:
        raise ConfigError(
            "report.sequential: the table declares no contrast to decide (report.contrasts, or rows with a baseline)"
        )
    if table["min_effect"] is None:
        raise ConfigError(
            "report.sequential: needs report.min_effect, the margin of 'equivalent' and the effect it is powered for"
        )
    return Design(settings, table)


# -- sequential.json ------------------------------------------------------------------------------


def load_state(sweep_dir: Path, design: Design) -> dict[str, Any]:
    """The recorded looks and decisions, or a fresh record; a record of another design is refused (one line)."""
    path = Path(sweep_dir) / FILE
    fresh = {"design": design.record(), "looks": [], "decisions": {}}
    if not path.is_file():
        return fresh
    try:
        state = json.loads(path.read_text())
        recorded = state["design"]
        state["looks"], state["decisions"]  # noqa: B018 (both must be there)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: cannot read the recorded looks ({err}); move it away to start afresh") from err
    now = design.record()
    changed = [k for k in SETTINGS if recorded.get(k) != now.get(k)]
    if changed:
        key = changed[0]
        raise ConfigError(
            f"report.sequential: {path} records looks of another design ({key}: {recorded.get(key)!r} there, "
            f"{now.get(key)!r} now); its decisions stand: restore the design, or use another out_root or name"
        )
    return state


def write_state(sweep_dir: Path, state: dict[str, Any]) -> Path:
    return write_json_atomic(Path(sweep_dir) / FILE, state)


def finished(state: Mapping[str, Any], design: Design) -> bool:
    """Every contrast decided, or the last look made."""
    decided = all(d["decision"] != OPEN for d in state["decisions"].values()) and state["decisions"]
    return bool(decided) or len(state["looks"]) >= len(design.looks)


# -- one look ---------------------------------------------------------------------------------------


def _within(results: Sequence[Mapping[str, Any]], design: Design, n: int) -> list[Mapping[str, Any]]:
    """The jobs of the design's first `n` seeds (a sweep folder may hold others)."""
    seeds = set(range(design.settings.first_seed, design.settings.first_seed + n))
    return [r for r in results if r.get("seed") in seeds]


def _information(outcome: Any) -> int:
    """Seeds per cell the contrast's test used: shared seeds when paired, else the smaller side."""
    d = outcome.diff
    if d is None or d.delta is None:
        return 0
    return d.n if d.method == stats.PAIRED else min(len(outcome.cell.values), len(outcome.reference.values))


def take_look(state: dict[str, Any], results: Sequence[Mapping[str, Any]], design: Design) -> dict[str, Any]:
    """Look number len(state["looks"]) + 1 on the sweep's `results`: every open contrast tested both ways, the
    new decisions recorded; decisions already made are kept as they are. Returns the new state (not written)."""
    k = len(state["looks"])
    last = k == len(design.looks) - 1
    n_look = design.looks[k]
    table = design.table
    _, outcomes = analyse(_within(results, design, n_look), table)
    alpha, spending, maximum = table["alpha"], design.settings.spending, design.settings.max
    decisions = {name: dict(d) for name, d in state["decisions"].items()}
    entry: dict[str, Any] = {"look": k + 1, "seeds": n_look, "contrasts": {}}
    for family in dict.fromkeys(o.family for o in outcomes):
        members = [o for o in outcomes if o.family == family]
        for o in members:
            decisions.setdefault(o.name, {"decision": OPEN, "family": family, "differs": False, "equivalent": False})
            if o.verdict == stats.NOT_RUN:
                decisions[o.name].update(decision=NOT_RUN, look=k + 1)
        members = [o for o in members if decisions[o.name]["decision"] != NOT_RUN]
        if not members:
            continue
        # the seeds at each earlier look where the contrast was tested: the looks its level was spent at
        history = [[lk["contrasts"][o.name]["n"] for lk in state["looks"] if _tested(lk, o.name)] for o in members]
        n_now = [_information(o) for o in members]
        # a contrast is tested when it is open and has seeds it had not at its previous look
        testable = np.array(
            [
                [
                    decisions[o.name]["decision"] == OPEN and n >= 2 and n > max([0, *h])
                    for o, n, h in zip(members, n_now, history, strict=True)
                ]
            ]
        )
        # information fractions; the design's last look spends what is left, whatever seeds it got
        fractions = [
            (*(x / maximum for x in h), 1.0 if last else n / maximum) if t else (1.0,)
            for h, n, t in zip(history, n_now, testable[0], strict=True)
        ]
        size = len(members)
        p = np.array([[_or_inf(o.diff.p if o.diff else None) for o in members]])
        p_eq = np.array([[_or_inf(o.diff.p_equiv if o.diff else None) for o in members]])
        rej_d = np.array([[decisions[o.name]["differs"] for o in members]])
        rej_e = np.array([[decisions[o.name]["equivalent"] for o in members]])
        lv_d = level_table(fractions, alpha, spending, True, size)
        lv_e = level_table(fractions, alpha, spending, False, size)
        new_d = step_down(p, testable, rej_d, lv_d[None])
        new_e = step_down(p_eq, testable, rej_e, lv_e[None])
        for i, o in enumerate(members):
            d = decisions[o.name]
            open_d, open_e = size - int(rej_d.sum()), size - int(rej_e.sum())
            entry["contrasts"][o.name] = {
                "n": n_now[i],
                "delta": o.diff.delta if o.diff else None,
                "p": o.diff.p if o.diff else None,
                "p_equiv": o.diff.p_equiv if o.diff else None,
                "level": float(lv_d[i, max(open_d, 1) - 1]) if testable[0, i] else None,
                "level_equiv": float(lv_e[i, max(open_e, 1) - 1]) if testable[0, i] else None,
                "tested": bool(testable[0, i]),
            }
            if not testable[0, i]:
                if d["decision"] == OPEN and last:
                    d.update(decision=UNDECIDED, look=k + 1, seeds=n_now[i])
                continue
            d["differs"], d["equivalent"] = bool(new_d[0, i]), bool(new_e[0, i])
            if d["differs"] or d["equivalent"]:
                d.update(decision=_decision(d, table["test"]), look=k + 1, seeds=n_now[i], delta=o.diff.delta)
                d["verdict"] = _verdict(d, o.diff.delta, table["test"])
            elif last:
                d.update(decision=UNDECIDED, look=k + 1, seeds=n_now[i], delta=o.diff.delta)
                d["verdict"] = stats.NOT_SHOWN_EQUAL if table["test"] == stats.EQUIVALENCE else stats.INCONCLUSIVE
            entry["contrasts"][o.name]["decision"] = d["decision"]
    return {**state, "looks": [*state["looks"], entry], "decisions": decisions}


def _tested(look: Mapping[str, Any], name: str) -> bool:
    return bool(look["contrasts"].get(name, {}).get("tested"))


def _or_inf(p: float | None) -> float:
    return np.inf if p is None else float(p)


def _decision(d: Mapping[str, Any], test: str) -> str:
    """Both ways at once (a small difference inside the margin): the test the table declared wins, as in
    `stats.verdict`."""
    if d["differs"] and d["equivalent"]:
        return EQUIVALENT if test == stats.EQUIVALENCE else DIFFERS
    return DIFFERS if d["differs"] else EQUIVALENT


def _verdict(d: Mapping[str, Any], delta: float | None, test: str) -> str:
    if d["decision"] == EQUIVALENT:
        return stats.EQUIVALENT
    if test == stats.EQUIVALENCE:
        return stats.DIFFER
    return stats.BETTER if (delta or 0) < 0 else stats.WORSE


# -- which jobs the next round runs -----------------------------------------------------------------


def job_key(overrides: Sequence[str]) -> frozenset[str]:
    """A job's overrides without its seed: the cell it belongs to in the sweep."""
    return frozenset(o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "seed")


def open_keys(
    keys: Sequence[frozenset[str]], results: Sequence[Mapping[str, Any]], design: Design, state: Mapping[str, Any]
) -> list[frozenset[str]]:
    """The job keys that the next round runs: those of a table cell with an open contrast (a key with no
    readable result yet, which cannot be placed, runs too)."""
    rows = design.table["rows"]
    names = cell_names(rows)
    open_cells = {
        side
        for c in design.table["contrasts"]
        if state["decisions"].get(f"{c['cell']} vs {c['vs']}", {}).get("decision", OPEN) == OPEN
        for side in (c["cell"], c["vs"])
    }
    cells = [(names[(r["label"], c["label"])], c["match"]) for r in rows for c in r["cells"]]
    out = []
    for key in keys:
        mine = [r for r in results if r.get("overrides") is not None and job_key(r["overrides"]) == key]
        if not mine or any(name in open_cells for r in mine[:1] for name, match in cells if matches(r, match)):
            out.append(key)
    return out


def decisions_text(state: Mapping[str, Any]) -> str:
    """Each contrast's decision and the look that made it, as a terminal table."""
    rows = [
        (
            name,
            d.get("family", ""),
            d["decision"],
            d.get("verdict", ""),
            str(d.get("look", "")),
            str(d.get("seeds", "")),
            "" if d.get("delta") is None else f"{d['delta']:+.2f}",
        )
        for name, d in state["decisions"].items()
    ]
    columns = ("contrast", "family", "decision", "verdict", "look", "seeds", "delta")
    return render.terminal(columns, rows, title=f"sequential decisions after look {len(state['looks'])}")


def pilot_sd(folder: str | Path, design: Design) -> float | None:
    """The per-seed spread of the table's contrasts in a pilot sweep (root mean square over the contrasts that
    have one), or None where it has none."""
    _, outcomes = analyse(load_results(folder), design.table)
    spreads = [o.diff.sd for o in outcomes if o.diff is not None and o.diff.sd]
    return float(np.sqrt(np.mean(np.square(spreads)))) if spreads else None


def price(design: Design, seeds: int, seconds: float, count: int = 4000) -> str:
    """task=plan's lines for a sequential sweep: its cost at the maximum, and expected under no effect and at
    the declared effect, from `seconds` that the plan gives for `seeds` seeds of every cell. Expected seeds
    come from the simulation (`sequential_sim`) of the largest family as contrasts against one baseline."""
    s, per_seed = design.settings, seconds / max(seeds, 1)
    looks = ", ".join(map(str, design.looks))
    lines = [f"sequential design: looks at {looks} seeds per cell ({s.spending}); at most {_hours(per_seed * s.max)}"]
    sd, source = s.sd, "report.sequential.sd"
    if sd is None and s.pilot:
        sd, source = pilot_sd(s.pilot, design), f"the pilot {s.pilot}"
    if sd is None:
        lines.append("expected cost: needs report.sequential.sd, or report.sequential.pilot with per-seed contrasts")
        return "\n".join(lines)
    families = [c["family"] for c in design.table["contrasts"]]
    m = max(families.count(f) for f in set(families))
    row = summary(design.looks, m, design.table["min_effect"], sd, design.table["alpha"], s.spending, count)[0]
    expected = {k: float(row[f"jobs ({k})"]) / (m + 1) for k in ("no effect", "at the effect")}
    lines.append(
        f"expected (sd {sd:.3g} from {source}, {count:,} simulated tables): under no effect "
        f"{expected['no effect']:.1f} seeds per cell, {_hours(per_seed * expected['no effect'])}; at the declared "
        f"effect {design.table['min_effect']:g}: {expected['at the effect']:.1f}, "
        f"{_hours(per_seed * expected['at the effect'])}; power {float(row['power (at the effect)']):.2f}"
    )
    return "\n".join(lines)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def main(argv: Sequence[str] | None = None) -> None:
    """`--simulate`: the design's error rates, power and expected jobs beside a fixed design (docs/SEQUENTIAL.md)."""
    parser = argparse.ArgumentParser(prog="python -m resnext_lab.report.sequential", description=main.__doc__)
    parser.add_argument("--simulate", action="store_true", required=True)
    parser.add_argument("--start", type=int, default=5)
    parser.add_argument("--step", type=int, default=5)
    parser.add_argument("--max", type=int, default=30)
    parser.add_argument("--spending", choices=SPENDING, default="obrien_fleming")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--contrasts", type=int, default=3, help="contrasts in the family, each against a baseline")
    parser.add_argument("--effect", type=float, default=0.5, help="min_effect: the margin and the declared effect")
    parser.add_argument("--sd", type=float, nargs="+", default=[0.5, 1.0], help="spread of a per-seed difference")
    parser.add_argument("--tables", type=int, default=20_000)
    args = parser.parse_args(argv)
    looks = look_sizes(args.start, args.step, args.max)
    print(
        f"looks at {', '.join(map(str, looks))} seeds per cell; {args.spending} spending, alpha {args.alpha:g}; "
        f"{args.contrasts} contrasts against one baseline, Holm; effect = margin = {args.effect:g}; "
        f"{args.tables:,} simulated tables per row (numpy seed 0)\n"
    )
    for sd in args.sd:
        rows = summary(looks, args.contrasts, args.effect, sd, args.alpha, args.spending, args.tables)
        columns = tuple(rows[0])
        body = [tuple(_cell(v) for v in r.values()) for r in rows]
        print(f"sd of a per-seed difference {sd:g} (effect / sd = {args.effect / sd:.2f}):\n")
        print("\n".join(render.markdown(columns, body, right=columns[1:])) + "\n")


def _cell(v: Any) -> str:
    """A rate to four places, a count of jobs to one."""
    if not isinstance(v, float):
        return str(v)
    return f"{v:.4f}" if v < 1 else f"{v:.1f}"


if __name__ == "__main__":
    main()
