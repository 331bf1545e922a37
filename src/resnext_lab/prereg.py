"""A pre-registration as a file, and a sweep checked against it.

`task=preregister` writes `experiments/<experiment>/<scale>.prereg.json` beside the files that define the
experiment at that scale: every job's resolved settings (those shared by all jobs once, each job's own beside
its hash), the seeds and the pilot seeds, the declared analysis (the `report:` node: contrasts and families,
minimum effect, exclusion rule, sequential design) with the plateau rule, the commit and the date, and a hash
of the analysis code (`provenance.analysis_code`). A change is a dated amendment appended to the same file;
what a sweep or a report is checked against is the last amendment's state, else the first.

Before its first job, a sweep of a pre-registered experiment compares itself with that state
(`check_sweep`): a job's setting, a seed or the analysis code that differs stops it with one line naming the
difference. Jobs whose seeds are all pilot seeds are a pilot: their settings are not checked.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from resnext_lab.config import to_python
from resnext_lab.errors import ConfigError, first_line
from resnext_lab.provenance import analysis_code, digest

SUFFIX = ".prereg.json"
FORMAT = 1
#: top-level keys that do not change what a job computes (where it writes, how it logs, how a sweep runs), or
#: that are checked as the analysis (`report`), or are the preregister task's own: left out of a job's settings
NOT_JOB_SETTINGS = frozenset(
    {"hydra", "task", "out_root", "name", "resume", "logger", "sweep", "plan", "report", "seeds", "amend"}
    | {"pilot_seeds"}
)
#: settings below the groups that do not change what a job computes: where the data is, the progress bar
NOT_COMPUTED = frozenset(
    {
        "data.root",
        "data.download",
        "data.num_workers",
        "trainer.accelerator",
        "trainer.enable_progress_bar",
        "trainer.progress_bar_interval_s",
    }
)
_ABSENT = object()
_ABSENT_TEXT = "\0absent"
#: how a difference names its two sides: a sweep against its pre-registration, an amendment against the state before
WORDS = ("in the pre-registration", "here")
AMENDED = ("before", "after")
#: the experiments folder the config source serves (`resnext-experiments://[DIR]`, conf/config.yaml)
SOURCE = "resnext-experiments://"
CHECKOUT_EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def path_for(experiment: str, scale: str, searchpath: Sequence[str] = ()) -> Path:
    """Where an experiment's pre-registration at a scale lives: beside `<experiment>.yaml` in the first
    experiments folder of the search path that holds it (the checkout's by default)."""
    folders = [
        Path(p[len(SOURCE) :]) if p[len(SOURCE) :] else CHECKOUT_EXPERIMENTS for p in searchpath if p.startswith(SOURCE)
    ]
    folder = next((f for f in folders if (f / f"{experiment}.yaml").is_file()), CHECKOUT_EXPERIMENTS)
    return folder / experiment / f"{scale}{SUFFIX}"


def located(hydra: Any) -> Path | None:
    """The pre-registration file of the run whose hydra node is `hydra` (None: not an experiment)."""
    choices = hydra.runtime.choices
    experiment, scale = choices.get("experiment"), choices.get("scale")
    if not experiment or not scale or scale == "none":
        return None
    return path_for(str(experiment), str(scale), [str(p) for p in hydra.searchpath or ()])


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as {dotted key: value}; list items by index (`stage_blocks.0`)."""
    node = to_python(node) if isinstance(node, DictConfig | ListConfig) else node
    if isinstance(node, Mapping):
        items = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, list | tuple):
        items = [(str(i), v) for i, v in enumerate(node)]
    else:
        return {prefix: node if isinstance(node, int | float | str | bool | None) else str(node)}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flat(value, f"{prefix}.{key}" if prefix else key))
    return out if out or not prefix else {prefix: [] if isinstance(node, list | tuple) else {}}


def job_settings(cfg: Any) -> dict[str, Any]:
    """What a job computes: its resolved settings, flat, without those that do not change it."""
    keys = [k for k in cfg if k not in NOT_JOB_SETTINGS]
    settings = flat(
        {
            k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg[k], DictConfig | ListConfig) else cfg[k]
            for k in keys
        }
    )
    return {k: v for k, v in sorted(settings.items()) if k not in NOT_COMPUTED}


def settings_hash(settings: Mapping[str, Any]) -> str:
    return digest(json.dumps(dict(settings), sort_keys=True, separators=(",", ":"), default=str).encode())


def declared_analysis(cfg: Any) -> dict[str, Any]:
    """The analysis declared for the sweep: its `report:` node, flat, and the plateau rule the reports apply."""
    # scipy and pandas come with report/: not for every command
    from resnext_lab.report.checks import PLATEAU_METRIC, PLATEAU_TOL, PLATEAU_WINDOW

    report = cfg.get("report")
    out = flat({"report": OmegaConf.to_container(report, resolve=True) if report is not None else {}})
    out.update({"plateau.metric": PLATEAU_METRIC, "plateau.window": PLATEAU_WINDOW, "plateau.tol": PLATEAU_TOL})
    return out


def seeds_text(seeds: Sequence[int]) -> str:
    """Seeds as ranges: 0-4, 100."""
    seeds, parts = sorted(set(seeds)), []
    for s in seeds:
        if parts and s == parts[-1][1] + 1:
            parts[-1][1] = s
        else:
            parts.append([s, s])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in parts) or "none"


def design_seeds(cfg: Any) -> list[int] | None:
    """The seeds of a declared sequential design, `report.sequential`: first_seed (default 0), first_seed + 1, ...,
    `max` of them (docs/SEQUENTIAL.md); None where none is declared."""
    report = cfg.get("report")
    node = to_python(report.get("sequential")) if report is not None else None
    first = node.get("first_seed", 0) if isinstance(node, Mapping) else None
    if not isinstance(first, int) or not isinstance(node.get("max"), int):  # type: ignore[union-attr]
        return None
    return list(range(first, first + node["max"]))  # type: ignore[index]


def design_jobs(jobs: Sequence[tuple[Sequence[str], Any]], cfg: Any) -> list[tuple[list[str], Any]]:
    """A sequential sweep's jobs as far as its design may go: every cell at every seed of the design, whatever
    seeds the sweeper's params list (its rounds run the design's); other sweeps' jobs as they are."""
    seeds = design_seeds(cfg)
    if seeds is None:
        return [(list(o), c) for o, c in jobs]
    cells: dict[tuple[str, ...], Any] = {}
    for overrides, c in jobs:
        cells.setdefault(tuple(o for o in overrides if o.split("=", 1)[0] != "seed"), c)
    out = []
    for cell, c in cells.items():
        for seed in seeds:
            job = copy.deepcopy(c)
            with read_write(job), open_dict(job):
                job.seed = seed
            out.append(([*cell, f"seed={seed}"], job))
    return out


def state(jobs: Sequence[tuple[Sequence[str], Any]], cfg: Any, pilot_seeds: Sequence[int]) -> dict[str, Any]:
    """What is pre-registered of a sweep: its jobs' settings (a sequential design's up to its `max` seeds),
    seeds, pilot seeds, analysis and analysis code."""
    jobs = design_jobs(jobs, cfg)
    settings = [job_settings(c) for _, c in jobs]
    keys = sorted({k for s in settings for k in s})
    values = {k: {json.dumps(s.get(k, _ABSENT_TEXT)) for s in settings} for k in keys}  # True is not 1 here
    common = {k: settings[0][k] for k in keys if len(values[k]) == 1}
    varying = [k for k in keys if len(values[k]) > 1]
    seeds = sorted({int(s["seed"]) for s in settings})
    overlap = sorted(set(seeds) & set(pilot_seeds))
    if overlap:
        raise ConfigError(
            f"pilot_seeds={seeds_text(pilot_seeds)}: must be disjoint from the sweep's seeds ({seeds_text(seeds)}); "
            f"seed {seeds_text(overlap)} is both"
        )
    analysis = declared_analysis(cfg)
    report = cfg.get("report")
    table = OmegaConf.to_container(report, resolve=True) if report is not None and "rows" in report else None
    return {
        "seeds": seeds,
        "pilot_seeds": sorted(set(pilot_seeds)),
        "contrasts": _contrasts(table) if table else {"baseline": analysis.get("report.baseline")},
        "min_effect": analysis.get("report.min_effect"),
        "exclusion_rule": analysis.get("report.exclude"),
        "plateau_rule": {k.split(".")[1]: v for k, v in analysis.items() if k.startswith("plateau.")},
        "sequential": to_python(report.get("sequential")) if report is not None else None,
        "analysis": analysis,
        "analysis_code": analysis_code(),
        "varying": varying,
        "common": common,
        "jobs": [
            {
                "id": job_id(s, varying),
                "hash": settings_hash(s),
                "settings": {k: v for k, v in s.items() if k not in common},
            }
            for s in settings
        ],
    }


def _contrasts(table: dict[str, Any]) -> list[dict[str, Any]]:
    """A paper table's declared contrasts and families, as its report tests them."""
    from resnext_lab.report.table_def import validate_table

    return validate_table(table)["contrasts"]


def job_id(settings: Mapping[str, Any], varying: Sequence[str]) -> str:
    return " ".join(f"{k}={settings.get(k)}" for k in varying) or "the job"


def load(path: Path) -> dict[str, Any]:
    """A pre-registration file, read; a ConfigError line when it cannot be."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"pre-registration {path}: cannot read it ({first_line(err)})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("jobs"), list):
        raise ConfigError(f"pre-registration {path}: not a pre-registration of format {FORMAT}")
    return data


def effective(prereg: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state in force: the last amendment's, else the first."""
    return (prereg.get("amendments") or [prereg])[-1]


def _value(value: Any) -> str:
    return "absent" if value is _ABSENT else json.dumps(value)


def _settings_diff(before: Mapping[str, Any], now: Mapping[str, Any], words: tuple[str, str] = WORDS) -> list[str]:
    return [
        f"{k}: {_value(before.get(k, _ABSENT))} {words[0]}, {_value(now.get(k, _ABSENT))} {words[1]}"
        for k in sorted(set(before) | set(now))
        if json.dumps(before.get(k, None), sort_keys=True) != json.dumps(now.get(k, None), sort_keys=True)
        or (k in before) != (k in now)
    ]


def code_diff(before: Mapping[str, Any], now: Mapping[str, Any], words: tuple[str, str] = WORDS) -> list[str]:
    """The analysis code's differences, one per file."""
    if before.get("hash") == now.get("hash"):
        return []
    a, b = before.get("files") or {}, now.get("files") or {}
    out = []
    for path in sorted(set(a) | set(b)):
        if a.get(path) != b.get(path):
            how = (
                "added"
                if path not in a
                else "removed"
                if path not in b
                else f"changed ({a[path]} there, {b[path]} here)"
            )
            out.append(f"analysis code: {path} {how} since the pre-registration")
    return out or [f"analysis code: hash {before.get('hash')} in the pre-registration, {now.get('hash')} here"]


def _full(s: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    return {**s.get("common", {}), **job.get("settings", {})}


def differences(before: Mapping[str, Any], now: Mapping[str, Any], *, whole: bool) -> list[str]:
    """How `now` (a sweep's state) departs from `before` (a pre-registration's state), one line each.

    `whole`: `now` is the whole sweep (an amendment): seeds and jobs left out count too; else `now` may be part
    of it (a sweep that runs some of the jobs), and jobs on pilot seeds are not compared.
    """
    seeds, pilots = set(before["seeds"]), set(before["pilot_seeds"])
    words = AMENDED if whole else WORDS
    out: list[str] = []
    if whole:
        for key in ("seeds", "pilot_seeds"):
            if before[key] != now[key]:
                out.append(f"{key}: {seeds_text(before[key])} {words[0]}, {seeds_text(now[key])} {words[1]}")
    else:
        for seed in sorted(set(now["seeds"]) - seeds - pilots):
            out.append(
                f"seed: {seed} is neither a pre-registered seed ({seeds_text(seeds)}) nor a pilot seed "
                f"({seeds_text(pilots)})"
            )
    out += _settings_diff(before["analysis"], now["analysis"], words)
    out += code_diff(before["analysis_code"], now["analysis_code"], words)
    registered = {}
    for job in before["jobs"]:
        full = _full(before, job)
        registered[job_id(full, before["varying"])] = full
    seen, changed = set(), {}
    for job in now["jobs"]:
        full = _full(now, job)
        if not whole and int(full.get("seed", -1)) in pilots:
            continue
        key = job_id(full, before["varying"])
        seen.add(key)
        if key not in registered:
            if int(full.get("seed", -1)) in seeds or whole:
                out.append(f"job {key}: not a job of the pre-registration")
            continue
        for line in _settings_diff(registered[key], full, words):
            changed.setdefault(line, key)  # a setting changed in every job is named once
    out += list(changed)
    if whole:
        out += [f"job {key}: in the pre-registration, not here" for key in registered if key not in seen]
    return out


def role(seeds: Sequence[int], prereg_state: Mapping[str, Any]) -> str:
    """`pilot` when every seed is a pilot seed, else `confirmatory`."""
    pilots = set(prereg_state.get("pilot_seeds") or ())
    return "pilot" if seeds and set(seeds) <= pilots else "confirmatory"


def header(prereg: Mapping[str, Any]) -> str:
    """ "pre-registered at <commit> on <date>", with its amendments."""
    commit = (prereg.get("commit") or "unknown commit")[:10] + (" (dirty tree)" if prereg.get("dirty") else "")
    text = f"pre-registered at {commit} on {str(prereg.get('date'))[:10]}"
    for a in prereg.get("amendments") or []:
        text += f"; amendment {a['number']} on {str(a.get('date'))[:10]} ({a.get('why')})"
    return text


def amendment_lines(prereg: Mapping[str, Any]) -> list[str]:
    """Each amendment's changes, one line each."""
    return [f"amendment {a['number']}: {change}" for a in prereg.get("amendments") or [] for change in a["changes"]]


def check_sweep(path: Path, jobs: Sequence[tuple[Sequence[str], Any]], cfg: Any) -> str:
    """Check a sweep's jobs against the pre-registration at `path` before the first starts: its role (pilot or
    confirmatory), or a ConfigError naming the first difference (and how many more there are)."""
    prereg = load(path)
    before = effective(prereg)
    jobs = design_jobs(jobs, cfg)
    seeds = sorted({int(c.get("seed")) for _, c in jobs})
    kind = role(seeds, before)
    pilots = set(before["pilot_seeds"])
    if kind == "confirmatory" and pilots & set(seeds):
        raise ConfigError(
            f"seeds {seeds_text(seeds)}: a sweep is a pilot (seeds {seeds_text(pilots)}) or confirmatory "
            f"(seeds {seeds_text(before['seeds'])}), not both (pre-registration {path})"
        )
    if kind == "pilot":
        return kind
    found = differences(before, state(jobs, cfg, before["pilot_seeds"]), whole=False)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ConfigError(
            f"departs from its pre-registration ({path}): {found[0]}{more}; undo it, or record it first as an "
            "amendment: task=preregister amend='why'"
        )
    return kind


def job_record(cfg: Any, hydra: Any) -> dict[str, Any] | None:
    """What results.json says of a job's pre-registration: the file, the job's settings hash and its role."""
    path = located(hydra)
    if path is None or not path.is_file():
        return None
    try:
        before = effective(load(path))
    except ConfigError:
        return {"file": str(path), "settings_hash": settings_hash(job_settings(cfg)), "role": None}
    return {"file": str(path), "settings_hash": settings_hash(job_settings(cfg)), "role": role([int(cfg.seed)], before)}


def other_settings(previous: Mapping[str, Any], declared: Mapping[str, Any] | None) -> str | None:
    """How a folder's earlier run differs from this job by its settings hash (None: the same, or not known):
    a run trained before an amendment is not taken over by the amended job; its results stand beside."""
    before = previous.get("prereg") if isinstance(previous.get("prereg"), Mapping) else {}
    then, now = before.get("settings_hash"), (declared or {}).get("settings_hash")
    return f"settings hash {then} there, {now} here" if then and now and then != now else None
