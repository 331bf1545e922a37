"""task=preregister: write a sweep's pre-registration, or append a dated amendment to it (`prereg.py`).

    python run.py -m task=preregister experiment=table3 scale=cpu pilot_seeds=[100,101,102,103,104]
    python run.py -m task=preregister experiment=table3 scale=cpu amend='why the change'

Dispatched by the sweep's callback with every job composed and checked (`job.check_sweep`), as task=plan is;
nothing trains. The file is `experiments/<experiment>/<scale>.prereg.json`: commit it before the first
confirmatory job.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from resnext_lab.config import to_python
from resnext_lab.errors import ConfigError
from resnext_lab.files import write_json_atomic
from resnext_lab.prereg import FORMAT, differences, effective, header, load, located, seeds_text, state
from resnext_lab.provenance import git_state


def _pilot_seeds(value: Any) -> list[int]:
    """`pilot_seeds`: null, a list of seeds, or a range as text ("100-104")."""
    value = to_python(value)
    if value is None:
        return []
    if isinstance(value, str) and "-" in value:
        low, _, high = value.partition("-")
        if low.strip().isdigit() and high.strip().isdigit() and int(low) <= int(high):
            return list(range(int(low), int(high) + 1))
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return [value]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
    ):
        return sorted(set(value))
    raise ConfigError(f"pilot_seeds={value!r}: must be null, a list of seeds >= 0 ([100,101]) or a range ('100-104')")


def _amend(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"amend={value!r}: must be null or a non-empty reason for the amendment")
    return value.strip()


def preregister_task(cfg: DictConfig, jobs: Sequence[tuple[list[str], Any]], hydra: Any) -> dict[str, Any]:
    """Write the pre-registration of the sweep `jobs` (or its amendment, `amend='why'`); what the file holds."""
    path = located(hydra)
    if path is None:
        raise ConfigError("task=preregister: needs experiment=NAME and scale=SCALE (a paper table's sweep)")
    if not jobs:
        raise ConfigError("task=preregister: the sweep has no jobs")
    why = _amend(cfg.get("amend"))
    pilots = cfg.get("pilot_seeds")
    if why is not None and pilots is None and Path(path).is_file():  # an amendment keeps the declared pilot seeds
        now = state(jobs, jobs[0][1], effective(load(path))["pilot_seeds"])
    else:
        now = state(jobs, jobs[0][1], _pilot_seeds(pilots))
    prereg = write(Path(path), {"experiment": cfg.get("experiment_name"), "scale": cfg.get("scale_name"), **now}, why)
    done = prereg["amendments"][-1] if why else prereg
    print(
        f"{'amended' if why else 'wrote'} {path}: {len(now['jobs'])} jobs, seeds {seeds_text(now['seeds'])}, "
        f"pilot seeds {seeds_text(now['pilot_seeds'])}, analysis code {now['analysis_code']['hash']}, "
        f"commit {(done.get('commit') or 'unknown')[:10]}{' (dirty tree)' if done.get('dirty') else ''}",
        flush=True,
    )
    if why:
        for change in done["changes"]:
            print(f"  {change}", flush=True)
    print(f"{header(prereg)}: commit {path} before the first confirmatory job", flush=True)
    return prereg


def write(path: Path, now: dict[str, Any], why: str | None) -> dict[str, Any]:
    """Write a new pre-registration at `path` (`why` None), or append an amendment saying `why`; what was
    written. A ConfigError line when a file exists and no amendment is asked for, or an amendment changes nothing."""
    git = git_state()
    stamp = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git.commit,
        "dirty": git.dirty,
        "diff_hash": git.diff_hash,
    }
    if path.is_file():
        prereg = load(path)
        if why is None:
            raise ConfigError(f"{path} exists ({header(prereg)}): record a change as an amendment, amend='why'")
        changes = differences(effective(prereg), now, whole=True)
        if not changes:
            raise ConfigError(f"amend={why!r}: nothing differs from {path} ({header(prereg)})")
        amendments = prereg.setdefault("amendments", [])
        amendments.append({"number": len(amendments) + 1, "why": why, **stamp, "changes": changes, **now})
    else:
        if why is not None:
            raise ConfigError(f"amend={why!r}: {path} does not exist yet; pre-register first, without amend")
        prereg = {"format": FORMAT, **stamp, **now, "amendments": []}
    write_json_atomic(path, prereg)
    return prereg
