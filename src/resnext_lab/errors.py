"""Errors a user can fix: each prints as one line and exits non-zero."""


class ConfigError(ValueError):
    """A bad setting: the message names the setting, the value and what is accepted."""


class DataError(ConfigError):
    """Missing or unreadable data: the message says where it looked and how to get it."""
