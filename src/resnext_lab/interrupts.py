"""Ctrl-C and SIGTERM (`timeout`, `kill`, SLURM preemption) end a run in one line, with status 130 or 143.

While a job runs (`job_running`) a signal raises `Interrupted` there: a KeyboardInterrupt, which Lightning
handles as Ctrl-C, so the job stops at once, is recorded as interrupted (resumable) and says how to resume.
Anywhere else (composing, checking, between jobs) the run prints one line and exits: nothing was running.
The first signal wins: a second one (Ctrl-C pressed again, the copy every process of the group gets) is
ignored while the first is handled. Python drops an exception raised inside a finaliser (`__del__`, a weakref
callback) after printing it, so the raise can be lost; a job checks `pending()` at every batch as well
(callbacks.StopOnSignal).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

from resnext_lab.errors import stop

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state: dict[str, int] = {"received": 0, "jobs": 0}


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while a job ran."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def install() -> None:
    """Handle SIGINT and SIGTERM as this module says (from the main thread, before anything runs)."""
    for signum in SIGNALS:
        signal.signal(signum, _handle)


def _handle(signum: int, frame: FrameType | None) -> None:
    if _state["received"]:
        return
    _state["received"] = signum
    if _state["jobs"]:
        raise Interrupted(signum)
    stop(
        f"interrupted ({name(signum)}): no job was running; finished jobs are kept: run the same command again "
        "to go on",
        status(signum),
    )


@contextlib.contextmanager
def job_running() -> Iterator[None]:
    """Inside: a signal raises Interrupted where the job is, for it to record what it did."""
    _state["jobs"] += 1
    try:
        yield
    finally:
        _state["jobs"] -= 1


def pending() -> int:
    """The signal received in this process, 0 when none: a job still running after one stops at its next batch."""
    return _state["received"]


def received() -> int:
    """The signal that interrupted this process (SIGINT for a KeyboardInterrupt that came another way)."""
    return _state["received"] or signal.SIGINT


def name(signum: int | None = None) -> str:
    return signal.Signals(signum or received()).name


def status(signum: int | None = None) -> int:
    """The shell's status for a process ended by the signal: 128 + its number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum or received())
