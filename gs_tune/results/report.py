"""Static report of a run: RUN_DIR/report/*.png and report.md.

Each plot's data comes from a pure ``*_data`` function (testable, reusable from a
notebook); the ``draw_*`` functions only turn that data into a PNG. Figures are
built on matplotlib's Agg canvas directly, never through pyplot, so no display or
global figure state is involved (the report may be written from a headless node).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gs_tune.fileio import atomic_write_text
from gs_tune.results._values import is_finite
from gs_tune.results.analysis import (
    DEFAULT_OBJECTIVE,
    Objective,
    asha_rung,
    late_slope,
    param_importances,
    pareto_mask,
    rank,
    resolve_objectives,
    searched_params,
    varying_params,
)
from gs_tune.results.evaluation import (
    MethodResult,
    PairResult,
    markdown_section,
    method_results,
    over_label,
    read_pairs,
    short_label,
)
from gs_tune.results.schema import PARAM_PREFIX
from gs_tune.results.summary import fmt, status_counts
from gs_tune.results.tables import read_evaluation, read_metrics, read_trials
from gs_tune.rundir import EVALUATION_FILE, METRICS_FILE, REPORT_DIR
from gs_tune.stats import Interval

Rows = Sequence[Mapping[str, Any]]


def _rows(data: pa.Table | Rows) -> list[Mapping[str, Any]]:
    return data.to_pylist() if isinstance(data, pa.Table) else list(data)


@dataclass
class HistoryData:
    numbers: list[int]
    trial_ids: list[str]
    values: list[float | None]
    best_so_far: list[float | None]
    label: str


@dataclass
class SliceData:
    param: str
    x: list[float]
    y: list[float]
    x_scale: str
    """linear, log, or symlog (log-like, but keeps the zeros of a parameter inactive in some trials)."""
    label: str
    trial_ids: list[str] = field(default_factory=list)


@dataclass
class CurveData:
    trial_id: str
    iterations: list[int]
    val_accuracy: list[float]


@dataclass
class ParetoData:
    x: list[float]
    y: list[float]
    trial_ids: list[str]
    on_front: list[bool]
    x_label: str
    y_label: str
    front: list[tuple[float, float]] = field(default_factory=list)


def history_data(trials: pa.Table | Rows, objective: Objective = DEFAULT_OBJECTIVE) -> HistoryData:
    """Objective value per trial in trial order (trials.parquet row order = order first seen) and the
    best value so far; trials without a finite value keep the running best."""
    values: list[float | None] = []
    best: list[float | None] = []
    running: float | None = None
    rows = _rows(trials)
    for r in rows:
        v = r.get(objective.column)
        v = float(v) if is_finite(v) else None
        if v is not None and (running is None or objective.better(v, running)):
            running = v
        values.append(v)
        best.append(running)
    return HistoryData(list(range(1, len(rows) + 1)), [str(r["trial_id"]) for r in rows], values, best,
                       objective.column)


def slice_data(trials: pa.Table | Rows, objective: Objective = DEFAULT_OBJECTIVE,
               params: Sequence[str] | None = None) -> list[SliceData]:
    """Objective vs each numeric searched parameter (``params``: param_* columns; default those that
    vary); log x when the positive values span more than two decades (learning rates, loss weights)."""
    rows = _rows(trials)
    out = []
    for column in params if params is not None else varying_params(rows, numeric_only=True):
        pts = [(float(r[column]), float(r[objective.column]), str(r["trial_id"])) for r in rows
               if is_finite(r.get(column)) and is_finite(r.get(objective.column))]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        positive = [x for x in xs if x > 0]
        scale = "linear"
        if positive and min(xs) >= 0 and max(positive) / min(positive) > 100:
            scale = "log" if len(positive) == len(xs) else "symlog"
        out.append(SliceData(column[len(PARAM_PREFIX):], xs, [p[1] for p in pts], scale, objective.column,
                             [p[2] for p in pts]))
    return out


def curves_data(trials: pa.Table | Rows, metrics: pa.Table | Rows, objective: Objective = DEFAULT_OBJECTIVE,
                top_k: int = 5) -> list[CurveData]:
    """val_accuracy vs iteration of the ``top_k`` best trials by ``objective``, best first."""
    by_trial: dict[str, list[tuple[int, float]]] = {}
    for m in _rows(metrics):
        if m.get("val_accuracy") is not None:
            by_trial.setdefault(str(m["trial_id"]), []).append((int(m["iteration"]), float(m["val_accuracy"])))
    out = []
    for r in rank(_rows(trials), objective)[:top_k]:
        pts = sorted(by_trial.get(str(r["trial_id"]), []))
        out.append(CurveData(str(r["trial_id"]), [p[0] for p in pts], [p[1] for p in pts]))
    return out


def pareto_data(trials: pa.Table | Rows, objectives: Sequence[Objective]) -> ParetoData | None:
    """First objective (y) vs second (x) of every trial with both, and which are Pareto-optimal; None
    for a single-objective run."""
    if len(objectives) < 2:
        return None
    y_obj, x_obj = objectives[0], objectives[1]
    rows = [r for r in _rows(trials) if is_finite(r.get(x_obj.column)) and is_finite(r.get(y_obj.column))]
    xs = [float(r[x_obj.column]) for r in rows]
    ys = [float(r[y_obj.column]) for r in rows]
    mask = pareto_mask(list(zip(ys, xs)), [y_obj.direction, x_obj.direction])
    front = sorted((x, y) for x, y, keep in zip(xs, ys, mask) if keep)
    return ParetoData(xs, ys, [str(r["trial_id"]) for r in rows], mask, x_obj.label, y_obj.label, front)


# --- drawing ------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _no_data(ax: Any) -> None:
    ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes, color="grey")


def draw_history(data: HistoryData, path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    pts = [(n, v) for n, v in zip(data.numbers, data.values) if v is not None]
    if pts:
        ax.scatter(*zip(*pts), s=14, alpha=0.6, label="trial")
        best = [(n, b) for n, b in zip(data.numbers, data.best_so_far) if b is not None]
        ax.step(*zip(*best), where="post", color="C3", label="best so far")
        ax.legend(loc="lower right")
    else:
        _no_data(ax)
    ax.set(xlabel="trial number", ylabel=data.label, title="Optimisation history")
    fig.savefig(path)
    return path


def draw_importances(importances: Mapping[str, float], path: Path, title: str = "Parameter importances") -> Path:
    names = list(importances)[::-1]  # largest on top
    fig = _figure(6.4, max(2.0, 0.35 * len(names) + 1.0))
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="C0")
    ax.set(xlabel="importance (normalised)", title=title)
    fig.savefig(path)
    return path


def draw_slice(data: SliceData, path: Path) -> Path:
    fig = _figure(5.0, 3.6)
    ax = fig.add_subplot()
    ax.scatter(data.x, data.y, s=16, alpha=0.7)
    if data.x_scale == "symlog":
        ax.set_xscale("symlog", linthresh=min(x for x in data.x if x > 0))
    elif data.x_scale == "log":
        ax.set_xscale("log")
    ax.set(xlabel=data.param, ylabel=data.label, title=f"{data.param} vs {data.label}")
    fig.savefig(path)
    return path


def draw_curves(curves: Sequence[CurveData], path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    drawn = [c for c in curves if c.iterations]
    for c in drawn:
        ax.plot(c.iterations, c.val_accuracy, marker="o", ms=3, label=c.trial_id)
    if drawn:
        ax.legend(fontsize="small")
    else:
        _no_data(ax)
    ax.set(xlabel="meta-iteration", ylabel="val_accuracy", title=f"Learning curves of the top {len(curves)}")
    fig.savefig(path)
    return path


def draw_pareto(data: ParetoData, path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    if data.x:
        ax.scatter(data.x, data.y, s=14, alpha=0.4, color="grey", label="trial")
        fx, fy = zip(*data.front)
        ax.plot(fx, fy, marker="o", color="C3", label="Pareto front")
        ax.legend()
    else:
        _no_data(ax)
    ax.set(xlabel=data.x_label, ylabel=data.y_label, title="Pareto front")
    fig.savefig(path)
    return path


def draw_evaluation(results: Sequence[MethodResult], path: Path) -> Path:
    """Bars of mean test accuracy with their 95% t-interval, one per method (diverged ones left out);
    each label says what its interval is over."""
    shown = [(r, r.interval) for r in results if r.interval is not None][::-1]  # first method on top
    fig = _figure(8.0, max(2.4, 0.55 * len(shown) + 1.4))
    ax = fig.add_subplot()
    if shown:
        ax.barh([f"{short_label(r.method, r.source)} [{_over(iv)}]" for r, iv in shown],
                [iv.mean * 100 for _, iv in shown], xerr=[iv.half_width * 100 for _, iv in shown],
                color="C0", capsize=4)
        ax.set_xlim(0, 100)
    else:
        _no_data(ax)
    ax.set(xlabel="test accuracy (%)\nmean ± 95% t-interval over the [seeds], or one seed's [test tasks]",
           title="Test split (gs-tune evaluate)")
    fig.savefig(path)
    return path


def draw_pairs(pairs: Sequence[PairResult], path: Path, sources: Mapping[str, str] | None = None) -> Path:
    """Bars of each method's mean paired difference from the reference with its 95% t-interval over the
    shared seeds (methods without a pair left out); ``sources``: each method's config_source."""
    shown = [(p, p.interval) for p in pairs if p.interval is not None][::-1]
    fig = _figure(8.0, max(2.4, 0.55 * len(shown) + 1.4))
    ax = fig.add_subplot()
    if shown:
        ax.barh([f"{short_label(p.method, (sources or {}).get(p.method, ''))} [{_over(iv)}]" for p, iv in shown], [iv.mean * 100 for _, iv in shown],
                xerr=[iv.half_width * 100 for _, iv in shown], color="C2", capsize=4)
        ax.axvline(0.0, color="grey", lw=1)
    else:
        _no_data(ax)
    reference = pairs[0].reference if pairs else "reference"
    ax.set(xlabel=f"test accuracy − {reference} (percentage points)\nmean ± 95% t-interval over the shared [seeds]",
           title=f"Paired differences from {reference}\n(same seeds, same test tasks)")
    fig.savefig(path)
    return path


def _over(interval: Interval) -> str:
    return over_label(interval) + (", no interval" if math.isnan(interval.half_width) else "")


# --- report -------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _best_trial(ranked: Rows, objective: Objective) -> list[str]:
    if not ranked:
        return ["No trial has a value for the objective yet."]
    b = ranked[0]
    ci = b.get("final_val_ci95")
    md = [f"`{b['trial_id']}` ({b['status']}): {objective.column} = {fmt(b.get(objective.column))}; "
          f"final val accuracy {fmt(b.get('final_val_accuracy'))}"
          + (f" ± {ci:.3f}" if is_finite(ci) else ""),
          "", "| parameter | value |", "|---|---|"]
    return md + [f"| {k[len(PARAM_PREFIX):]} | {fmt(v)} |" for k, v in b.items() if k.startswith(PARAM_PREFIX)]


SLOPE_NOTE = ("Slope: a least-squares line through each trial's validations over the second half of its "
              "training, per 1,000 meta-iterations. An interval above 0 says the trial was still improving "
              "when it ended, so more `iterations` may pay. A trial validates on the same tasks every time, "
              "so the noise here is the points' scatter around the line, not the interval over val tasks.")


def _curves_section(curves: Sequence[CurveData], out: Path) -> list[str]:
    md = [f"![curves]({draw_curves(curves, out / 'curves.png').name})"]
    rows = [(c, late_slope(c.iterations, c.val_accuracy)) for c in curves if c.iterations]
    if not rows:
        return md
    md += ["", "| trial | val accuracy at the last validation | second half: slope per 1,000 iterations |",
           "|---|---|---|"]
    md += [f"| `{c.trial_id}` | {fmt(c.val_accuracy[-1])} (iteration {c.iterations[-1]}) | "
           f"{'fewer than 3 validations' if slope is None else slope.describe(100.0, ' pp')} |" for c, slope in rows]
    return md + ["", SLOPE_NOTE]


def _evaluation_section(run_dir: Path, out: Path) -> list[str]:
    """The test split, from evaluation.parquet and evaluation_pairs.parquet (`gs-tune evaluate`): the
    only place the report shows test accuracy, since a search never evaluates the test split."""
    evaluation = read_evaluation(run_dir).to_pylist()
    pairs = read_pairs(run_dir)
    results = method_results(evaluation)
    md = ["## Test split (`gs-tune evaluate`)", "", *markdown_section(evaluation, pairs), "",
          f"![evaluation]({draw_evaluation(results, out / 'evaluation.png').name})"]
    if any(p.interval is not None for p in pairs):
        plot = draw_pairs(pairs, out / "pairs.png", {r.method: r.source for r in results})
        md += ["", f"![pairs]({plot.name})"]
    return md


def _importances_section(run_dir: Path, metrics: Rows, out: Path) -> list[str]:
    md: list[str] = []
    importances, note = param_importances(run_dir)
    if importances:
        md += [f"{note}.", "", f"![importances]({draw_importances(importances, out / 'importances.png').name})"]
    else:
        md.append(f"Skipped: {note}.")
    rung = asha_rung(run_dir, metrics)
    if rung is None:
        return md
    md += ["", (f"Under ASHA a stopped trial enters the study with its value when it stopped, so the values "
               f"above mix budgets and favour fast starters. At ASHA's first rung (iteration {rung}) every "
               "trial had run the same budget:"), ""]
    at_rung, note = param_importances(run_dir, at_iteration=rung, metrics=metrics)
    if at_rung:
        drawn = draw_importances(at_rung, out / "importances_rung.png", f"Parameter importances at iteration {rung}")
        return md + [f"{note}.", "", f"![importances at iteration {rung}]({drawn.name})"]
    return md + [f"Skipped: {note}."]


def write_report(run_dir: str | os.PathLike[str], top_k: int = 5) -> Path:
    """Write RUN_DIR/report/*.png and RUN_DIR/report/report.md; returns the report.md path."""
    run_dir = Path(run_dir)
    trials = read_trials(run_dir)
    rows = trials.to_pylist()
    metrics = read_metrics(run_dir).to_pylist() if (run_dir / METRICS_FILE).exists() else []
    objectives, notes = resolve_objectives(run_dir, trials.column_names)
    objective = objectives[0]
    out = run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # slices of parameters no longer present must not linger
        old.unlink()

    counts = status_counts(rows)
    md = [f"# Report: {run_dir.name}", "",
          f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} from `{run_dir}`.", "",
          f"**{len(rows)} trials**: " + (", ".join(f"{n} {s}" for s, n in counts.items()) or "none"), "",
          "Objective: " + ", ".join(o.label for o in objectives), ""]
    md += [f"> note: {n}" for n in notes] + ([""] if notes else [])
    md += ["## Best trial", "", *_best_trial(rank(rows, objective), objective)]

    history = draw_history(history_data(rows, objective), out / "history.png")
    md += ["", "## Optimisation history", "", f"![history]({history.name})"]
    md += ["", "## Parameter importances", "", *_importances_section(run_dir, metrics, out)]
    slices = slice_data(rows, objective, searched_params(run_dir, rows, numeric_only=True))
    md += ["", "## Parameter slices", ""]
    md += [f"![{s.param}]({draw_slice(s, out / f'slice_{_safe(s.param)}.png').name})" for s in slices]
    if not slices:
        md.append("No numeric parameter varies between trials.")
    curves = curves_data(rows, metrics, objective, top_k)
    md += ["", "## Learning curves", "", *_curves_section(curves, out)]
    pareto = pareto_data(rows, objectives)
    if pareto is not None:
        md += ["", "## Pareto front", "", f"![pareto]({draw_pareto(pareto, out / 'pareto.png').name})", ""]
        md += [f"- `{t}`: {pareto.y_label} = {fmt(y)}, {pareto.x_label} = {fmt(x)}"
               for t, x, y, keep in zip(pareto.trial_ids, pareto.x, pareto.y, pareto.on_front) if keep]
    if (run_dir / EVALUATION_FILE).exists():
        md += ["", *_evaluation_section(run_dir, out)]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md) + "\n")
    return path

