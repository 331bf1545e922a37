"""Errors a user can fix: each prints as one line and exits non-zero."""

import sys
from typing import NoReturn


def fail(message: str, status: int = 2) -> NoReturn:
    """Print `error: message` as one line on stderr and exit with `status` (2: bad input)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


class ConfigError(ValueError):
    """A bad setting: the message names the setting, the value and what is accepted."""


class DataError(ConfigError):
    """Missing or unreadable data: the message says where it looked and how to get it."""
