"""Typed exceptions. Each names what was wrong so the CLI can print one line.

Every one survives pickling: a trial runs in a Ray worker, and Ray sends the
exception to the driver by pickling it. An exception whose ``__init__`` takes
other arguments than ``self.args`` holds would be rebuilt wrongly there (a
``TypeError`` in place of the real message), so the fields live in ``args``.
"""

from __future__ import annotations


class GsTuneError(Exception):
    """Base of every error gs-tune raises on purpose (the CLI exits 2 on these)."""


class _FieldError(GsTuneError, ValueError):
    """An error about one named field: ``str(e)`` is ``"<field>: <message>"``."""

    def __init__(self, field: str, message: str):
        super().__init__(field, message)

    @property
    def message(self) -> str:
        return self.args[1]

    def __str__(self) -> str:
        return f"{self.args[0]}: {self.args[1]}"


class ConfigError(_FieldError):
    """A configuration field has a value that is not allowed."""

    @property
    def field(self) -> str:
        return self.args[0]


class SpaceError(_FieldError):
    """A search-space YAML is invalid; ``path`` is the dotted key path."""

    @property
    def path(self) -> str:
        return self.args[0]


class DataError(GsTuneError):
    """A dataset is missing, malformed, or too small for the requested tasks."""


class RunDirError(GsTuneError):
    """A run directory is missing or does not hold what the command needs."""


class CheckpointError(GsTuneError):
    """A checkpoint cannot be loaded safely (corrupt, tampered with, or from another run)."""
