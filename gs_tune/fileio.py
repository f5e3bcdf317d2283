"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file gs-tune rewrites in place (tables, checkpoints, run files, dataset caches) goes through
:func:`atomic_write`, so a crash, a full disk or a Ctrl-C at any point leaves the previous file
intact. The data go to a hidden temporary file in the same directory (``os.replace`` is atomic only
within one filesystem), are fsynced, then renamed over the target; the directory is fsynced after
the rename so the rename itself survives a power loss. A failed write removes its temporary file;
a killed process may leave one, named ``.<name>.<random>.tmp`` so that no ``*.<suffix>`` glob picks
it up, and :func:`remove_stale_temps` clears those.

Append-only JSON-lines logs (the results journal, an evaluation's finished runs) are the other
kind of file that must survive a kill: :func:`append_json_line` adds a line in one write(2), so a
kill leaves at most a torn last line, and :func:`read_json_lines` drops it. A log that is appended to
again after a kill (an evaluation resumed) first has that line cut off by :func:`drop_torn_line`,
or the next append would join it and be dropped with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"
# mkstemp creates files readable by their owner only; results and checkpoints are meant to be shared.
FILE_MODE = 0o644

_log = logging.getLogger(__name__)


def atomic_write(path: str | os.PathLike[str], write_fn: Callable[[Path], object]) -> Path:
    """``write_fn(tmp)`` fills a temporary file beside ``path``, which then replaces ``path``.

    Creates the parent directory if needed; returns ``path``. Whatever ``write_fn`` or the rename
    raises propagates after the temporary file is removed, with ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write_fn(tmp)
        _fsync(tmp, os.O_RDONLY)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_temps(directory: str | os.PathLike[str], name_glob: str = "*") -> int:
    """Remove temporary files that writers killed mid-write left in ``directory`` for targets
    matching ``name_glob`` (e.g. ``"*.parquet"``); returns how many. Call it only where no other
    process is writing the same files."""
    removed = 0
    for stale in Path(directory).glob(f".{name_glob}.*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed += 1
    return removed


def append_json_line(fd: int, obj: Any) -> None:
    """Append ``obj`` as one JSON line to ``fd`` (opened with O_APPEND), in one write(2) unless the
    disk is full. NaN and ±inf are written as Python's json reads them back (a diverged loss)."""
    data = (json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def read_json_lines(path: str | os.PathLike[str]) -> Iterator[Any]:
    """The JSON values of ``path``'s lines, oldest first, one at a time; a last line without its
    newline (a write a kill cut short) is dropped, a garbled line skipped with a warning."""
    with open(path, "rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.endswith(b"\n"):
                return
            try:
                yield json.loads(line)
            except ValueError:
                _log.warning("%s line %d: not a JSON line, skipped", path, number)


def drop_torn_line(path: str | os.PathLike[str]) -> bool:
    """Cut a torn last line (a write a kill cut short) off the JSON-lines file ``path``, so that
    the next :func:`append_json_line` starts a line of its own; whether there was one. Only for a
    log no other process is appending to."""
    if not os.path.exists(path):
        return False
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        keep = end
        while keep > 0:  # back to just after the last newline, a block at a time
            start = max(0, keep - 65536)
            f.seek(start)
            block = f.read(keep - start)
            if keep == end and block.endswith(b"\n"):
                return False
            newline = block.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            keep = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return end > keep


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make the renames in ``directory`` durable; not possible on every platform, and not needed
    for atomicity, so a failure is ignored."""
    with contextlib.suppress(OSError):
        _fsync(Path(directory), os.O_RDONLY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
