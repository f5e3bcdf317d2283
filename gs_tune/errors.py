"""Typed exceptions. Each names what was wrong so the CLI can print one line."""

from __future__ import annotations


class GsTuneError(Exception):
    """Base of every error gs-tune raises on purpose (the CLI exits 2 on these)."""


class ConfigError(GsTuneError, ValueError):
    """A configuration field has a value that is not allowed."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class DataError(GsTuneError):
    """A dataset is missing, malformed, or too small for the requested tasks."""


class SpaceError(GsTuneError, ValueError):
    """A search-space YAML is invalid; ``path`` is the dotted key path."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class RunDirError(GsTuneError):
    """A run directory is missing or does not hold what the command needs."""
