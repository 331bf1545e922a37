"""The folders a run or sweep writes: checked writable before Hydra creates them, and held by one process
at a time (an flock on `<folder>/.lock` that names its holder).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from resnext_lab.errors import fail, first_line
from resnext_lab.files import output_fault


def unwritable(folder: Path) -> str | None:
    """Why `folder` cannot be created and written, else None: tried for real, then cleaned up.

    Permission bits say little to root (containers, cluster nodes), so the nearest existing
    ancestor gets a temporary folder made in it and removed again.
    """
    path = folder.absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return None
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".resnext-write-check-").cleanup()
    except OSError as err:
        return f"cannot create a folder in {existing} ({err.strerror or type(err).__name__})"
    return None


#: The file in a run's or sweep's folder that its process holds while it runs (filelock: flock), saying who it is.
LOCK = ".lock"
_held: dict[str, tuple[Any, Path]] = {}  # folder -> (its FileLock, the nearest folder above it that existed before)


def _holder(path: Path) -> dict[str, Any]:
    """What a lock file says of its holder: pid, host, since, command ({} when empty or unreadable)."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _other_rank() -> bool:
    """A DDP process other than rank zero (Lightning starts ranks > 0 with the run's own command line)."""
    rank = next((os.environ[k] for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID") if k in os.environ), "0")
    return rank.isdigit() and int(rank) > 0


def hold_folder(folder: Path) -> None:
    """Hold `folder` for as long as this run or sweep runs: a second one started on it refuses at once (exit 2),
    naming the holder's pid. The lock is an flock on `<folder>/.lock`, which the kernel drops however its
    process ends, so a lock left by a killed run is free and taken over (said in one line). The file names the
    holder while it runs and is emptied when it ends. Jobs do not take it: a sweep's jobs run under its lock,
    whichever launcher runs them, and so do the ranks > 0 of a DDP run.
    """
    if _other_rank() or str(folder) in _held:
        return
    path = Path(folder) / LOCK
    me = {
        "pid": os.getpid(),
        "host": platform.node(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }

    def claim(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)

    existed = next(p for p in (path.parent.absolute(), *path.parent.absolute().parents) if p.exists())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        left = _holder(path)  # a killed holder's; a holder that ended emptied the file
        lock = FileLock(path, on_acquired=claim, preserve_lock_file=True)
        lock.acquire(blocking=False)
    except Timeout:
        holder = _holder(path)
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
        fail(
            f"{folder} is in use by another run ({who}): wait for it to end, or give this one another "
            "name=... or out_root=..."
        )
    except OSError as err:
        why, remedy = output_fault(err, path.parent) or (f"cannot lock it ({first_line(err)})", "check the folder")
        fail(f"{why}: cannot write {folder}: {remedy}, then run the same command again")
    if left.get("pid") not in (None, os.getpid()):
        print(
            f"note: {folder} was held by pid {left['pid']} on {left.get('host', '?')}, which ended without "
            "letting go (killed?); taken over",
            file=sys.stderr,
            flush=True,
        )
    _held[str(folder)] = (lock, existed)
    atexit.register(release_folder, folder)


def release_folder(folder: Path) -> None:
    """Let go of a folder held by hold_folder, emptying its lock file (a later run sees that it ended). A folder
    that hold_folder created and that holds nothing else (the run stopped before it began: a launcher's bad
    setting, a refused plan) is removed again."""
    lock, existed = _held.pop(str(folder), (None, None))
    if lock is None:
        return
    path = Path(folder) / LOCK
    with contextlib.suppress(OSError):
        os.truncate(path, 0)
    lock.release()
    with contextlib.suppress(OSError):
        if existed != path.parent.absolute() and os.listdir(folder) == [LOCK]:
            path.unlink()
            for empty in (path.parent.absolute(), *path.parent.absolute().parents):
                if empty == existed:
                    break
                empty.rmdir()  # only an empty folder: the first that is not ends it
