"""gs_tune/fileio.py: the one atomic writer (tables, checkpoints, run files and caches use it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gs_tune.fileio import atomic_write, atomic_write_text, remove_stale_temps


def _hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_write_creates_parents_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "run.json"
    assert atomic_write_text(path, "one\n") == path
    atomic_write_text(path, "two\n")
    assert path.read_text() == "two\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert _hidden(path.parent) == []


def test_failed_write_keeps_old_file_and_removes_its_temp(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_write_text(path, "old")

    def torn(tmp: Path) -> None:
        tmp.write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, torn)
    assert path.read_text() == "old" and _hidden(tmp_path) == []


def test_interrupt_before_rename_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "space.yaml"
    atomic_write_text(path, "old")

    def interrupted(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and _hidden(tmp_path) == []


def test_stale_temps_of_killed_writers_are_removed_by_pattern(tmp_path: Path) -> None:
    for name in (".trials.parquet.abc123.tmp", ".metrics.parquet.x.tmp", ".checkpoint.pt.y.tmp", ".keep"):
        (tmp_path / name).write_text("x")
    assert remove_stale_temps(tmp_path, "*.parquet") == 2
    assert _hidden(tmp_path) == [".checkpoint.pt.y.tmp", ".keep"]
