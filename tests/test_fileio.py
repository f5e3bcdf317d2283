"""gs_tune/fileio.py: the one atomic writer (tables, checkpoints, run files and caches use it)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from gs_tune.fileio import (
    append_json_line,
    atomic_write,
    atomic_write_text,
    drop_torn_line,
    read_json_lines,
    remove_stale_temps,
)


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


def test_json_lines_survive_a_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        append_json_line(fd, {"a": 1, "loss": float("nan")})
        os.write(fd, b"not json\n")
        append_json_line(fd, {"a": 2})
        os.write(fd, b'{"a": 3')  # a kill cut this write short
    finally:
        os.close(fd)
    got = list(read_json_lines(path))
    assert [g["a"] for g in got] == [1, 2]  # the garbled line skipped, the torn one dropped
    assert math.isnan(got[0]["loss"])


def test_a_torn_line_is_cut_off_before_the_log_is_appended_to_again(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    assert not drop_torn_line(path)  # no log yet: nothing to cut, nothing created
    assert not path.exists()
    whole = b'{"a":1}\n' + b'{"a":2,"pad":"' + b"x" * 70000 + b'"}\n'  # longer than one block
    path.write_bytes(whole + b'{"a": 3')  # a kill cut this write short
    assert drop_torn_line(path)
    assert path.read_bytes() == whole
    assert not drop_torn_line(path)  # whole lines are left alone
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        append_json_line(fd, {"a": 4})
    finally:
        os.close(fd)
    assert [g["a"] for g in read_json_lines(path)] == [1, 2, 4]  # the append kept, not joined to the torn line
    path.write_bytes(b'{"a": 5')  # a torn first line: nothing before it to keep
    assert drop_torn_line(path) and path.read_bytes() == b""
