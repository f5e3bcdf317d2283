"""ResultsWriter: documented schemas, one row per trial, no duplicate metrics rows, no test columns,
resume, background publishing, readers."""

from __future__ import annotations

import contextlib
import math
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from results_helpers import FIXED, val_record

from gs_tune import records
from gs_tune.errors import RunDirError
from gs_tune.results import tables
from gs_tune.results.schema import (
    EVALUATION_SCHEMA,
    METRICS_SCHEMA,
    TRIAL_CORE_FIELDS,
    trials_schema,
)
from gs_tune.results.tables import (
    ResultsWriter,
    read_evaluation,
    read_metrics,
    read_trials,
    write_evaluation,
)
from gs_tune.rundir import OBJECTIVE_COLUMNS


def test_trials_schema_core_columns_then_typed_params() -> None:
    schema = trials_schema({"w_cos": float, "algorithm": str, "ahe_clip": float, "inner_steps": int})
    core = [f.name for f in TRIAL_CORE_FIELDS]
    assert schema.names[: len(core)] == core
    assert core[:14] == ["trial_id", "status", "final_val_accuracy", "best_val_accuracy", "final_val_loss",
                         "best_val_loss", "final_val_ci95", "iterations", "wall_seconds", "sec_per_iter",
                         "device", "node", "seed", "error"]
    assert schema.field("param_w_cos").type == pa.float64()
    assert schema.field("param_algorithm").type == pa.string()
    assert schema.field("param_inner_steps").type == pa.int64()
    assert schema.field("param_ahe_clip").nullable
    assert all(f.metadata and f.metadata[b"description"] for f in schema)


def test_writer_produces_documented_schemas(make_run) -> None:
    run = make_run("single")
    trials, metrics = pq.read_table(run / "trials.parquet"), pq.read_table(run / "metrics.parquet")
    # check_metadata: the field descriptions must survive the Parquet round trip
    assert metrics.schema.equals(METRICS_SCHEMA, check_metadata=True)
    core = trials.schema.names[: len(TRIAL_CORE_FIELDS)]
    assert [trials.schema.field(n) for n in core] == TRIAL_CORE_FIELDS
    types = {f.name: f.type for f in trials.schema}
    assert types["param_w_cos"] == pa.float64()
    assert types["param_algorithm"] == pa.string()
    assert types["param_ways"] == pa.int64()
    # every value None so far, yet typed from TrainConfig (float | None), not a guess
    assert types["param_ahe_clip"] == pa.float64()
    assert trials.column("param_ahe_clip").null_count == trials.num_rows


def test_one_row_per_trial_with_derived_columns(make_run, trials_spec) -> None:
    rows = {r["trial_id"]: r for r in read_trials(make_run("single")).to_pylist()}
    assert sorted(rows) == [t[0] for t in trials_spec]
    t2 = rows["t2"]
    assert t2["status"] == "completed"
    assert t2["best_val_accuracy"] == pytest.approx(0.72)
    assert t2["final_val_accuracy"] == pytest.approx(0.72)
    assert rows["t1"]["best_val_accuracy"] == pytest.approx(0.60)
    assert rows["t1"]["final_val_accuracy"] == pytest.approx(0.58)
    assert t2["iterations"] == 300 and t2["seed"] == 0 and t2["node"] == "node-1" and t2["device"] == "cpu"
    assert t2["peak_memory_mb"] == 120.0
    assert t2["param_w_cos"] == 0.1 and t2["param_algorithm"] == "ahe"
    assert rows["t3"]["status"] == "early_stopped"


def test_diverged_record_marks_trial_and_drops_placeholder_accuracy(make_run) -> None:
    run = make_run("single")
    t4 = next(r for r in read_trials(run).to_pylist() if r["trial_id"] == "t4")
    # on_trial_end said diverged; the diverged record had set it already
    assert t4["status"] == "diverged" and "non-finite" in t4["error"]
    assert t4["best_val_accuracy"] == pytest.approx(0.20)  # not the record's placeholder 0.0
    rows = [r for r in read_metrics(run).to_pylist() if r["trial_id"] == "t4"]
    diverged = next(r for r in rows if r["iteration"] == 150)
    assert math.isnan(diverged["train_loss"]) and diverged["val_accuracy"] is None


def test_test_values_never_reach_the_tables(tmp_path: Path) -> None:
    # a search never evaluates the test split; should a record carry test values anyway (an old
    # trial, a hand-made space), they stay out of the search's tables
    writer = ResultsWriter(tmp_path)
    writer.on_report("a", val_record(100, 0.4, 0.1, test_accuracy=0.777, test_ci95=0.0123, test_loss=7.77), FIXED)
    writer.on_report("a", {"kind": "test", "iteration": 100, "test_loss": 7.77, "test_accuracy": 0.777,
                           "test_ci95": 0.0123})
    writer.close()
    for table in (read_trials(tmp_path), read_metrics(tmp_path)):
        assert [n for n in table.column_names if n.startswith("test")] == []
        assert not {0.777, 0.0123, 7.77} & {v for row in table.to_pylist() for v in row.values()}
    assert read_trials(tmp_path).to_pylist()[0]["final_val_accuracy"] == 0.4
    assert read_metrics(tmp_path).column("iteration").to_pylist() == [100]  # the test record adds no row


def test_record_fields_are_the_trainers() -> None:
    # metrics.parquet's columns are the record fields of gs_tune/records.py under the same names
    fields = {*records.RUN_FIELDS, *records.TRAIN_FIELDS, *records.VAL_FIELDS}
    assert set(METRICS_SCHEMA.names[2:]) <= fields
    assert {*records.TRAIN_FIELDS, *records.VAL_FIELDS} <= set(METRICS_SCHEMA.names)
    assert not set(records.TEST_FIELDS) & {f.name for f in TRIAL_CORE_FIELDS}  # evaluation.parquet's
    # and each objective run.json records has its column in trials.parquet
    assert set(OBJECTIVE_COLUMNS.values()) <= {f.name for f in TRIAL_CORE_FIELDS}


def test_completed_after_diverged_record_stays_diverged(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path)
    writer.on_report("a", {"kind": "diverged", "iteration": 7, "train_loss": math.inf, "val_accuracy": 0.0})
    writer.on_trial_end("a", "completed")
    writer.flush()
    assert read_trials(tmp_path).column("status").to_pylist() == ["diverged"]


def test_rereporting_an_iteration_replaces_the_row(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path)
    params = {**FIXED, "w_cos": 0.1}
    for it, acc in ((100, 0.4), (200, 0.5), (200, 0.55)):
        writer.on_report("a", val_record(it, acc, 0.1, node="10.0.0.7"), params)
    # a resumed search: new writer, the trial restarts from its iteration-100 checkpoint
    resumed = ResultsWriter(tmp_path)
    resumed.on_report("a", val_record(200, 0.6, 0.1), params)
    resumed.on_report("a", val_record(300, 0.65, 0.1), params)
    resumed.close()
    metrics = read_metrics(tmp_path).to_pylist()
    assert [(m["iteration"], m["val_accuracy"]) for m in metrics] == [(100, 0.4), (200, 0.6), (300, 0.65)]
    trials = read_trials(tmp_path).to_pylist()
    assert len(trials) == 1 and trials[0]["node"] == "10.0.0.7"  # node: the trial actor's record says


def test_resume_keeps_earlier_trials_and_types(make_run) -> None:
    run = make_run("interrupted")
    before = read_trials(run)
    metrics_before = read_metrics(run).num_rows
    writer = ResultsWriter(run)
    writer.on_report("t9", val_record(100, 0.3, 0.1), {**FIXED, "ahe_clip": 0.5, "w_cos": 2})
    writer.on_trial_end("t5", "completed")
    writer.close()
    after = read_trials(run)
    assert after.num_rows == before.num_rows + 1
    assert after.schema.field("param_ahe_clip").type == pa.float64()
    assert after.schema.field("param_w_cos").type == pa.float64()  # the int 2 fits the float column
    rows = {r["trial_id"]: r for r in after.to_pylist()}
    assert rows["t9"]["param_ahe_clip"] == 0.5 and rows["t9"]["param_w_cos"] == 2.0
    assert rows["t5"]["status"] == "completed" and rows["t4"]["status"] == "running"
    assert rows["t0"] == next(r for r in before.to_pylist() if r["trial_id"] == "t0")
    assert read_metrics(run).num_rows == metrics_before + 1


def test_trial_that_failed_before_reporting(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path)
    writer.on_trial_end("x", "error", error="Traceback ...\nRuntimeError: CUDA out of memory", node="n2",
                        params={"inner_lr": 0.1, "algorithm": "maml", "schedule": [1, 2]})
    writer.flush()
    row = read_trials(tmp_path).to_pylist()[0]
    assert row["status"] == "error" and row["error"].endswith("out of memory") and row["node"] == "n2"
    assert row["param_inner_lr"] == 0.1 and row["param_schedule"] == "[1, 2]"
    assert read_metrics(tmp_path).num_rows == 0  # present and empty, so readers need no special case


def test_bad_input_raises(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path)
    with pytest.raises(ValueError, match="status must be one of"):
        writer.on_trial_end("a", "finished")
    with pytest.raises(ValueError, match="needs 'iteration'"):
        writer.on_report("a", {"kind": "val", "val_accuracy": 0.5})
    with pytest.raises(ValueError, match="kind must be one of val, test, diverged"):
        writer.on_report("a", {"iteration": 1, "test_accuracy": 0.5})  # no guessing from the fields
    with pytest.raises(ValueError, match="must be a number"):
        writer.on_report("a", {"kind": "val", "iteration": 1, "val_accuracy": "high"})
    writer.close()
    # rejected before anything was recorded: no table, no journal
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_pandas_polars_duckdb_read_both_tables(make_run, trials_spec) -> None:
    run = make_run("single")
    trials_pd = pd.read_parquet(run / "trials.parquet")
    assert len(trials_pd) == len(trials_spec) and trials_pd["param_w_cos"].dtype.kind == "f"
    metrics_pl = pl.read_parquet(run / "metrics.parquet")
    assert metrics_pl.schema["iteration"] == pl.Int64
    assert metrics_pl.height == read_metrics(run).num_rows
    best = duckdb.sql(f"SELECT trial_id, best_val_accuracy FROM '{run}/trials.parquet' "
                      "ORDER BY best_val_accuracy DESC LIMIT 1").fetchall()
    assert best[0][0] == "t2"
    per_trial = dict(duckdb.sql(f"SELECT trial_id, count(*) FROM '{run}/metrics.parquet' "
                                "GROUP BY trial_id").fetchall())
    assert per_trial["t0"] == 3 and per_trial["t4"] == 2  # one validation + the diverged row


def test_evaluation_roundtrip_and_validation(tmp_path: Path) -> None:
    rows = [{"method": "ahe", "config_source": "tuned", "seed": 0, "test_accuracy": 0.9, "test_ci95": 0.01,
             "test_tasks": 600, "sec_per_iter": 0.05, "peak_memory_mb": 300.0, "params": {"w_cos": 0.1}},
            {"method": "maml", "config_source": "default", "seed": 1.0, "params_json": "{}"}]
    write_evaluation(tmp_path, rows)
    table = read_evaluation(tmp_path)
    assert table.schema.equals(EVALUATION_SCHEMA, check_metadata=True)
    assert table.column("params_json").to_pylist() == ['{"w_cos": 0.1}', "{}"]
    assert table.column("seed").to_pylist() == [0, 1]
    with pytest.raises(ValueError, match="unknown field 'tes_accuracy'"):
        write_evaluation(tmp_path, [{"method": "ahe", "tes_accuracy": 0.9}])
    assert read_evaluation(tmp_path).num_rows == 2  # the failed call changed nothing


def test_readers_name_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=str(tmp_path / "trials.parquet")):
        read_trials(tmp_path)


def test_readers_leave_no_arrow_work_behind(make_run, monkeypatch) -> None:
    # pq.read_table's dataset scanner finishes work on Arrow's threads after it returns; a process
    # exiting just then aborts (a killed `gs-tune launch` in CI). The readers must parse the bytes
    # they read without it, and still read a garbled file as a RunDirError naming it.
    run = make_run("single")

    def scanner(*args, **kwargs):
        raise AssertionError("a gs-tune reader went through pq.read_table")

    monkeypatch.setattr(pq, "read_table", scanner)
    assert read_trials(run).num_rows > 0 and read_metrics(run).num_rows > 0
    (run / "trials.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(RunDirError, match="trials.parquet: cannot be read as Parquet"):
        read_trials(run)


def _ray_modules() -> list[str]:
    return sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))


def test_results_never_import_ray(make_run) -> None:
    run = make_run("single")
    if _ray_modules():
        # Another test of this session imported Ray: only a fresh interpreter can tell.
        code = ("import sys\n"
                "import gs_tune.results, gs_tune.results.report, gs_tune.results.tensorboard\n"
                f"from gs_tune.results.summary import summarize; summarize({str(run)!r})\n"
                "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[2])
        assert out.stdout.strip() == "[]"
        return
    import gs_tune.results.report
    import gs_tune.results.tensorboard  # noqa: F401
    from gs_tune.results.summary import summarize

    summarize(run)  # runs the lazy imports (optuna, scikit-learn) too
    assert _ray_modules() == []


def test_docs_describe_every_column_and_tag() -> None:
    from gs_tune.results.tensorboard import SCALAR_TAGS

    docs = (Path(__file__).resolve().parents[2] / "docs" / "results.md").read_text()
    names = [*(f.name for f in TRIAL_CORE_FIELDS), *METRICS_SCHEMA.names,
             *EVALUATION_SCHEMA.names, *SCALAR_TAGS, *SCALAR_TAGS.values()]
    assert [n for n in names if f"`{n}`" not in docs] == []


def test_tables_are_published_in_the_background(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path)
    writer.on_report("a", val_record(100, 0.4, 0.1), FIXED)
    writer.on_report("b", val_record(100, 0.5, 0.1), FIXED)
    deadline = time.monotonic() + 20
    rows = 0
    while rows < 2 and time.monotonic() < deadline:  # no flush: the publisher thread writes them
        time.sleep(0.05)
        with contextlib.suppress(RunDirError):
            rows = read_metrics(tmp_path).num_rows
    assert rows == 2 and read_trials(tmp_path).num_rows == 2
    writer.close()


def test_metrics_rows_are_trial_by_trial_each_by_iteration(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path)
    for it in (100, 200, 300):  # two trials reporting in turn, as a concurrent search does
        writer.on_report("b", val_record(it, 0.5, 0.1), FIXED)
        writer.on_report("a", val_record(it, 0.4, 0.1), FIXED)
    writer.on_report("b", val_record(200, 0.9, 0.1), FIXED)  # b resumed from its iteration-100 checkpoint
    writer.close()
    rows = [(r["trial_id"], r["iteration"], r["val_accuracy"]) for r in read_metrics(tmp_path).to_pylist()]
    assert rows == [("b", 100, 0.5), ("b", 200, 0.9), ("b", 300, 0.5), ("a", 100, 0.4), ("a", 200, 0.4),
                    ("a", 300, 0.4)]
    b = read_trials(tmp_path).to_pylist()[0]
    assert (b["trial_id"], b["best_val_accuracy"], b["final_val_accuracy"]) == ("b", 0.9, 0.5)


def test_close_folds_the_journal_and_the_writer_stays_usable(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path)
    writer.on_report("a", val_record(100, 0.4, 0.1), FIXED)
    assert (tmp_path / ".results-journal").is_dir()
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.parquet", "trials.parquet"]
    writer.on_report("a", val_record(200, 0.5, 0.1), FIXED)
    writer.on_trial_end("a", "completed")
    writer.close()
    assert read_metrics(tmp_path).column("iteration").to_pylist() == [100, 200]
    assert read_trials(tmp_path).column("status").to_pylist() == ["completed"]


def test_a_newer_writer_takes_the_directory_over(tmp_path: Path) -> None:
    old = ResultsWriter(tmp_path)
    old.on_report("a", val_record(100, 0.4, 0.1), FIXED)  # never flushed, never closed: as if killed
    new = ResultsWriter(tmp_path)
    with pytest.raises(RunDirError, match="another ResultsWriter"):
        old.on_report("a", val_record(200, 0.5, 0.1), FIXED)
    new.on_report("b", val_record(100, 0.6, 0.1), FIXED)
    old.close()  # must not publish its stale tables over the new writer's
    new.flush()
    assert read_trials(tmp_path).column("trial_id").to_pylist() == ["a", "b"]
    new.close()
    assert read_metrics(tmp_path).num_rows == 2


def test_an_older_writers_publish_in_flight_does_not_land_over_the_new_tables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The older writer's publisher has its snapshot (iteration 100) and is building the tables
    # when a newer writer takes the directory over, reports and closes; the older publish then
    # resumes. CI once hit this order by chance: the stale tables replaced the new ones.
    built, resume = threading.Event(), threading.Event()
    build_metrics = tables.build_metrics

    def held_first_time(*args: Any) -> pa.Table:
        table = build_metrics(*args)
        if not built.is_set():
            built.set()
            resume.wait(30)
        return table

    monkeypatch.setattr(tables, "build_metrics", held_first_time)
    old = ResultsWriter(tmp_path)
    old.on_report("a", val_record(100, 0.4, 0.1), FIXED)
    assert built.wait(30)
    old.on_report("a", val_record(200, 0.5, 0.1), FIXED)
    new = ResultsWriter(tmp_path)
    new.on_report("a", val_record(300, 0.65, 0.1), FIXED)
    new.close()
    resume.set()
    old.close()  # waits for its publisher, whose publish must now find the directory taken over
    metrics = read_metrics(tmp_path).to_pylist()
    assert [(m["iteration"], m["val_accuracy"]) for m in metrics] == [(100, 0.4), (200, 0.5), (300, 0.65)]


def _event_stream(rng: random.Random) -> list[tuple[str, Any]]:
    """Events of 12 trials in random interleaving: validations, re-reported iterations (resumed
    trials), divergence, parameters that widen a column (int, then float, then text), trial ends."""
    events: list[tuple[str, Any]] = []
    for t in range(12):
        tid = f"t{t}"
        params = {**FIXED, "w_cos": rng.choice([1, 0.5, "auto"]) if t > 3 else t, "inner_lr": rng.random()}
        its = [100 * (i + 1) for i in range(rng.randint(0, 4))]
        its += rng.sample(its, k=min(len(its), rng.randint(0, 2)))  # re-reports
        events += [("report", (tid, val_record(it, rng.random(), 0.1, node=f"n{t % 3}"), params)) for it in its]
        if rng.random() < 0.2:
            events.append(("report", (tid, {"kind": "diverged", "iteration": 450, "train_loss": math.nan,
                                             "val_accuracy": 0.0}, params)))
        status = rng.choice(["completed", "early_stopped", "error", None])
        if status:
            events.append(("end", (tid, status, "boom" if status == "error" else None, params)))
    order = sorted(range(len(events)), key=lambda i: (rng.random(), i))
    # keep each trial's own events in order: stable sort of a random permutation by trial
    by_trial: dict[str, list[tuple[str, Any]]] = {}
    for e in events:
        by_trial.setdefault(e[1][0], []).append(e)
    picks = [events[i][1][0] for i in order]
    return [by_trial[tid].pop(0) for tid in picks]


def _feed(writer: ResultsWriter, events: list[tuple[str, Any]]) -> None:
    for kind, args in events:
        if kind == "report":
            writer.on_report(*args)
        else:
            tid, status, error, params = args
            writer.on_trial_end(tid, status, error=error, params=params)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_journal_replay_gives_the_same_tables(tmp_path: Path, seed: int) -> None:
    events = _event_stream(random.Random(seed))
    cut = len(events) // 2
    live = ResultsWriter(tmp_path / "live")
    _feed(live, events)
    live.close()
    # a writer that was killed half-way (its journal left), resumed by another that gets the rest
    first = ResultsWriter(tmp_path / "resumed")
    _feed(first, events[:cut])
    resumed = ResultsWriter(tmp_path / "resumed")
    _feed(resumed, events[cut:])
    resumed.close()
    _assert_same_tables(tmp_path / "resumed", tmp_path / "live")
    # and once more from the closed tables alone (no journal), with nothing new
    ResultsWriter(tmp_path / "resumed").close()
    _assert_same_tables(tmp_path / "resumed", tmp_path / "live")


def _assert_same_tables(a: Path, b: Path) -> None:
    for read in (read_trials, read_metrics):
        ta, tb = read(a), read(b)
        assert ta.schema.equals(tb.schema, check_metadata=True)
        assert repr(ta.to_pylist()) == repr(tb.to_pylist())  # repr: NaN (a diverged loss) equals itself
