"""What the search driver's results path costs per report, from the first report to the 200,000th.

Feeds :class:`gs_tune.results.tables.ResultsWriter`, which the search's Tune callback drives in
the driver, a synthetic stream of ``--trials`` trials x ``--reports`` reports (default 20,000 x
10), once without and once with TensorBoard. Trials report ``--concurrent`` at a time, in turn,
as a concurrent search does; each report is a val record as a cosine_l2 trial sends it (a
``train_log`` of 10 points, the 20 parameters, some of Tune's own keys), and each trial ends with
``on_trial_end``. Printed per stream: the cost of ``on_report`` (mean, p95, max) over the first
and the last ``--window`` reports, in wall time and in the driver thread's CPU time (which other
jobs on a shared machine cannot inflate), of ``on_trial_end``, the stream's wall time and the
process's peak memory; then, for the stream without TensorBoard, what one publish of the full tables costs
(``flush``), what a resume after a kill costs (a new writer replaying the journal) and ``close``.

While each stream runs, a separate process reads the tables every ``--poll`` seconds, as a user
would: pyarrow (metrics.parquet, then trials.parquet) and DuckDB (``count(*)`` and distinct
(trial_id, iteration) of metrics.parquet). Every read must be complete and consistent: both files
open, no duplicate (trial_id, iteration), unique trial ids, every trial of metrics.parquet in
trials.parquet (read after it). DuckDB queries that fail are counted apart: DuckDB opens a file
twice per query (to plan, then to scan), and a query whose two opens straddle a publish fails
with a decoding error (docs/results.md). The table says how many reads there were, whether all
that completed were consistent, and how far the tables trailed the stream (seconds between the
newest report a read saw and the read).

Last, Optuna's own cost, for scale: TPE's time per suggestion (``ask`` plus the six
``suggest_*`` calls of a cosine_l2-like space: four log-uniform floats, a categorical, a uniform)
on an in-memory study already holding ``--optuna`` completed trials (added with ``add_trials``,
random values), mean over 20 suggestions.

    python benchmarks/driver_scale.py                         # 20,000 x 10, ~15 min on 2 cores
    python benchmarks/driver_scale.py --trials 2000 --optuna 1000 --out /tmp/driver.md
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gs_tune.results.tables import ResultsWriter

FIXED = {"algorithm": "ahe", "dataset": "digits", "model": "conv4", "filters": 32, "ways": 5, "shots": 1,
         "query": 15, "meta_batch": 4, "inner_steps": 1, "w_dot": 0.0, "ahe_scale": 1.0, "iterations": 1000,
         "val_every": 100, "val_tasks": 100, "log_every": 10, "seed": 0}
SCHEDULES = ("constant", "linear_warmup", "linear_decay", "cosine")

READER = r"""
import json, sys, time
import duckdb, pyarrow.parquet as pq
run, poll = sys.argv[1], float(sys.argv[2])
while True:
    t, out = time.time(), {"rows": 0, "ok": True}
    try:  # metrics first: trials.parquet is published first, so it holds every trial metrics.parquet has
        metrics = pq.read_table(f"{run}/metrics.parquet", columns=["trial_id", "iteration"])
        trials = pq.read_table(f"{run}/trials.parquet", columns=["trial_id", "status", "best_val_accuracy"])
        keys = set(zip(metrics.column("trial_id").to_pylist(), metrics.column("iteration").to_pylist()))
        ids = trials.column("trial_id").to_pylist()
        out = {"rows": metrics.num_rows, "ok": len(keys) == metrics.num_rows and len(set(ids)) == len(ids)
                                              and {k[0] for k in keys} <= set(ids)}
    except FileNotFoundError:
        pass
    except Exception as exc:
        out = {"rows": -1, "ok": False, "error": repr(exc)}
    try:
        rows, distinct = duckdb.sql(f"SELECT count(*), count(DISTINCT (trial_id, iteration)) "
                                    f"FROM '{run}/metrics.parquet'").fetchall()[0]
        out["duckdb"] = "ok" if rows == distinct else "inconsistent"
    except duckdb.IOException:
        out["duckdb"] = "ok"  # no file yet
    except duckdb.Error as exc:
        out["duckdb"], out["duckdb_error"] = "error", repr(exc)
    print(json.dumps({"t": t, **out}), flush=True)
    time.sleep(poll)
"""


def _params(rng: random.Random) -> dict[str, Any]:
    return {**FIXED, "w_cos": 10 ** rng.uniform(-3, 0), "w_l2": 10 ** rng.uniform(-4, -0.5),
            "inner_lr": 10 ** rng.uniform(-1.3, -0.1), "outer_lr": 10 ** rng.uniform(-3.5, -2.5),
            "ahe_schedule": rng.choice(SCHEDULES), "ahe_clip": rng.uniform(0.5, 4.0)}


def _record(tid: str, n: int, params: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    it = 100 * (n + 1)
    points = [{"iteration": it - 100 + 10 * k, "train_loss": rng.random(), "train_accuracy": rng.random(),
               "grad_norm": rng.random(), "correction_norm": rng.random(), "grad_cosine": rng.random(),
               "ahe_lambda": 1.0} for k in range(1, 11)]
    return {"kind": "val", "iteration": it, "elapsed_s": 0.2 * it, "sec_per_iter": 0.18, "peak_memory_mb": 512.0,
            "device": "cpu", "node": "10.0.0.7", "train_log": points, **points[-1],
            "val_loss": rng.random(), "val_accuracy": rng.random(), "val_ci95": 0.02, "checkpoint": None,
            # what Tune adds to every result
            "trial_id": tid, "training_iteration": n + 1, "time_this_iter_s": 20.0, "done": False,
            "timestamp": int(time.time()), "pid": 1234, "hostname": "node", "node_ip": "10.0.0.7",
            "config": params}


def stream(run_dir: Path, trials: int, reports: int, concurrent: int, tensorboard: bool,
           poll: float) -> tuple[ResultsWriter, dict[str, Any]]:
    """Run one stream; returns the writer (not closed) and what was measured."""
    rng = random.Random(0)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(run_dir), str(poll)],
                              stdout=subprocess.PIPE, text=True)
    first_read = reader.stdout.readline() if reader.stdout else ""  # started: its imports are done
    writer = ResultsWriter(run_dir, tensorboard=tensorboard)
    journal_s: list[float] = []
    if hasattr(writer, "_journal"):  # time the journal's share: what losing nothing in a kill costs
        append = writer._journal.append

        def timed(event: dict[str, Any]) -> None:
            t0 = time.perf_counter()
            append(event)
            journal_s.append(time.perf_counter() - t0)

        writer._journal.append = timed
    report_s = np.zeros(trials * reports)
    report_cpu = np.zeros(trials * reports)  # the driver thread's CPU time: what the load cannot inflate
    end_s = np.zeros(trials)
    progress: list[tuple[float, int]] = [(time.time(), 0)]  # (wall time, metrics rows in the writer)
    active: list[tuple[str, dict[str, Any], int]] = []
    started = done = n = 0
    begin = time.perf_counter()
    while done < trials:
        while len(active) < concurrent and started < trials:
            active.append((f"t{started:06d}", _params(rng), 0))
            started += 1
        still = []
        for tid, params, k in active:
            record = _record(tid, k, params, rng)
            t0, c0 = time.perf_counter(), time.thread_time()
            writer.on_report(tid, record, params)
            report_s[n], report_cpu[n] = time.perf_counter() - t0, time.thread_time() - c0
            n += 1
            if n % 200 == 0:
                progress.append((time.time(), n))
            if k + 1 < reports:
                still.append((tid, params, k + 1))
                continue
            t0 = time.perf_counter()
            writer.on_trial_end(tid, "completed", device="cpu", node="10.0.0.7", params=params)
            end_s[done] = time.perf_counter() - t0
            done += 1
        active = still
    wall = time.perf_counter() - begin
    progress.append((time.time(), n))
    reader.kill()
    reads = [json.loads(line) for line in [first_read, *reader.communicate()[0].splitlines()] if line]
    return writer, {"report_s": report_s, "report_cpu": report_cpu, "end_s": end_s, "wall": wall, "reads": reads, "progress": progress,
                    "journal_s": np.array(journal_s)}


def lag_seconds(reads: list[dict[str, Any]], progress: list[tuple[float, int]]) -> list[float]:
    """For each read that saw rows: read time minus the time the stream had reported that many."""
    times, counts = np.array([p[0] for p in progress]), np.array([p[1] for p in progress])
    lags = []
    for r in reads:
        if r.get("rows", 0) > 0 and r["t"] <= times[-1]:
            seen_at = np.interp(r["rows"], counts, times)  # when the writer had that many rows
            lags.append(max(0.0, r["t"] - seen_at))
    return lags


def optuna_seconds(n_trials: int, asks: int = 20) -> float:
    """Mean seconds of one TPE suggestion (ask + 6 suggest_*) with ``n_trials`` completed trials."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"w_cos": FloatDistribution(1e-3, 1.0, log=True), "w_l2": FloatDistribution(1e-4, 0.3, log=True),
             "inner_lr": FloatDistribution(0.05, 0.8, log=True), "outer_lr": FloatDistribution(3e-4, 3e-3, log=True),
             "ahe_schedule": CategoricalDistribution(SCHEDULES), "ahe_clip": FloatDistribution(0.5, 4.0)}
    rng = random.Random(1)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.add_trials([optuna.trial.create_trial(
        params={k: (rng.choice(SCHEDULES) if isinstance(d, CategoricalDistribution)
                    else 10 ** rng.uniform(np.log10(d.low), np.log10(d.high)) if d.log else rng.uniform(d.low, d.high))
                for k, d in space.items()},
        distributions=space, value=rng.random()) for _ in range(n_trials)])
    took = []
    for _ in range(asks):
        t0 = time.perf_counter()
        trial = study.ask()
        for name, d in space.items():
            if isinstance(d, CategoricalDistribution):
                trial.suggest_categorical(name, d.choices)
            else:
                trial.suggest_float(name, d.low, d.high, log=d.log)
        took.append(time.perf_counter() - t0)
        study.tell(trial, rng.random())
    return statistics.mean(took)


def _ms(values: np.ndarray) -> str:
    return f"{values.mean() * 1e3:.2f} / {np.percentile(values, 95) * 1e3:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20000)
    parser.add_argument("--reports", type=int, default=10, help="reports per trial")
    parser.add_argument("--concurrent", type=int, default=8, help="trials reporting in turn")
    parser.add_argument("--window", type=int, default=1000, help="reports averaged at the start and the end")
    parser.add_argument("--tensorboard", choices=("both", "off", "on"), default="both")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between the reader's reads")
    parser.add_argument("--optuna", default="1000,5000", help="study sizes for TPE's cost ('' to skip)")
    parser.add_argument("--dir", help="where the run directories go (default: a temporary directory)")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="driver_scale_"))
    modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.tensorboard]
    lines = [(f"{args.trials:,} trials x {args.reports} reports ({args.trials * args.reports:,} reports), "
              f"{args.concurrent} trials reporting in turn; tables read every {args.poll:g} s by another process"),
             "",
             (f"| results path | on_report, first {args.window:,}: mean / p95 (ms) | last {args.window:,}: "
              "mean / p95 (ms) | CPU time, first: mean / p95 (ms) | CPU time, last | max (ms) | on_trial_end: "
              "mean / p95 (ms) | stream wall (s) | reads, all consistent | DuckDB queries that failed | tables "
              "behind the stream: median / max (s) |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    extra = []
    print("\n".join(lines), flush=True)
    for tensorboard in modes:
        run_dir = base / ("tb" if tensorboard else "plain")
        shutil.rmtree(run_dir, ignore_errors=True)
        writer, m = stream(run_dir, args.trials, args.reports, args.concurrent, tensorboard, args.poll)
        r, w = m["report_s"], args.window
        lags = lag_seconds(m["reads"], m["progress"])
        ok = all(x["ok"] for x in m["reads"]) and not any(x.get("duckdb") == "inconsistent" for x in m["reads"])
        duck_errors = [x["duckdb_error"] for x in m["reads"] if x.get("duckdb") == "error"]
        lag = f"{statistics.median(lags):.1f} / {max(lags):.1f}" if lags else "-"
        c = m["report_cpu"]
        lines.append(f"| ResultsWriter{' + TensorBoard' if tensorboard else ''} | {_ms(r[:w])} | {_ms(r[-w:])} "
                     f"| {_ms(c[:w])} | {_ms(c[-w:])} "
                     f"| {r.max() * 1e3:.0f} | {_ms(m['end_s'])} | {m['wall']:.0f} "
                     f"| {len(m['reads'])}, {'yes' if ok else 'NO'} | {len(duck_errors)} | {lag} |")
        if duck_errors:
            extra.append(f"DuckDB errors ({'with' if tensorboard else 'without'} TensorBoard): {duck_errors[:2]}")
        extra.append(f"peak resident memory of this process after the stream {'with' if tensorboard else 'without'} "
                     f"TensorBoard: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        print(lines[-1], flush=True)  # each row as soon as it is measured
        bad = [x for x in m["reads"] if not x["ok"]]
        if bad:
            extra.append(f"inconsistent reads ({'TensorBoard' if tensorboard else 'plain'}): {bad[:3]}")
        if len(m["journal_s"]):
            extra.append(f"{'with' if tensorboard else 'without'} TensorBoard: of each event's cost, the journal "
                         f"append (JSON line, one write) took {_ms(m['journal_s'])} ms (mean / p95)")
        if not tensorboard:
            t0 = time.perf_counter()
            resumed = ResultsWriter(run_dir)  # as after a kill: replays the journal, publishes, takes over
            t1 = time.perf_counter()
            resumed.close()
            t2 = time.perf_counter()
            extra.append(f"without TensorBoard, at {args.trials:,} trials / {len(r):,} metrics rows: a new writer "
                         f"replaying the journal of the whole stream and publishing (resume after a kill) "
                         f"{t1 - t0:.1f} s; its close (final publish, journal folded into the tables) "
                         f"{t2 - t1:.2f} s")
        else:
            writer.close()
    sizes = [int(s) for s in args.optuna.split(",") if s.strip()]
    if sizes:
        lines += ["", "| Optuna TPE, in-memory study | ask + 6 suggestions, mean of 20 (ms) |", "|---|---|"]
        for size in sizes:
            lines.append(f"| {size:,} completed trials | {optuna_seconds(size) * 1e3:.1f} |")
    text = "\n".join([*lines, "", *extra]) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
    if not args.dir:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
