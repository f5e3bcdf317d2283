"""What evaluation.parquet says: test accuracy per method over seeds, paired differences from a
reference method, their tables, notes and the pairs table evaluation_pairs.parquet.

`gs-tune evaluate` (gs_tune/search/evaluate.py) prints these tables after retraining and writes
both files; `gs-tune report` adds them, with bar plots (report.draw_evaluation, draw_pairs), to
report.md when the run directory holds evaluation.parquet. docs/protocol.md is the prose version.
No Ray here: everything is computed from the rows alone.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from gs_tune.results.schema import column, table_schema
from gs_tune.results.summary import format_table
from gs_tune.results.tables import read_table_file, write_table_atomic
from gs_tune.rundir import EVALUATION_PAIRS_FILE
from gs_tune.stats import Interval, mean_interval, paired_difference

Rows = Sequence[Mapping[str, Any]]
DEFAULT_REFERENCE = "fomaml"
# What decides the test tasks a run is scored on (gs_tune/trainer.py, _Samplers.test_tasks): the
# test split's classes and examples, the task shape, how many tasks, and the seed's test stream,
# which nothing else draws from. Two runs equal in these fields are scored on the very same tasks
# whatever their algorithm or hyperparameters (tests/search/test_evaluate.py checks it).
TEST_TASK_FIELDS = ("dataset", "data_root", "ways", "shots", "query", "test_tasks", "seed")
CI_NOTE = ("Intervals are 95% Student-t intervals: a method's test accuracy is the mean over its seeds "
           "± t·sd/√n (n − 1 degrees of freedom); with one seed, that run's interval over its test tasks. "
           "The 'interval over' column says which")
PAIRS_NOTE = ("Paired difference: the mean over shared seeds of (method − reference) test accuracy, both "
              "scored on the same test tasks per seed, ± its 95% t-interval over those seeds (n − 1 degrees "
              "of freedom; none with one seed). A seed on which either method diverged is left out")


def _plural(n: int, over: str) -> str:
    return f"{n} {over[:-1] if n == 1 and over.endswith('s') else over}"


def over_label(interval: Interval) -> str:
    """What an interval is over, e.g. '5 seeds' or '600 test tasks'."""
    return _plural(interval.n, interval.over)


def aggregate(accuracies: Sequence[float], ci95s: Sequence[float | None], tasks: Sequence[int | None]) -> Interval:
    """Mean over seeds with its 95% t-interval over the per-seed accuracies (their spread holds
    training noise and, as each seed draws its own test tasks, task sampling noise too). With one
    seed there is no spread over seeds: that run's own t-interval over its test tasks."""
    if len(accuracies) == 1:
        ci = ci95s[0]
        return Interval(accuracies[0], float("nan") if ci is None else ci, int(tasks[0] or 0), "test tasks")
    return mean_interval(accuracies, over="seeds")


def _accuracy(row: Mapping[str, Any]) -> float | None:
    acc = row.get("test_accuracy")
    return float(acc) if acc is not None and math.isfinite(acc) else None


def _params(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """A row's run parameters: ``params`` as evaluate builds it, or ``params_json`` as stored."""
    if row.get("params") is not None:
        return dict(row["params"])
    text = row.get("params_json")
    return json.loads(text) if text else None


def _by_method(rows: Rows) -> dict[str, dict[int, Mapping[str, Any]]]:
    """Each method's rows by seed, methods in the table's order of first appearance."""
    out: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r["method"]), {})[int(r["seed"])] = r
    return out


@dataclass(frozen=True)
class MethodResult:
    method: str
    source: str  # config_source
    seeds: int  # runs of the method
    finished: int  # runs with a test accuracy (the others diverged)
    interval: Interval | None  # over finished seeds, or over test tasks with one; None: all diverged
    sec_per_iter: float | None  # mean over seeds
    peak_memory_mb: float | None  # the highest over seeds

    @property
    def accuracy(self) -> float | None:
        return None if self.interval is None else self.interval.mean

    @property
    def ci95(self) -> float | None:
        return None if self.interval is None else self.interval.half_width


def method_results(rows: Rows) -> list[MethodResult]:
    """One result per method, in the table's order of first appearance."""
    out = []
    for name, runs in _by_method(rows).items():
        mine = list(runs.values())
        ok = [(r, acc) for r in mine if (acc := _accuracy(r)) is not None]
        interval = None
        if ok:
            interval = aggregate([acc for _, acc in ok], [r.get("test_ci95") for r, _ in ok],
                                 [r.get("test_tasks") for r, _ in ok])
        secs = [r["sec_per_iter"] for r in mine if r.get("sec_per_iter") is not None]
        mem = [r["peak_memory_mb"] for r, _ in ok if r.get("peak_memory_mb") is not None]
        out.append(MethodResult(
            method=name, source=str(mine[0].get("config_source") or ""), seeds=len(mine), finished=len(ok),
            interval=interval, sec_per_iter=statistics.fmean(secs) if secs else None,
            peak_memory_mb=max(mem) if mem else None))
    return out


# --- paired differences ---------------------------------------------------------


@dataclass(frozen=True)
class PairResult:
    method: str
    reference: str
    interval: Interval | None  # of the difference method − reference, over shared seeds; None: no pair
    seeds: tuple[int, ...]  # the shared seeds it is over
    note: str  # seeds left out and why, or why there is no pair; "" when every seed is shared


def _task_mismatch(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """The TEST_TASK_FIELDS on which two runs differ ('' when they share their test tasks or a
    row predates params_json, which cannot tell)."""
    pa_, pb = _params(a), _params(b)
    if pa_ is None or pb is None:
        return ""
    return ", ".join(f"{f} {pa_.get(f)} vs {pb.get(f)}" for f in TEST_TASK_FIELDS if pa_.get(f) != pb.get(f))


def _left_out(seed: int, sides: Sequence[tuple[str, Mapping[int, Mapping[str, Any]]]]) -> str:
    diverged = [name for name, runs in sides if seed in runs and _accuracy(runs[seed]) is None]
    absent = [name for name, runs in sides if seed not in runs]
    why = ([f"{' and '.join(diverged)} diverged"] if diverged else []) + [f"{n} has no run" for n in absent]
    return f"seed {seed} ({', '.join(why)})"


def _pair(name: str, mine: Mapping[int, Mapping[str, Any]], ref_name: str,
          ref: Mapping[int, Mapping[str, Any]]) -> PairResult:
    common = sorted(set(mine) & set(ref))
    for seed in common:
        mismatch = _task_mismatch(mine[seed], ref[seed])
        if mismatch:
            return PairResult(name, ref_name, None, (), f"not paired: different test tasks ({mismatch})")
    accs = {s: (a, b) for s in common if (a := _accuracy(mine[s])) is not None and (b := _accuracy(ref[s])) is not None}
    shared = tuple(accs)
    sides = ((name, mine), (f"{ref_name} (reference)", ref))
    left_out = [_left_out(s, sides) for s in sorted(set(mine) | set(ref)) if s not in shared]
    paired = f"paired on the {_plural(len(shared), 'seeds')} both finished" if shared else "no seed both finished"
    note = f"{paired}; left out: {'; '.join(left_out)}" if left_out else ""
    if not shared:
        return PairResult(name, ref_name, None, (), note)
    diff = paired_difference([a for a, _ in accs.values()], [b for _, b in accs.values()], over="seeds")
    return PairResult(name, ref_name, diff, shared, note)


def paired_results(rows: Rows, reference: str) -> list[PairResult]:
    """Every other method's test accuracy minus ``reference``'s, paired by seed on the seeds both
    finished; ValueError if ``reference`` is not a method of ``rows``."""
    by_method = _by_method(rows)
    if reference not in by_method:
        raise ValueError(f"reference {reference!r} is not a method of the table; allowed: {', '.join(by_method)}")
    return [_pair(name, runs, reference, by_method[reference]) for name, runs in by_method.items()
            if name != reference]


PAIRS_SCHEMA: pa.Schema = table_schema([
    column("method", pa.string(), "Method compared with the reference (a method of evaluation.parquet).", False),
    column("reference", pa.string(), "The reference method (gs-tune evaluate --reference).", False),
    column("seeds", pa.int64(), "Shared seeds the difference is over: those both methods finished.", False),
    column("mean_difference", pa.float64(),
           "Mean over the shared seeds of test_accuracy(method) - test_accuracy(reference); null: no pair."),
    column("ci95", pa.float64(), "Half-width of its 95% Student-t interval over the shared seeds (seeds - 1 "
                                 "degrees of freedom); null with fewer than two shared seeds."),
    column("shared_seeds", pa.list_(pa.int64()), "The shared seeds.", False),
    column("note", pa.string(), "Seeds left out and why (a method diverged), or why there is no pair."),
], "evaluation_pairs")


def write_pairs(run_dir: str | os.PathLike[str], pairs: Sequence[PairResult]) -> Path:
    """Replace RUN_DIR/evaluation_pairs.parquet with ``pairs`` (an empty table when there are none,
    so no earlier evaluation's pairs linger)."""
    rows = [{"method": p.method, "reference": p.reference, "seeds": len(p.seeds),
             "mean_difference": None if p.interval is None else p.interval.mean,
             "ci95": None if p.interval is None or math.isnan(p.interval.half_width) else p.interval.half_width,
             "shared_seeds": list(p.seeds), "note": p.note or None} for p in pairs]
    return write_table_atomic(pa.Table.from_pylist(rows, schema=PAIRS_SCHEMA), Path(run_dir) / EVALUATION_PAIRS_FILE)


def read_pairs(run_dir: str | os.PathLike[str]) -> list[PairResult]:
    """RUN_DIR/evaluation_pairs.parquet as PairResults; [] when the file is not there."""
    path = Path(run_dir) / EVALUATION_PAIRS_FILE
    if not path.is_file():
        return []
    out = []
    for r in read_table_file(path).to_pylist():
        interval = None
        if r["mean_difference"] is not None:
            ci = float("nan") if r["ci95"] is None else r["ci95"]
            interval = Interval(r["mean_difference"], ci, r["seeds"], "seeds")
        out.append(PairResult(r["method"], r["reference"], interval, tuple(r["shared_seeds"]), r["note"] or ""))
    return out


# --- what each row is -----------------------------------------------------------


def method_note(method: str, source: str, params: Mapping[str, Any] | None) -> str:
    """What a row of the table is, in one sentence (printed and in report.md under the table)."""
    p = params or {}
    algo = p.get("algorithm", method)
    if source == "tuned":
        return f"{method}: the search's best trial (highest best_val_accuracy), retrained."
    if source == "tuned-ablation":
        return (f"{method}: the tuned configuration with the correction switched off (w_cos = w_l2 = w_dot = 0), "
                "i.e. first-order MAML at AHE's tuned step sizes, outer learning rate included. It isolates the "
                "correction at fixed step sizes; it is not a tuned first-order MAML.")
    if source == "default":
        here = [f"{k} {p.get(k)}" for k in ("w_cos", "w_l2", "inner_lr", "inner_steps", "outer_lr")
                if k in p and (algo == "ahe" or not k.startswith("w_"))]
        steps = (f" Reptile takes {p.get('inner_steps')} inner steps where the space has fewer than 2 (with one it "
                 "would be joint training).") if algo == "reptile" else ""
        return (f"{method}: untuned, what `gs-tune train --algorithm {algo}` runs without a search: TrainConfig's "
                f"default for every searched field, the search space's fixed fields (problem and budget)"
                + (f"; here {', '.join(here)}." if here else ".") + steps)
    if source == "baselines-run":
        return f"{method}: the best trial of {algo} in the --baselines-run searches, retrained."
    return f"{method}: configuration from {source or 'unknown'}."


def method_notes(rows: Rows) -> list[str]:
    return [method_note(name, str(next(iter(runs.values())).get("config_source") or ""),
                        _params(next(iter(runs.values())))) for name, runs in _by_method(rows).items()]


def short_label(method: str, source: str) -> str:
    """A plot's label of a row: the ablation says what it is there too."""
    return f"{method}\n(FOMAML at AHE's tuned steps)" if source == "tuned-ablation" else method


# --- tables -----------------------------------------------------------------------


def _pct(interval: Interval, signed: bool = False) -> str:
    unit = " pp" if signed else "%"
    mean = f"{interval.mean * 100:{'+' if signed else ''}.2f}{unit}"
    if math.isnan(interval.half_width):
        return f"{mean}, no interval"
    return f"{mean} ± {interval.half_width * 100:.2f}{unit}"


def _cells(r: MethodResult) -> tuple[str, ...]:
    seeds = f"{r.finished}/{r.seeds}" if r.finished < r.seeds else str(r.seeds)
    acc = "diverged" if r.interval is None else _pct(r.interval)
    over = "-" if r.interval is None else over_label(r.interval)
    sec = "-" if r.sec_per_iter is None else f"{r.sec_per_iter:.4f}"
    peak = "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"
    return r.method, r.source, seeds, acc, over, sec, peak


def _pair_cells(p: PairResult) -> tuple[str, ...]:
    if p.interval is None:
        return p.method, "no pair", "-", p.note
    return p.method, _pct(p.interval, signed=True), over_label(p.interval), p.note


def format_summary(rows: Rows, pairs: Sequence[PairResult] = ()) -> str:
    """The terminal tables: one line per method, then the paired differences and what each row is."""
    headers = ("method", "source", "seeds", "test accuracy", "95% t-interval over", "sec/iter", "peak MB")
    lines = [format_table(headers, [_cells(r) for r in method_results(rows)]), CI_NOTE + "."]
    if pairs:
        lines += ["", f"Paired differences from {pairs[0].reference} (percentage points):"]
        lines += [format_table((f"method - {pairs[0].reference}", "test accuracy", "95% t-interval over", "note"),
                               [_pair_cells(p) for p in pairs]), PAIRS_NOTE + "."]
    lines += ["", *method_notes(rows)]
    return "\n".join(lines)


def markdown_table(rows: Rows) -> list[str]:
    """The per-method table as Markdown lines (report.md, BENCHMARKS.md)."""
    md = ["| method | config from | seeds | test accuracy | 95% t-interval over | s / meta-iteration | peak MB |",
          "|---|---|---|---|---|---|---|"]
    return md + ["| " + " | ".join(_cells(r)) + " |" for r in method_results(rows)]


def markdown_pairs(pairs: Sequence[PairResult]) -> list[str]:
    """The paired differences as Markdown lines; [] when there are none."""
    if not pairs:
        return []
    md = [f"| method − {pairs[0].reference} | test accuracy difference | 95% t-interval over | note |",
          "|---|---|---|---|"]
    return md + ["| " + " | ".join(_pair_cells(p)) + " |" for p in pairs]


def markdown_section(rows: Rows, pairs: Sequence[PairResult] = ()) -> list[str]:
    """Both tables with what their intervals are and what each row is (report.md's test-split section)."""
    md = [*markdown_table(rows), "", CI_NOTE + "."]
    if pairs:
        md += ["", f"Paired differences from **{pairs[0].reference}** (percentage points):", "",
               *markdown_pairs(pairs), "", PAIRS_NOTE + "."]
    return md + ["", *(f"- {note}" for note in method_notes(rows))]
