"""What evaluation.parquet says per method: test accuracy over seeds, its table and its plot.

`gs-tune evaluate` (gs_tune/search/evaluate.py) prints this table after retraining; `gs-tune
report` adds it, with a bar plot (report.draw_evaluation), to report.md when the run directory
holds evaluation.parquet.
No Ray here: the rows are read from the table alone.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gs_tune.stats import mean_interval

Rows = Sequence[Mapping[str, Any]]
CI_NOTE = ("test accuracy: mean over seeds ± t·sd/√seeds, Student t with seeds − 1 degrees of freedom "
           "(one seed: its CI over test tasks)")


def aggregate(accuracies: Sequence[float], ci95s: Sequence[float]) -> tuple[float, float]:
    """Mean over seeds and its 95% half-width over the per-seed accuracies (gs_tune.stats; their sd
    holds training noise and, as each seed draws its own test tasks, task sampling noise too). With
    one seed, that run's own CI over its test tasks."""
    if len(accuracies) == 1:
        return accuracies[0], ci95s[0]
    interval = mean_interval(accuracies, over="seeds")
    return interval.mean, interval.half_width


@dataclass(frozen=True)
class MethodResult:
    method: str
    source: str  # config_source
    seeds: int  # runs of the method
    finished: int  # runs with a test accuracy (the others diverged)
    accuracy: float | None  # mean over finished seeds
    ci95: float | None
    sec_per_iter: float | None  # mean over seeds
    peak_memory_mb: float | None  # the highest over seeds


def method_results(rows: Rows) -> list[MethodResult]:
    """One result per method, in the table's order of first appearance."""
    out = []
    for name in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == name]
        ok = [r for r in mine if r.get("test_accuracy") is not None]
        acc = ci = None
        if ok:
            acc, ci = aggregate([r["test_accuracy"] for r in ok], [r["test_ci95"] for r in ok])
        secs = [r["sec_per_iter"] for r in mine if r.get("sec_per_iter") is not None]
        mem = [r["peak_memory_mb"] for r in ok if r.get("peak_memory_mb") is not None]
        out.append(MethodResult(
            method=name, source=str(mine[0].get("config_source") or ""), seeds=len(mine), finished=len(ok),
            accuracy=acc, ci95=ci, sec_per_iter=statistics.fmean(secs) if secs else None,
            peak_memory_mb=max(mem) if mem else None))
    return out


def _cells(r: MethodResult) -> tuple[str, str, str, str, str, str]:
    seeds = f"{r.finished}/{r.seeds}" if r.finished < r.seeds else str(r.seeds)
    acc = "diverged" if r.accuracy is None else f"{r.accuracy * 100:.2f}% ± {(r.ci95 or 0.0) * 100:.2f}%"
    sec = "-" if r.sec_per_iter is None else f"{r.sec_per_iter:.4f}"
    peak = "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"
    return r.method, r.source, seeds, acc, sec, peak


def format_summary(rows: Rows) -> str:
    """The terminal table: one line per method."""
    results = [_cells(r) for r in method_results(rows)]
    width = max(len("method"), *(len(c[0]) for c in results))
    lines = [f"{'method':<{width}}  {'source':<13}  seeds  {'test accuracy':>17}  {'sec/iter':>8}  {'peak MB':>8}"]
    lines += [f"{m:<{width}}  {src:<13}  {seeds:>5}  {acc:>17}  {sec:>8}  {peak:>8}"
              for m, src, seeds, acc, sec, peak in results]
    lines.append(CI_NOTE)
    return "\n".join(lines)


def markdown_table(rows: Rows) -> list[str]:
    """The same table as Markdown lines (report.md, BENCHMARKS.md)."""
    md = ["| method | config from | seeds | test accuracy | s / meta-iteration | peak MB |",
          "|---|---|---|---|---|---|"]
    md += ["| " + " | ".join(_cells(r)) + " |" for r in method_results(rows)]
    return md
