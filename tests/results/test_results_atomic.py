"""Crashes: write_table_atomic leaves the previous file readable and unchanged, a failed publish
loses nothing, and a ResultsWriter killed at any moment leaves readable tables and a journal from
which the next writer recovers every event it had acknowledged."""

from __future__ import annotations

import itertools
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


def test_failed_publish_leaves_previous_tables_and_loses_nothing(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    writer = ResultsWriter(tmp_path)
    params = {**FIXED, "w_cos": 0.1}
    writer.on_report("a", val_record(100, 0.4, 0.1), params)
    writer.flush()
    trials_before, metrics_before = read_trials(tmp_path), read_metrics(tmp_path)
    real_write = pq.write_table

    def fail_on_trials(table: pa.Table, where: str, **kwargs: object) -> None:
        if table.schema.metadata.get(b"gs_tune.table") == b"trials":
            Path(where).write_bytes(b"garbage")
            raise OSError("disk full")
        real_write(table, where, **kwargs)

    monkeypatch.setattr(tables.pq, "write_table", fail_on_trials)
    writer.on_report("a", val_record(200, 0.5, 0.1), params)  # the report itself is journaled
    with pytest.raises(OSError, match="disk full"):
        writer.flush()
    assert read_trials(tmp_path).equals(trials_before)
    assert read_metrics(tmp_path).equals(metrics_before)  # trials go first: metrics never run ahead
    with pytest.raises(OSError, match="disk full"):
        writer.close()  # the journal stays: it holds what the tables miss
    assert (tmp_path / ".results-journal").is_dir()
    monkeypatch.undo()
    writer.close()
    assert read_trials(tmp_path).column("iterations").to_pylist() == [200]
    assert read_metrics(tmp_path).column("iteration").to_pylist() == [100, 200]
    assert _leftovers(tmp_path) == []


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


# A search driver as the results see it: trials reporting iterations 100, 200, 300 and, resumed
# from a checkpoint, 200 again (the latest must win), then ending; every 5th trial the writer is
# closed (journal folded into the tables) and goes on. Each event is acknowledged on stdout once
# the writer returned. Deterministic, so the test can replay the same sequence.
_RESULTS_DRIVER = textwrap.dedent("""
    import sys, types

    def events():
        t = 0
        while True:
            for n, it in enumerate((100, 200, 300, 200)):
                yield "report", f"t{t}", it, round(0.001 * t + 0.1 * n, 6)
            yield "end", f"t{t}", None, None
            if t % 5 == 4:
                yield "close", None, None, None
            t += 1

    if __name__ == "__main__":  # the test exec()s this source for events() alone, so nothing runs on import
        package = types.ModuleType("gs_tune")  # as in _KILLED_WRITER: no torch import
        package.__path__ = [sys.argv[2]]
        sys.modules["gs_tune"] = package
        from gs_tune.results.tables import ResultsWriter
        writer = ResultsWriter(sys.argv[1])
        for kind, tid, it, acc in events():
            if kind == "report":
                writer.on_report(tid, {"kind": "val", "iteration": it, "val_accuracy": acc, "train_loss": 1.0},
                                 {"w_cos": acc, "ways": 5})
            elif kind == "end":
                writer.on_trial_end(tid, "completed")
            else:
                writer.close()
            print(kind, flush=True)
""")


def _expected(n_events: int) -> tuple[dict[tuple[str, int], float], set[str]]:
    """metrics (trial, iteration) -> val_accuracy and the ended trials after the first n events."""
    namespace: dict[str, object] = {}
    exec(_RESULTS_DRIVER, namespace)  # noqa: S102 - our own source, defined above
    metrics, ended = {}, set()
    for kind, tid, it, acc in itertools.islice(namespace["events"](), n_events):
        if kind == "report":
            metrics[(tid, it)] = acc
        elif kind == "end":
            ended.add(tid)
    return metrics, ended


@pytest.mark.parametrize("delay", [0.1, 0.4, 0.9, 1.7])
def test_killed_results_writer_loses_nothing_it_acknowledged(tmp_path: Path, delay: float) -> None:
    run_dir = tmp_path / "run"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", _RESULTS_DRIVER, str(run_dir), str(root / "gs_tune")],
                            cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline()  # the first event is in
        time.sleep(delay)
    finally:
        proc.kill()  # SIGKILL at whatever it was doing: a report, a publish, a close
        acknowledged = 1 + len(proc.communicate()[0].splitlines())
    for name in ("trials.parquet", "metrics.parquet"):
        if (run_dir / name).exists():
            pq.read_table(run_dir / name)  # never torn
    ResultsWriter(run_dir).close()  # what the resumed search does first
    metrics = read_metrics(run_dir).to_pylist()
    got = {(m["trial_id"], m["iteration"]): m["val_accuracy"] for m in metrics}
    assert len(got) == len(metrics)  # no duplicate (trial, iteration) rows
    ended = {t["trial_id"] for t in read_trials(run_dir).to_pylist() if t["status"] == "completed"}
    # every acknowledged event, and at most the one the kill interrupted after it
    assert (got, ended) in (_expected(acknowledged), _expected(acknowledged + 1))
    assert acknowledged > 20  # the kill came mid-stream, not before the first publish


def test_a_torn_last_journal_line_is_dropped(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path)
    for it in (100, 200):
        writer.on_report("a", val_record(it, 0.4, 0.1), FIXED)
    events = tmp_path / ".results-journal" / "events.jsonl"
    whole = events.read_bytes()
    with open(events, "ab") as journal:  # what a kill in the middle of write(2) leaves
        journal.write(whole.splitlines(keepends=True)[-1][:40])
    resumed = ResultsWriter(tmp_path)
    resumed.on_report("a", val_record(300, 0.5, 0.1), FIXED)  # lands on a line of its own
    resumed.close()
    assert read_metrics(tmp_path).column("iteration").to_pylist() == [100, 200, 300]
