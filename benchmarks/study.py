"""Print BENCHMARKS.md §4 (the second study) from its run directories and draw its plots.

    python benchmarks/study.py --runs RUNS_DIR [--plots DIR] [--out FILE]

RUNS_DIR is what benchmarks/study.sh made; its study.tsv names every run by setting and role (ahe,
ahe_identity, maml, fomaml, reptile, ahe_seed2), and each setting's evaluation is the ahe run's
evaluation.parquet (`gs-tune evaluate`). Nothing is typed by hand: every figure below comes from
those files. Printed, as Markdown: the protocol as the runs record it (with any difference in
budget between them), then per setting the test table, the paired differences from tuned
first-order MAML, the tuning gain over untuned AHE and the Hessian question; the efficiency table
at K = 5 with its Pareto plot; the learning curves of each method's best trial; the parameter
importances of the AHE searches with their spread; what the data and the design let the study say.
It works on a study that has not finished: what
is missing is said so. Plots (PNG) go to --plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from study_runs import (
    MANIFEST,
    Rows,
    Study,
    best_trial,
    evaluation,
    finite,
    is_borrowed,
    is_config,
    params_of,
    read_study,
    reptile_pending,
    trials,
    trials_ended,
)

from gs_tune.config import TrainConfig
from gs_tune.data.digits import DIGIT_SPLITS, NEAR_DUPLICATES, TRANSFORMS
from gs_tune.results.analysis import (
    asha_rung,
    late_slope,
    open_study,
    param_importances,
    pareto_mask,
    second_half,
)
from gs_tune.results.evaluation import (
    CI_NOTE,
    PAIRS_NOTE,
    MethodResult,
    PairResult,
    markdown_pairs,
    markdown_table,
    method_notes,
    method_results,
    over_label,
    paired_results,
)
from gs_tune.results.report import SLOPE_NOTE, curves_data, draw_evaluation, draw_pairs
from gs_tune.results.tables import read_metrics
from gs_tune.rundir import METRICS_FILE, read_run, read_space
from gs_tune.stats import mean_interval

K5 = "5w1s_k5"  # the setting of the efficiency question
IMPORTANCE_PAIR = ("ahe", "ahe_seed2")  # two searches of one space, two sampler seeds
FANOVA_SEEDS = tuple(range(5))  # fANOVA's random forests: the spread of the estimator itself
PEAK_NOTE = ("peak MB is the retraining process's peak resident memory (the highest over seeds), the "
             "Python, torch and Ray runtime included; §1 gives each method's own extra memory")


# --- reading the study ------------------------------------------------------------------------


def _code_line(study: Study) -> str:
    """Which code the study ran: a deviation unless every invocation had one unedited gs_tune/."""
    if not study.code:
        return "code version not recorded"
    commits = ", ".join(dict.fromkeys(c[1] for c in study.code))
    trees = {(c[2], c[3]) for c in study.code}
    line = (f"study.sh ran {len(study.code)} time(s), {study.code[0][0]} to {study.code[-1][0]}, at commit(s) "
            f"{commits}; gs_tune/ tree " + ", ".join(f"{t} ({state})" for t, state in sorted(trees)))
    if len(trees) > 1 or any(state != "clean" for _, state in trees):
        line += " — **deviation: the runs did not all use one unedited gs_tune/**"
    return line


def _find(rows: Rows, source: str, algorithm: str) -> str | None:
    """The label of the row with this config_source and algorithm (rows are one evaluation's)."""
    return next((str(r["method"]) for r in rows if is_config(r, source, algorithm)), None)


# --- protocol ---------------------------------------------------------------------------------


def _budget(run: Path) -> dict[str, str]:
    """The settings that must be equal across the study's searches, as the run recorded them."""
    space = read_space(run)
    asha = space.scheduler
    ranges = {p.name: json.dumps(p.to_dict()[p.kind]) for p in space.params if p.name in ("inner_lr", "outer_lr")}
    sampler = ", ".join([space.sampler, *(f"{k} {v}" for k, v in space.sampler_options.items())])
    return {
        "trials": str(space.num_samples), "at once": str(space.max_concurrent), "sampler": sampler,
        "iterations": str(space.fixed.get("iterations")), "val every": str(space.fixed.get("val_every")),
        "val tasks": str(space.fixed.get("val_tasks")),
        "ASHA": "none" if asha is None else f"grace {asha.grace_period}, factor {asha.reduction_factor:g}",
        "inner_lr": ranges.get("inner_lr", "fixed"), "outer_lr": ranges.get("outer_lr", "fixed"),
    }


def _search_hours(run: Path) -> str:
    """Span of the search, first trial start to last trial end (its Optuna study), pauses included."""
    with open_study(run) as (study, _):
        if study is None:
            return "-"
        starts = [t.datetime_start for t in study.trials if t.datetime_start]
        ends = [t.datetime_complete for t in study.trials if t.datetime_complete]
        return f"{(max(ends) - min(starts)).total_seconds() / 3600:.2f}" if starts and ends else "-"


def _run_line(setting: str, role: str, run: Path) -> str:
    if not (run / "run.json").is_file():
        return f"| {setting} | {role} | `{run.name}` | | not started | | | | |"
    space, info, rows = read_space(run), read_run(run), trials(run)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    by = ", ".join(f"{n} {s}" for s, n in counts.items())
    k = space.fixed.get("inner_steps", "searched" if "inner_steps" in info.params else TrainConfig.inner_steps)
    trial_hours = sum(r["wall_seconds"] or 0.0 for r in rows) / 3600
    return (f"| {setting} | {role} | `{run.name}` | {k} | {len(rows)}/{space.num_samples}: {by} | "
            f"{', '.join(info.params)} | {info.sampler_seed} | {_search_hours(run)} | {trial_hours:.2f} |")


def protocol(study: Study) -> list[str]:
    md = ["### Protocol, as the run directories record it", "",
          (f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, Python "
          f"{platform.python_version()}; mode **{study.mode}**; {_code_line(study)}."), "",
          ("| setting | role | run | K | trials (ended: by status) | searched | sampler seed | search span h "
          "| trial hours |"), "|---|---|---|---|---|---|---|---|---|"]
    budgets: dict[str, set[str]] = {}
    for setting, roles in study.settings.items():
        for role, run in roles.items():
            md.append(_run_line(setting, role, run))
            if (run / "space.yaml").is_file():
                budgets.setdefault(json.dumps(_budget(run)), set()).add(run.name)
    md += ["", ("search span: first trial start to last trial end, pauses included; trial hours: the trials' "
               "wall time summed (two ran at a time, one core each)."), ""]
    for budget, names in budgets.items():
        items = "; ".join(f"{k} {v}" for k, v in json.loads(budget).items())
        who = "every search" if len(budgets) == 1 else ", ".join(f"`{n}`" for n in sorted(names))
        md.append(f"- Budget of {who}: {items}.")
    if len(budgets) > 1:
        md.append("- **Deviation: the searches above do not share one budget.**")
    return md


def scope(study: Study) -> list[str]:
    """What the data and the design let the study say, from the split definition and the runs; the
    reading of the results themselves is written beside this output, in BENCHMARKS.md."""
    kept = {d: len(TRANSFORMS) - len(NEAR_DUPLICATES.get(d, ())) for d in DIGIT_SPLITS["test"]}
    classes = sum(kept.values())
    digits = ", ".join(str(d) for d in DIGIT_SPLITS["test"])
    md = ["### What this study can and cannot say", "",
          (f"- **Small data.** The test split is {len(kept)} handwritten digits ({digits}) under their distinct "
           f"symmetries: {classes} classes, about 180 8×8 images per digit. Every test task is drawn from those "
           f"{classes} classes, so however many tasks a seed draws, they probe {len(kept)} digit shapes, not as "
           "many independent problems: a task interval says how well the mean over those tasks is pinned down, "
           "not how a method would do on another dataset.")]
    full = [setting for setting, roles in study.settings.items()
            if any((run / "space.yaml").is_file() and read_space(run).fixed.get("ways") == classes
                   for run in roles.values())]
    if full:
        md.append(f"- **{classes}-way tasks are strongly correlated.** {classes}-way is every test class at once "
                  f"({', '.join(f'`{n}`' for n in full)}): the tasks differ "
                  "only in which images are support and which query, so their interval is far too narrow as a "
                  "statement about new tasks. There, read the interval over seeds.")
    md += [("- **What the intervals hold.** An interval over seeds is Student's t over the fresh training seeds "
           "of one tuned configuration: it holds the training-seed variance, not the variance of the search. "
           "Each method was searched once (one sampler seed), so another search could pick another "
           "configuration; the two 5w1s_k1 AHE searches show that spread for the importances only."),
           ("- **Cost is this machine's.** Seconds per meta-iteration are one CPU thread per run on a 2-core "
           "machine; on a GPU the ratios between methods differ (§1). Conv-4 with 32 filters on 28×28 "
           "upsampled digits says nothing directly about mini-ImageNet-sized problems.")]
    return md


# --- test split ---------------------------------------------------------------------------------


def _pairs_for(rows: Rows, reference: str | None, methods: Sequence[str | None]) -> list[PairResult]:
    if reference is None:
        return []
    return [p for p in paired_results(rows, reference) if p.method in methods]


def test_section(study: Study, setting: str, plots: Path) -> list[str]:
    rows = evaluation(study, setting)
    md = [f"#### Test split: `{study.settings[setting]['ahe'].name}/evaluation.parquet`", ""]
    if rows is None:
        return md + ["Not evaluated yet."]
    first = params_of(rows[0])
    md[0] += (f" ({first.get('test_tasks')} test tasks per seed, retrained on "
              f"{first.get('meta_train_splits')}, {first.get('iterations')} meta-iterations)")
    results = method_results(rows)
    md += [*markdown_table(rows), "", CI_NOTE + "; " + PEAK_NOTE + ".", "",
           *(f"- {note}" for note in method_notes(rows))]
    pending = reptile_pending(study, setting, rows)
    md += [f"- {pending}", ""] if pending else [""]
    md += config_table(study, setting, rows)
    fomaml, maml = _find(rows, "baselines-run", "fomaml"), _find(rows, "baselines-run", "maml")
    exact, untuned = _find(rows, "tuned", "ahe"), _find(rows, "default", "ahe")
    identity = _find(rows, "baselines-run", "ahe")
    ablation = _find(rows, "tuned-ablation", "ahe")
    reptile = _find(rows, "baselines-run", "reptile")
    others = [r.method for r in results if r.method != fomaml]
    tables = [("Paired differences from tuned first-order MAML", fomaml, others),
              ("Tuning gain: tuned AHE minus untuned AHE", untuned, [exact, identity]),
              ("Does the Hessian matter? Minus AHE with the exact HVP", exact, [identity, ablation]),
              ("Does tuned AHE reach MAML's accuracy? Minus tuned MAML", maml, [exact, identity])]
    if reptile is not None:  # Reptile runs last: until its retraining is in, the table would be empty
        tables.append(("The other first-order baseline: minus tuned Reptile", reptile, [exact, identity, maml]))
    for title, ref, shown in tables:
        pairs = _pairs_for(rows, ref, shown)
        md += [f"**{title}** (percentage points){_weights_note(rows, ref) if ref == untuned else ''}:", ""]
        md += markdown_pairs(pairs) if pairs else [f"no pair: {ref or 'the reference'} is not in the evaluation"]
        md.append("")
    md += [PAIRS_NOTE + ".", ""]
    bars = draw_evaluation(results, plots / f"test_{setting}.png")
    pairs = _pairs_for(rows, fomaml, others)
    diff = draw_pairs(pairs, plots / f"pairs_{setting}.png", {r.method: r.source for r in results})
    return md + [f"![test]({bars}) ![pairs]({diff})"]


CONFIG_FIELDS = ("inner_steps", "inner_lr", "outer_lr", "w_cos", "w_l2", "ahe_schedule", "ahe_clip")
EDGE = 0.1  # a tuned value this close to an end of its range (as a fraction of it) is marked


def config_table(study: Study, setting: str, rows: Rows) -> list[str]:
    """The configuration each method was retrained with. A tuned value in the outer tenth of its
    search range (log scale for a loguniform one) is marked with its position: there the range may
    have cut the optimum off."""
    ranges: dict[str, tuple[str, float, float]] = {}
    for run in study.settings[setting].values():
        if (run / "space.yaml").is_file():
            for p in read_space(run).params:
                if p.kind in ("loguniform", "uniform"):
                    ranges.setdefault(p.name, (p.kind, *p.to_dict()[p.kind]))

    def cell(field: str, value: Any, tuned: bool) -> str:
        if value is None:
            return "-"
        if not isinstance(value, float):
            return str(value)
        text = f"{value:.3g}"
        if tuned and field in ranges and ranges[field][1] <= value <= ranges[field][2]:
            kind, lo, hi = ranges[field]
            f = (math.log(value / lo) / math.log(hi / lo)) if kind == "loguniform" else (value - lo) / (hi - lo)
            if f < EDGE or f > 1 - EDGE:
                text += f" (at {f:.0%} of its range)"
        return text

    md = ["**Configurations retrained** (K and the searched fields; every other field is the space's fixed value):", "",
          "| method | " + " | ".join(CONFIG_FIELDS) + " |", "|---|" + "---|" * len(CONFIG_FIELDS)]
    seen: set[str] = set()
    for r in rows:
        if r["method"] in seen:
            continue
        seen.add(str(r["method"]))
        p, tuned = params_of(r), r.get("config_source") in ("tuned", "baselines-run")
        ahe_only = p.get("algorithm") != "ahe"
        md.append(f"| {r['method']} | " + " | ".join(
            "-" if ahe_only and f not in ("inner_steps", "inner_lr", "outer_lr") else cell(f, p.get(f), tuned)
            for f in CONFIG_FIELDS) + " |")
    ranged = ", ".join(f"{k} [{lo:g}, {hi:g}]{' log' if kind == 'loguniform' else ''}"
                       for k, (kind, lo, hi) in ranges.items())
    return md + ["", f"Search ranges: {ranged}.", ""]


def _weights_note(rows: Rows, method: str | None) -> str:
    """What untuned AHE's similarity weights are: with TrainConfig's defaults at 0 it has no correction."""
    p = next((params_of(r) for r in rows if r["method"] == method), {})
    w = {k: p.get(k) for k in ("w_cos", "w_l2", "w_dot")}
    if w and not any(w.values()):
        return (" (untuned AHE takes TrainConfig's default weights, all 0 here: it is first-order MAML at the "
                "default step sizes, so this is the gain of the whole tuned configuration)")
    return ""


# --- efficiency at K = 5 -------------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 4.0) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _cost(study: Study, setting: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """benchmarks/study_cost.py's interleaved timing of the setting: its rows per method and the
    conditions it ran under; ({}, {}) before it has run."""
    path = study.runs_dir / f"cost_{setting}.json"
    if not path.is_file():
        return {}, {}
    timing = json.loads(path.read_text())
    return {r["method"]: r for r in timing["rows"]}, timing["meta"]


def efficiency(study: Study, plots: Path, setting: str = K5) -> list[str]:
    """The efficiency question's table and Pareto plot: at K = 5 as a section of its own, with each
    method's cost over its K = 1 cost; in another setting, once evaluated, inside its section."""
    at_k5 = setting == K5
    md = [f"### Efficiency at K = 5 (`{K5}`)" if at_k5 else f"#### Efficiency, {setting}", ""]
    rows = evaluation(study, setting) if setting in study.settings else None
    if rows is None:
        return md + ["Not evaluated yet."] if at_k5 else []
    iterations = int(params_of(rows[0])["iterations"])
    cost, meta = _cost(study, setting)
    results = [r for r in method_results(rows) if r.interval is not None and r.sec_per_iter is not None]
    # interleaved timings, when study_cost.py has run, are free of the machine's drift: they place the methods
    secs = {r.method: cost[r.method]["sec_per_iter_median"] if r.method in cost else r.sec_per_iter for r in results}
    ratios = _over_k1(study, results, secs if cost else {}) if at_k5 else {}
    front = pareto_mask([(r.interval.mean, secs[r.method]) for r in results], ["max", "min"])
    timed = "interleaved s / meta-iteration (median) | × first-order MAML (median; range) | " if cost else ""
    over_k1 = " × its K = 1 cost |" if at_k5 else ""
    md += [(f"| method | test accuracy | 95% t-interval over | {timed}retraining's s / meta-iteration (± 95% t over "
            f"seeds) |{over_k1} training time for {iterations} iterations (min) | peak MB | Pareto-optimal |"),
           "|---|---|---|" + ("---|---|" if cost else "") + ("---|" if at_k5 else "") + "---|---|---|---|"]
    for r, on in zip(results, front):
        ratio = f" {ratios[r.method]} |" if at_k5 else ""
        c = cost.get(r.method)
        cells = "" if not cost else "- | - | " if c is None else (
            f"{c['sec_per_iter_median']:.3f} | {c['ratio_median']:.2f} ({c['ratio_min']:.2f}–{c['ratio_max']:.2f}) | ")
        md.append(f"| {r.method} | {r.interval.mean * 100:.2f}% ± {r.interval.half_width * 100:.2f} | "
                  f"{over_label(r.interval)} | {cells}{_seconds(rows, r.method)} |{ratio} "
                  f"{secs[r.method] * iterations / 60:.1f} | {r.peak_memory_mb or 0:.0f} | {'yes' if on else ''} |")
    if cost:
        md += ["", (f"Interleaved: `benchmarks/study_cost.py` ({meta['date']}): each configuration as retrained, "
                    f"all in one process on {meta['threads']} thread, advancing round-robin {meta['block']} "
                    f"meta-iterations at a time over {meta['rounds']} rounds after a warm-up round, so every "
                    f"method ran beside the reference under the same load (load average {meta['load_start']:.1f} "
                    f"at start, {meta['load_end']:.1f} at end); the training step only. These place the methods "
                    "on the Pareto front and give the training time"
                    + ("; × its K = 1 cost is from them too once 5w1s_k1 has been timed the same way." if at_k5
                       else "."))]
    md += ["", ("Retraining's s / meta-iteration: the retrainings' mean over seeds with the seeds' 95% t-interval, "
               "one CPU core per run, two runs at a time on a shared machine: a method's seeds ran at different "
               "times, so the interval holds the machine's drift in speed as well as the method's own cost. "
               + ("× its K = 1 cost: over the same method's row at 5w1s_k1 (Reptile searches its own K in both). "
                  if at_k5 else "")
               + "Pareto-optimal: no other method is both more accurate (mean) and cheaper per iteration; the "
               "intervals say which accuracy differences the data can tell."), ""]
    path = _draw_pareto(results, secs, front, iterations, _search_points(study, setting),
                        plots / f"pareto_{setting}.png")
    return md + [f"![pareto]({path})"]


def _over_k1(study: Study, results: Sequence[MethodResult], timed: Mapping[str, float]) -> dict[str, str]:
    """Each K = 5 method's cost over its own at 5w1s_k1: from the interleaved timings (``timed``,
    empty if K = 5 has none) when both settings have them, else from the retrainings'."""
    cost_k1, _ = _cost(study, "5w1s_k1")
    if timed and cost_k1:  # a K = 5 over K = 1 ratio from timings of one kind
        k1 = {m: r["sec_per_iter_median"] for m, r in cost_k1.items()}
        k5 = dict(timed)
    else:
        k1_rows = evaluation(study, "5w1s_k1") if "5w1s_k1" in study.settings else None
        k1 = {r.method: r.sec_per_iter for r in method_results(k1_rows or [])}
        k5 = {r.method: r.sec_per_iter for r in results}
    out = {}
    for r in results:
        same = next((v for m, v in k1.items() if _k_free(m) == _k_free(r.method)), None)
        out[r.method] = "same runs" if is_borrowed(r.method) else f"{k5[r.method] / same:.2f}" if same else "-"
    return out


def _seconds(rows: Rows, method: str) -> str:
    """A method's seconds per meta-iteration: mean ± 95% t-interval over its seeds' retrainings."""
    secs = [r["sec_per_iter"] for r in rows if r["method"] == method and finite(r.get("sec_per_iter"))]
    if not secs:
        return "-"
    spread = mean_interval(secs, "seeds")
    if math.isnan(spread.half_width):
        return f"{spread.mean:.3f} (one seed)"
    return f"{spread.mean:.3f} ± {spread.half_width:.3f}"


def _k_free(method: str) -> str:
    """A label without Reptile's K, which differs between the settings' evaluations only if tuned so."""
    return method.split(", K=")[0]


def _search_points(study: Study, setting: str) -> dict[str, list[tuple[float, float]]]:
    """(sec_per_iter, best_val_accuracy) of every search trial of the setting that ran all its iterations."""
    out: dict[str, list[tuple[float, float]]] = {}
    for role, run in study.settings.get(setting, {}).items():
        for r in trials(run):
            if r["status"] == "completed" and finite(r.get("sec_per_iter")) and finite(r.get("best_val_accuracy")):
                out.setdefault(role, []).append((r["sec_per_iter"], r["best_val_accuracy"]))
    return out


def _draw_pareto(results: Sequence[MethodResult], secs: Mapping[str, float], front: Sequence[bool], iterations: int,
                 search: Mapping[str, list[tuple[float, float]]], path: Path) -> Path:
    fig = _figure(12.0, 4.6)
    ax, bx = fig.subplots(1, 2)
    for i, r in enumerate(results):
        minutes = secs[r.method] * iterations / 60
        ax.errorbar(minutes, r.interval.mean * 100, yerr=r.interval.half_width * 100, fmt="o", capsize=4,
                    color=f"C{i}", label=r.method)
    pts = sorted((secs[r.method] * iterations / 60, r.interval.mean * 100) for r, on in zip(results, front) if on)
    if pts:
        ax.step(*zip(*pts), where="post", color="grey", ls="--", lw=1, label="Pareto front")
    if results:  # the seeds' t-intervals can reach past 0-100%: the axis stops there
        widths = [0.0 if math.isnan(r.interval.half_width) else r.interval.half_width for r in results]
        ax.set_ylim(max(0.0, min(r.interval.mean - w for r, w in zip(results, widths)) * 100 - 2),
                    min(100.0, max(r.interval.mean + w for r, w in zip(results, widths)) * 100 + 2))
    ax.legend(fontsize="x-small")
    ax.set(xlabel=f"training wall-clock for {iterations} meta-iterations (min, one core)",
           ylabel="test accuracy (%)", title="Test split: mean ± 95% t-interval over seeds")
    every = [(x, y) for pts_ in search.values() for x, y in pts_]
    for i, (role, pts_) in enumerate(search.items()):
        bx.scatter([p[0] for p in pts_], [p[1] * 100 for p in pts_], s=18, color=f"C{i}", label=role)
    if every:
        mask = pareto_mask([(y, x) for x, y in every], ["max", "min"])
        fx = sorted((x, y * 100) for (x, y), on in zip(every, mask) if on)
        bx.step(*zip(*fx), where="post", color="grey", ls="--", lw=1, label="Pareto front")
        bx.legend(fontsize="x-small")
    bx.set(xlabel="s / meta-iteration (search trial)", ylabel="best validation accuracy (%)",
           title="Search trials that ran every iteration")
    fig.savefig(path)
    return path


# --- learning curves and importances ---------------------------------------------------------------


def curves(study: Study, setting: str, plots: Path) -> list[str]:
    """Validation accuracy against iteration of each method's best trial, and how fast it still
    moved over the second half of training."""
    md = [("| search | best trial | status | val accuracy at the end | second half: mean | "
           "second half: slope (pp per 1,000 it.) |"),
          "|---|---|---|---|---|---|"]
    fig = _figure()
    ax = fig.add_subplot()
    for role, run in study.settings[setting].items():
        rows = trials(run)
        best = best_trial(rows)
        if best is None or not (run / METRICS_FILE).is_file():
            md.append(f"| `{run.name}` | - | no finished trial | | | |")
            continue
        curve = curves_data([best], read_metrics(run))[0]
        its, acc = curve.iterations, curve.val_accuracy
        ci = best.get("final_val_ci95")
        end = f"{acc[-1] * 100:.1f}%" + (f" ± {ci * 100:.1f} (over {read_space(run).fixed.get('val_tasks')} "
                                          "val tasks)" if finite(ci) else "")
        second = second_half(its, acc)
        mean = f"{sum(a for _, a in second) / len(second) * 100:.1f}% (it. {second[0][0]}-{second[-1][0]})"
        iv = late_slope(its, acc)
        slope = "fewer than 3 validations" if iv is None else (
            f"{iv.mean * 100:+.1f} ({(iv.mean - iv.half_width) * 100:+.1f} to {(iv.mean + iv.half_width) * 100:+.1f}, "
            f"t over {iv.n} validations)")
        md.append(f"| `{run.name}` | {best['trial_id']} | {best['status']} ({its[-1]} it.) | {end} | "
                  f"{mean} | {slope} |")
        ax.plot(its, [a * 100 for a in acc], marker="o", ms=3, label=f"{role} ({best['trial_id']})")
    if ax.lines:
        ax.legend(fontsize="small")
    ax.set(xlabel="meta-iteration", ylabel="validation accuracy (%)",
           title=f"{setting}: best trial of each search (val split)")
    path = plots / f"curves_{setting}.png"
    fig.savefig(path)
    return md + ["", (f"{SLOPE_NOTE} A narrow interval around 0 says the curve had flattened at this "
                      "budget. The best trial is the one with the highest validation at any point, so its "
                      "curve's level is optimistic (chosen on these very validations); its slope much less "
                      "so."), "", f"![curves]({path})"]


@dataclasses.dataclass
class Importances:
    """fANOVA importances of one search over FANOVA_SEEDS forests: mean and range per parameter."""

    what: str  # "study objective" or "at iteration N"
    note: str  # param_importances' own line (over how many trials, of what)
    mean: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]

    def cell(self, param: str) -> str:
        if param not in self.mean:
            return "-"
        return f"{self.mean[param]:.2f} ({self.low[param]:.2f}–{self.high[param]:.2f})"


def _importances(run: Path, at_iteration: int | None, what: str) -> Importances | str:
    per_seed = []
    for seed in FANOVA_SEEDS:
        values, note = param_importances(run, at_iteration=at_iteration, seed=seed)
        if values is None:
            return note
        per_seed.append(values)
    params = sorted(per_seed[0])
    return Importances(what, note,
                       {p: sum(v[p] for v in per_seed) / len(per_seed) for p in params},
                       {p: min(v[p] for v in per_seed) for p in params},
                       {p: max(v[p] for v in per_seed) for p in params})


def importances(study: Study, plots: Path) -> list[str]:
    """fANOVA importances of every AHE search, of the study's values and at ASHA's first rung; the
    spread between the two searches of one space."""
    found: dict[str, list[Importances]] = {}
    skipped: list[str] = []
    for roles in study.settings.values():
        for role in ("ahe", "ahe_identity", "ahe_seed2"):
            run = roles.get(role)
            if run is None or not (run / "study.db").is_file():
                continue
            ended, total = trials_ended(run)
            if ended < total:  # importances of a search half-way mean little
                skipped.append(f"`{run.name}`: search running, {ended} of {total} trials ended")
                continue
            rung = asha_rung(run)
            for at in (None,) if rung is None else (None, rung):
                what = "study objective" if at is None else f"at iteration {at}"
                result = _importances(run, at, what)
                if isinstance(result, str):
                    skipped.append(f"`{run.name}` ({what}): {result}")
                else:
                    found.setdefault(run.name, []).append(result)
    md = ["### Parameter importances of the AHE searches", ""]
    if not found:
        return md + ["No AHE search with importances yet." + "".join(f" {s}." for s in skipped)]
    params = sorted({p for results in found.values() for r in results for p in r.mean})
    md += ["| search | values | " + " | ".join(params) + " | over |", "|---|---|" + "---|" * (len(params) + 1)]
    for name, results in found.items():
        for r in results:
            md.append(f"| `{name}` | {r.what} | " + " | ".join(r.cell(p) for p in params) + f" | {r.note} |")
    pair = [study.settings.get("5w1s_k1", {}).get(role) for role in IMPORTANCE_PAIR]
    if all(p is not None and p.name in found for p in pair):
        a_all, b_all = (found[p.name] for p in pair)  # type: ignore[union-attr]
        for a, b in zip(a_all, b_all):
            md.append(f"| spread between the two 5w1s_k1 searches | {a.what} | " + " | ".join(
                f"{abs(a.mean.get(p, 0) - b.mean.get(p, 0)):.2f}" for p in params) + " | abs difference of the means |")
        md += ["", f"![importances]({_draw_importances(params, pair, a_all, b_all, plots)})"]  # type: ignore[arg-type]
    md += ["", *(f"- skipped: {s}" for s in skipped)] if skipped else []
    return md + ["", (f"Each cell is the mean over {len(FANOVA_SEEDS)} fANOVA forests (seeds "
                      f"{FANOVA_SEEDS[0]}–{FANOVA_SEEDS[-1]}), with their range: the estimator's own noise. "
                      "Importances are normalised to sum to 1 per row. *Study objective* is what Optuna "
                      "recorded: under ASHA each stopped trial's value when it stopped, so it mixes budgets and "
                      "credits whatever learns fast; *at iteration N* is every trial's validation accuracy "
                      "at ASHA's first rung, one budget for all. Two searches of one space that differ only "
                      "in the sampler seed show how far one search's values can be trusted.")]


def _draw_importances(params: Sequence[str], runs: Sequence[Path], a_all: Sequence[Importances],
                      b_all: Sequence[Importances], plots: Path) -> Path:
    fig = _figure(6.4 * len(a_all), max(2.4, 0.5 * len(params) + 1.2))
    ys = range(len(params))
    for i, (a, b) in enumerate(zip(a_all, b_all)):
        ax = fig.add_subplot(1, len(a_all), i + 1)
        for shift, result, run in ((0.2, a, runs[0]), (-0.2, b, runs[1])):
            mean = [result.mean.get(p, 0) for p in params]
            err = [[m - result.low.get(p, 0) for p, m in zip(params, mean)],
                   [result.high.get(p, 0) - m for p, m in zip(params, mean)]]
            ax.barh([y + shift for y in ys], mean, height=0.4, xerr=err, label=run.name)
        ax.set_yticks(list(ys), list(params))
        ax.legend(fontsize="small")
        ax.set(xlabel="fANOVA importance (bar: forest range)", title=f"5w1s_k1, two sampler seeds: {a.what}")
    path = plots / "importances_5w1s_k1.png"
    fig.savefig(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, type=Path, help="the study's runs directory (study.sh's RUNS_DIR)")
    parser.add_argument("--plots", type=Path, help="directory for the PNG plots (default RUNS/plots)")
    parser.add_argument("--out", type=Path, help="also write the Markdown to this file")
    args = parser.parse_args(argv)
    if not (args.runs / MANIFEST).is_file():
        print(f"study.py: error: {args.runs} has no {MANIFEST}; run benchmarks/study.sh first", file=sys.stderr)
        return 2
    study = read_study(args.runs)
    plots = args.plots or args.runs / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    md = protocol(study)
    for setting in study.settings:
        md += ["", f"### {setting}", "", *test_section(study, setting, plots), "",
               f"#### Learning curves, {setting}", "", *curves(study, setting, plots)]
        if setting != K5 and (table := efficiency(study, plots, setting)):
            md += ["", *table]
    md += ["", *efficiency(study, plots), "", *importances(study, plots), "", *scope(study)]
    text = "\n".join(md) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
