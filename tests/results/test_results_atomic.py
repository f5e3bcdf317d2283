"""write_table_atomic: a crash at any point leaves the previous file readable and unchanged."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from results_helpers import FIXED, val_record

from gs_tune.results import tables
from gs_tune.results.tables import ResultsWriter, read_metrics, read_trials, write_table_atomic


def _table(n: int) -> pa.Table:
    return pa.table({"i": list(range(n)), "x": [float(i) * 0.5 for i in range(n)]})


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_write_then_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "t.parquet"
    write_table_atomic(_table(3), path)
    write_table_atomic(_table(5), path)
    assert pq.read_table(path).equals(_table(5))
    assert _leftovers(path.parent) == []
    assert path.stat().st_mode & 0o777 == 0o644


def test_crash_while_writing_parquet_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.parquet"
    write_table_atomic(_table(3), path)

    def torn_write(table: pa.Table, where: str, **kwargs: object) -> None:
        Path(where).write_bytes(b"PAR1" + b"\0" * 100)  # half a file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", torn_write)
    with pytest.raises(OSError, match="disk full"):
        write_table_atomic(_table(1000), path)
    monkeypatch.undo()
    assert pq.read_table(path).equals(_table(3))
    assert _leftovers(tmp_path) == []


def test_crash_before_rename_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.parquet"
    write_table_atomic(_table(3), path)

    def no_rename(src: str, dst: str) -> None:
        raise KeyboardInterrupt  # Ctrl-C between fsync and rename

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(KeyboardInterrupt):
        write_table_atomic(_table(10), path)
    monkeypatch.undo()
    assert pq.read_table(path).equals(_table(3))
    assert _leftovers(tmp_path) == []


def test_writer_failing_mid_report_leaves_previous_tables(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    writer = ResultsWriter(tmp_path)
    params = {**FIXED, "w_cos": 0.1}
    writer.on_report("a", val_record(100, 0.4, 0.1), params)
    trials_before, metrics_before = read_trials(tmp_path), read_metrics(tmp_path)
    real_write = pq.write_table

    def fail_on_trials(table: pa.Table, where: str, **kwargs: object) -> None:
        if table.schema.metadata.get(b"gs_tune.table") == b"trials":
            Path(where).write_bytes(b"garbage")
            raise OSError("killed")
        real_write(table, where, **kwargs)

    monkeypatch.setattr(tables.pq, "write_table", fail_on_trials)
    with pytest.raises(OSError):
        writer.on_report("a", val_record(200, 0.5, 0.1), params)
    monkeypatch.undo()
    assert read_trials(tmp_path).equals(trials_before)
    assert read_metrics(tmp_path).num_rows == metrics_before.num_rows + 1  # written just before the crash


_KILLED_WRITER = textwrap.dedent("""
    import sys, types
    # Load gs_tune.results without running gs_tune/__init__.py, which imports torch: this process
    # only writes Parquet, and two seconds of torch import per kill would dominate the test.
    package = types.ModuleType("gs_tune")
    package.__path__ = [sys.argv[2]]
    sys.modules["gs_tune"] = package
    import pyarrow as pa
    from gs_tune.results.tables import write_table_atomic
    n = 1
    while True:
        # each version is self-checking: column i is exactly 0..n-1
        write_table_atomic(pa.table({"i": list(range(n)), "pad": ["x" * 50] * n}), sys.argv[1])
        n = n % 20000 + 997
""")


@pytest.mark.parametrize("delay", [0.05, 0.3])
def test_killed_writer_never_leaves_a_torn_file(tmp_path: Path, delay: float) -> None:
    path = tmp_path / "t.parquet"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path), str(root / "gs_tune")], cwd=root)
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("writer subprocess did not start writing")
            time.sleep(0.01)
        time.sleep(delay)
    finally:
        proc.kill()  # SIGKILL: no cleanup handlers run, as in an OOM kill
        proc.wait()
    table = pq.read_table(path)
    assert table.column("i").to_pylist() == list(range(table.num_rows))
    # a temp file of the killed write may remain; it is hidden from *.parquet globs ...
    assert [p.name for p in tmp_path.glob("*.parquet")] == ["t.parquet"]
    # ... and the next ResultsWriter on the directory removes it
    ResultsWriter(tmp_path)
    assert _leftovers(tmp_path) == []
