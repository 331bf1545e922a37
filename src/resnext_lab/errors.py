"""Errors a user can fix: each prints as one line and exits non-zero."""

import sys
from typing import NoReturn


class Stop(SystemExit):
    """Ends the run, or the whole sweep, with the one line already printed (`line`) and exit status `status`.

    Raised where the jobs after this one could not do better: a bad setting, an output folder that cannot be
    written, an interrupt. Hydra's launchers let a SystemExit through; the packed launcher sends it from its
    worker to the sweep's process, which prints the line on the terminal and exits with the same status.
    """

    def __init__(self, line: str, status: int = 2) -> None:
        super().__init__(status)
        self.line = line

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        return type(self), (self.line, int(self.code or 0))


def stop(line: str, status: int = 2) -> NoReturn:
    """Print `line` on stderr and end the run with `status`."""
    print(line, file=sys.stderr, flush=True)
    raise Stop(line, status)


def fail(message: str, status: int = 2) -> NoReturn:
    """Print `error: message` as one line on stderr and exit with `status` (2: bad input)."""
    stop(f"error: {message}", status)


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message, else its type's name."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


class ConfigError(ValueError):
    """A bad setting: the message names the setting, the value and what is accepted."""


class DataError(ConfigError):
    """Missing or unreadable data: the message says where it looked and how to get it."""
