"""What a report says of its jobs' pre-registration and provenance, before any number.

"pre-registered at <commit> on <date>: no deviation", or each deviation and amendment; a confirmatory report
that holds a pilot seed is refused (one ConfigError line). Then which commits the jobs ran at, and whether
any ran from a dirty tree (its diff kept in the sweep's `provenance/` folder).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from resnext_lab.errors import ConfigError
from resnext_lab.overrides import comparable
from resnext_lab.prereg import SUFFIX, amendment_lines, code_diff, effective, header, load, role, seeds_text
from resnext_lab.provenance import DIFF_FOLDER, analysis_code
from resnext_lab.report.table_def import EXPERIMENT_DIRS

#: the analysis a report is run with, as the pre-registration names it
ANALYSIS_KEYS = {
    "min_effect": "report.min_effect",
    "alpha": "report.alpha",
    "test": "report.test",
    "exclude": "report.exclude",
}


def find(results: Sequence[Mapping[str, Any]], path: str | Path | None = None) -> Path | None:
    """The pre-registration of a sweep's jobs: `path`, else the file their results.json name, else
    `experiments/<experiment>/<scale>.prereg.json` for their experiment and scale; None when there is none."""
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"pre-registration {path} does not exist")
        return Path(path)
    for r in results:
        named = (r.get("prereg") or {}).get("file") if isinstance(r.get("prereg"), Mapping) else None
        if named and Path(named).is_file():
            return Path(named)
    first = next((r for r in results if r.get("experiment") and r.get("scale")), None)
    if first is None:
        return None
    for folder in EXPERIMENT_DIRS:
        candidate = folder / str(first["experiment"]) / f"{first['scale']}{SUFFIX}"
        if candidate.is_file():
            return candidate
    return None


def _label(result: Mapping[str, Any]) -> str:
    return " ".join(o for o in comparable(result.get("overrides") or []) if not o.startswith("task=")) or str(
        result.get("_dir")
    )


def _seed(result: Mapping[str, Any]) -> int | None:
    seed = result.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def deviations(
    prereg: Mapping[str, Any], results: Sequence[Mapping[str, Any]], analysis: Mapping[str, Any]
) -> list[str]:
    """How the jobs and the report depart from the state in force, one line each."""
    now = effective(prereg)
    states = [prereg, *(prereg.get("amendments") or [])]
    hashes = [{j["hash"] for j in s["jobs"]} for s in states]
    out = [f"seed {s}: not pre-registered" for s in sorted({_seed(r) for r in results} - {None} - set(now["seeds"]))]
    for r in results:
        if r.get("status") == "unreadable" or _seed(r) not in now["seeds"]:
            continue
        mine = (r.get("prereg") or {}).get("settings_hash") if isinstance(r.get("prereg"), Mapping) else None
        if mine is None:
            out.append(f"job {_label(r)}: ran without being checked against the pre-registration")
        elif mine not in hashes[-1]:
            earlier = [i for i, h in enumerate(hashes[:-1]) if mine in h]
            under = f"amendment {earlier[-1]}" if earlier and earlier[-1] else "the first pre-registration"
            out.append(
                f"job {_label(r)}: ran under {under}, not amendment {len(states) - 1} in force"
                if earlier
                else f"job {_label(r)}: its settings match no pre-registered job"
            )
    for name, key in ANALYSIS_KEYS.items():
        if name in analysis and key in now["analysis"] and analysis[name] != now["analysis"][key]:
            out.append(
                f"{key}: {json.dumps(now['analysis'][key])} in the pre-registration, {json.dumps(analysis[name])} "
                "in this report"
            )
    return out + code_diff(now["analysis_code"], analysis_code())


def status(
    results: Sequence[Mapping[str, Any]], analysis: Mapping[str, Any], path: str | Path | None = None
) -> list[str]:
    """The report's first lines: its pre-registration and what its jobs ran from. A ConfigError line when a
    confirmatory report holds a pilot seed."""
    found = find(results, path)
    lines = []
    if found is None:
        lines.append("not pre-registered")
    else:
        prereg = load(found)
        now = effective(prereg)
        seeds = sorted({s for r in results if (s := _seed(r)) is not None})
        pilots = sorted(set(seeds) & set(now["pilot_seeds"]))
        pilot_jobs = [r for r in results if isinstance(r.get("prereg"), Mapping) and r["prereg"].get("role") == "pilot"]
        if role(seeds, now) == "pilot":
            lines.append(f"pilot of the pre-registration {found.name} (seeds {seeds_text(seeds)}): not confirmatory")
        elif pilots or pilot_jobs:
            seed = pilots[0] if pilots else _seed(pilot_jobs[0])
            raise ConfigError(
                f"seed {seed} ran in a pilot of {prereg.get('experiment')} (pilot seeds "
                f"{seeds_text(now['pilot_seeds'])}): a confirmatory report cannot use it; move its jobs out of the "
                "sweep's folder (run pilots with their own out_root)"
            )
        else:
            found_deviations = deviations(prereg, results, analysis)
            lines.append(
                f"{header(prereg)}: "
                + (f"{len(found_deviations)} deviation(s)" if found_deviations else "no deviation")
            )
            lines += [f"deviation: {d}" for d in found_deviations] + amendment_lines(prereg)
    return lines + provenance_lines(results)


def provenance_lines(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Which commits the jobs ran at, and how many ran from a dirty tree."""
    jobs = [r for r in results if r.get("status") != "unreadable"]
    commits: dict[str, int] = {}
    for r in jobs:
        commits[str(r.get("git_commit") or "unknown")] = commits.get(str(r.get("git_commit") or "unknown"), 0) + 1
    listed = ", ".join(f"{c[:10]} ({n} job{'s' if n > 1 else ''})" for c, n in sorted(commits.items()))
    lines = [f"the jobs ran at {len(commits)} commits: {listed}" if len(commits) > 1 else f"commit {listed}"]
    dirty = [r for r in jobs if r.get("git_dirty") is True]
    if dirty:
        diffs = sorted({f"{DIFF_FOLDER}/{r['git_diff_hash']}.diff" for r in dirty if r.get("git_diff_hash")})
        lines.append(f"{len(dirty)} of {len(jobs)} jobs ran from a dirty tree (their diffs: {', '.join(diffs)})")
    unknown = sum(r.get("git_dirty") is None for r in jobs)
    if unknown:
        lines.append(f"{unknown} of {len(jobs)} jobs do not say whether their tree was dirty")
    return lines
