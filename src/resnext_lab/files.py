"""Files written atomically: a temporary file beside the target, then a rename, so a reader never sees half."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NoReturn

from resnext_lab.errors import fail


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Call `write(handle)` on a temporary file in `path`'s folder, then move it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would make it: mkstemp's 0600 would hide results from others
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """This process's umask, read without changing it (os.umask sets it, for every thread at once)."""
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1], 8) for line in status.splitlines() if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):  # not Linux: set it back at once
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    return write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


#: errno values that mean the output cannot be written, whatever file the error names: what the one line says
#: and what the user does about it
_UNWRITABLE = {
    errno.ENOSPC: ("the disk is full", "free space"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space or raise the quota"),
    errno.EROFS: ("the file system is read-only", "make it writable"),
}


def output_fault(err: BaseException, folder: Path) -> tuple[str, str] | None:
    """(what is wrong, what to do) when `err` means that `folder` cannot be written: a full disk, a quota,
    a read-only file system, no permission, the folder removed while a run wrote to it. None for any other
    failure. Errors that wrap the OSError (torch's writers, W&B) are recognised by trying to write `folder`."""
    seen: BaseException | None = err
    for _ in range(32):  # the chain of causes, as far as any traceback shows it
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in _UNWRITABLE:
            return _UNWRITABLE[seen.errno]
        seen = seen.__cause__ or seen.__context__
    if not Path(folder).is_dir():
        return f"the folder was removed while the run wrote to it ({type(err).__name__})", "check what removed it"
    try:
        write_atomic(Path(folder) / ".write-check", lambda handle: handle.write(bytes(4096)))
        (Path(folder) / ".write-check").unlink()
    except OSError as probe:
        known = _UNWRITABLE.get(probe.errno or 0)
        return known or (f"it cannot be written ({probe.strerror or type(probe).__name__})", "make it writable")
    return None


def fail_unwritable(err: BaseException, folder: Path) -> NoReturn:
    """One line and exit 2 when `err` means that `folder` cannot be written (disk full, read-only, ...); else
    the error itself, raised again."""
    fault = output_fault(err, folder)
    if fault is None:
        raise err
    fail(f"{fault[0]}: cannot write {folder}: {fault[1]}, then run the same command again")
