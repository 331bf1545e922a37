"""Errors a user can fix: each prints as one line and exits non-zero."""

import sys
from typing import NoReturn


def fail(message: str, status: int = 2) -> NoReturn:
    """Print `error: message` as one line on stderr and exit with `status` (2: bad input)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error's message, else its type's name."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


class ConfigError(ValueError):
    """A bad setting: the message names the setting, the value and what is accepted."""


class DataError(ConfigError):
    """Missing or unreadable data: the message says where it looked and how to get it."""
