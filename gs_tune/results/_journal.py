"""The results journal: the changes a ResultsWriter made since the tables were last a base.

Rewriting trials.parquet and metrics.parquet costs time in proportion to the run, so the writer
publishes them only every few seconds; the journal is what keeps a killed driver from losing the
reports in between. It is a directory, RUN_DIR/.results-journal/, holding

* ``trials.parquet`` and ``metrics.parquet``: the published tables as they were when the journal
  started, hard links to them (a copy where the filesystem has none), so later publishes, which
  rename new files over the published names, leave them as they were;
* ``events.jsonl``: one JSON object per change since then, each appended with a single write(2).

A killed process loses nothing it wrote (the kernel holds the data), and an event torn by a kill
mid-write is the last line, without its newline, and is dropped on reading. While the directory
exists it, not the published tables, is the run's truth; it appears and disappears by a rename,
so a reader finds either a whole journal or none. Layout and events are private to this package.

A writer that another has taken over may still be publishing tables from its last snapshot. So
publishing and taking over both hold a lock on RUN_DIR (:meth:`Journal.exclusive`): a publish
checks, under it, that its journal is still the one on disk, and a takeover publishes its own
tables and starts its journal over them without an older publish landing in between.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from gs_tune.fileio import FILE_MODE, append_json_line, fsync_dir, read_json_lines

JOURNAL_DIR = ".results-journal"
EVENTS_FILE = "events.jsonl"


def remove_leftovers(run_dir: Path) -> None:
    """Remove what a writer killed while starting or ending a journal left beside it."""
    for stale in run_dir.glob(f"{JOURNAL_DIR}.*"):
        shutil.rmtree(stale, ignore_errors=True)


class Journal:
    """The journal directory of one run directory, opened for appending by one writer at a time."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.path = run_dir / JOURNAL_DIR
        self._fd: int | None = None
        self._id: tuple[int, int] | None = None
        self._holder: int | None = None  # the thread holding exclusive(), which may enter it again

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def base(self, name: str) -> Path:
        return self.path / name

    def read_events(self) -> Iterator[dict[str, Any]]:
        """The events on disk, oldest first, one at a time (a long run has hundreds of thousands);
        a torn last line is dropped, a garbled one skipped."""
        path = self.path / EVENTS_FILE
        if path.exists():
            yield from read_json_lines(path)

    def start(self, base: Iterable[Path]) -> None:
        """Replace the journal on disk by an empty one over ``base`` (the published tables, which
        must hold everything so far) and open it for appending."""
        self.close()
        fresh = self.run_dir / f"{JOURNAL_DIR}.new-{uuid.uuid4().hex[:8]}"
        fresh.mkdir()
        for path in base:
            if path.exists():
                try:
                    os.link(path, fresh / path.name)
                except OSError:
                    shutil.copy2(path, fresh / path.name)
        (fresh / EVENTS_FILE).touch(mode=FILE_MODE)
        old = self._retire()
        os.replace(fresh, self.path)
        fsync_dir(self.run_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._fd = os.open(self.path / EVENTS_FILE, os.O_WRONLY | os.O_APPEND)
        st = os.fstat(self._fd)
        self._id = (st.st_dev, st.st_ino)

    def append(self, event: Mapping[str, Any]) -> None:
        assert self._fd is not None, "journal not started"
        append_json_line(self._fd, event)

    def owned(self) -> bool:
        """Whether the journal on disk is still the one this writer opened: another writer on the
        same run directory starts its own, and from then on this one must not write."""
        try:
            st = os.stat(self.path / EVENTS_FILE)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._id

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run directory's writer lock (module docstring), against every other writer in
        this process or another; the thread holding it may enter again."""
        if self._holder == threading.get_ident():
            yield
            return
        # flock on the directory itself: no lock file left behind. It belongs to the open file,
        # so two writers in one process exclude each other too; closing the descriptor releases it.
        fd = os.open(self.run_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._holder = threading.get_ident()
            try:
                yield
            finally:
                self._holder = None
        finally:
            os.close(fd)

    def taken_over(self) -> bool:
        """Whether this writer's open journal is no longer the one on disk."""
        return self.is_open and not self.owned()

    def sync(self) -> None:
        """fsync the events, so a machine crash loses at most what came after this call."""
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Close and delete the journal (its events are in the published tables now)."""
        self.close()
        old = self._retire()
        if old is not None:
            fsync_dir(self.run_dir)
            shutil.rmtree(old, ignore_errors=True)

    def _retire(self) -> Path | None:
        # Renamed away first, then deleted: a kill in between leaves a leftover, never half a journal.
        if not self.path.exists():
            return None
        old = self.run_dir / f"{JOURNAL_DIR}.old-{uuid.uuid4().hex[:8]}"
        os.replace(self.path, old)
        return old
