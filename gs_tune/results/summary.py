"""Terminal summary of a run directory: best trials, counts by status, parameter importances.

Reads only files (trials.parquet, run.json, study.db), so it works while the
search is still running, after it finished, and after it was interrupted.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gs_tune.results.analysis import (
    Objective,
    asha_rung,
    param_importances,
    pareto_rows,
    rank,
    resolve_objectives,
    searched_params,
)
from gs_tune.results.schema import PARAM_PREFIX
from gs_tune.results.tables import read_trials
from gs_tune.rundir import FAILED, RUNNING, STATUSES


def fmt(value: Any, digits: int = 4) -> str:
    """Compact cell text: '-' for missing, 4 significant digits for floats."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}"
    return str(value)


def _metric(value: Any) -> str:
    # fixed decimals so accuracies line up digit by digit down the column
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) and abs(value) < 1e4 else fmt(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain fixed-width table; numbers right-aligned so columns of digits line up."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def numeric(cell: str) -> bool:
        return cell.replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).replace("±", "").isdigit()

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if numeric(c) else c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def status_counts(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Trials per status, in lifecycle order (unknown statuses last)."""
    counts = Counter(str(r.get("status")) for r in rows)
    order = [s for s in STATUSES if s in counts] + sorted(set(counts) - set(STATUSES))
    return {s: counts[s] for s in order}


def _trial_rows(rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective], params: Sequence[str]) -> str:
    shown = [o.column for o in objectives]
    extra = [c for c in ("best_val_accuracy", "final_val_accuracy") if c not in shown]
    headers = ["#", "trial_id", "status", *shown, *extra, "±ci95", "iters", "s/iter",
               *(p[len(PARAM_PREFIX):] for p in params)]
    body = []
    for i, r in enumerate(rows, 1):
        ci = r.get("final_val_ci95")
        body.append([str(i), str(r["trial_id"]), str(r["status"]), *(_metric(r.get(c)) for c in shown + extra),
                     "-" if ci is None else f"±{ci:.3f}", fmt(r.get("iterations")), fmt(r.get("sec_per_iter"), 3),
                     *(fmt(r.get(p)) for p in params)])
    return format_table(headers, body)


def summarize(run_dir: str | os.PathLike[str], top_k: int = 5) -> str:
    """Text summary of RUN_DIR; RunDirError if it has no trials.parquet."""
    table = read_trials(run_dir)
    rows = table.to_pylist()
    objectives, notes = resolve_objectives(run_dir, table.column_names)
    counts = status_counts(rows)
    out = [f"Run {Path(run_dir)}: {len(rows)} trials"
           + (" (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")" if rows else "")]
    if counts.get(RUNNING):
        out.append(f"{counts[RUNNING]} trial(s) still marked running: the search is live or was interrupted.")
    out.append("Objective: " + ", ".join(o.label for o in objectives))
    out += [f"note: {n}" for n in notes]
    params = searched_params(run_dir, rows)
    out.append("")
    if len(objectives) > 1:
        front = pareto_rows(rows, objectives)
        out.append(f"Pareto-optimal trials ({len(front)}):")
        out.append(_trial_rows(front, objectives, params) if front else "  (no trial has every objective yet)")
    else:
        best = rank(rows, objectives[0])[:max(top_k, 0)]
        out.append(f"Top {len(best)} trials by {objectives[0].label}:")
        out.append(_trial_rows(best, objectives, params) if best else "  (no trial has a value yet)")
    failed = [r for r in rows if r.get("status") in FAILED and r.get("error")]
    if failed:
        out.append("")
        out.append(f"Failed trials ({len(failed)}), last line of each error:")
        out += [f"  {r['trial_id']}: {str(r['error']).strip().splitlines()[-1][:100]}" for r in failed[:5]]
    out.append("")
    out += _importance_lines("Parameter importances", *param_importances(run_dir))
    rung = asha_rung(run_dir)
    if rung is not None:  # the study's values mix ASHA's budgets; at the first rung all had the same
        out += _importance_lines("Parameter importances at ASHA's first rung",
                                 *param_importances(run_dir, at_iteration=rung))
    return "\n".join(out)


def _importance_lines(title: str, importances: Mapping[str, float] | None, note: str) -> list[str]:
    if importances is None:
        return [f"{title}: skipped ({note})."]
    width = max((len(k) for k in importances), default=0)
    return [f"{title} ({note}):",
            *(f"  {name.ljust(width)}  {value:6.3f}  {'#' * round(value * 40)}" for name, value in importances.items())]
