"""Print the study's tables (BENCHMARKS.md §4) from its run directories, so none is typed by hand.

    python benchmarks/study.py --search RUN --baselines RUN [RUN ...] [--top 4] [--out FILE]

RUN directories are what `gs-tune launch` made (benchmarks/study.sh lists the commands); the
test-split table is read from the search run's evaluation.parquet (`gs-tune evaluate`).
Printed per run: trials by status, wall time (first trial start to last trial end, from the
Optuna study), the top trials with their searched parameters, Optuna's fANOVA importances; per
baseline algorithm its best trial; then the evaluation table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import optuna

from gs_tune.results.analysis import DEFAULT_OBJECTIVE, param_importances, rank, searched_params
from gs_tune.results.evaluation import CI_NOTE, markdown_table
from gs_tune.results.schema import PARAM_PREFIX
from gs_tune.results.summary import fmt, status_counts
from gs_tune.results.tables import read_evaluation, read_trials
from gs_tune.rundir import EVALUATION_FILE, read_run


def _acc(row: dict[str, Any]) -> str:
    ci = row.get("final_val_ci95")
    best = row["best_val_accuracy"] * 100
    # the CI belongs to the final validation; it is shown when the best one is the final one
    return f"{best:.1f}%" + (f" ± {ci * 100:.1f}" if ci is not None and row["best_val_accuracy"] ==
                             row.get("final_val_accuracy") else "")


def _wall_minutes(run_dir: Path) -> float | None:
    info = read_run(run_dir)
    study = optuna.load_study(study_name=info.study_name, storage=info.optuna_storage)
    starts = [t.datetime_start for t in study.trials if t.datetime_start]
    ends = [t.datetime_complete for t in study.trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() / 60 if starts and ends else None


def run_summary(run_dir: Path, top: int) -> list[str]:
    rows = read_trials(run_dir).to_pylist()
    params = [p for p in searched_params(run_dir, rows) if p != PARAM_PREFIX + "algorithm"]
    fixed = rows[0] if rows else {}
    counts = ", ".join(f"{n} {s}" for s, n in status_counts(rows).items())
    wall = _wall_minutes(run_dir)
    md = [(f"### `{run_dir.name}`: {fixed.get('param_algorithm', '?')} "
          f"{fixed.get('param_ways')}-way {fixed.get('param_shots')}-shot, query {fixed.get('param_query')}"),
          "", f"{len(rows)} trials ({counts}); wall {fmt(wall, 3)} min.", ""]
    names = [p[len(PARAM_PREFIX):] for p in params]
    md += ["| trial | status | iterations | best val acc | " + " | ".join(names) + " |",
           "|---|---|---|---|" + "---|" * len(names)]
    for r in rank(rows, DEFAULT_OBJECTIVE)[:top]:
        md.append(f"| {r['trial_id']} | {r['status']} | {r['iterations']} | {_acc(r)} | "
                  + " | ".join(fmt(r.get(p), 3) for p in params) + " |")
    importances, note = param_importances(run_dir)
    if importances:
        md += ["", f"Importances ({note}): " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items())]
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search", required=True, type=Path, help="the cosine_l2 run directory")
    parser.add_argument("--baselines", nargs="*", type=Path, default=[], help="baselines run directories")
    parser.add_argument("--top", type=int, default=4, help="top trials per run (default 4)")
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    args = parser.parse_args(argv)
    md: list[str] = []
    for run_dir in (args.search, *args.baselines):
        md += run_summary(run_dir, args.top) + [""]
    if (args.search / EVALUATION_FILE).exists():
        evaluation = read_evaluation(args.search).to_pylist()
        first = json.loads(evaluation[0]["params_json"])
        md += [(f"### Test split: `{args.search.name}/evaluation.parquet` ({first['test_tasks']} tasks per seed, "
               f"meta-trained on {first.get('meta_train_splits', 'train')})"), "", *markdown_table(evaluation),
               "", CI_NOTE]
    text = "\n".join(md) + "\n"
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
