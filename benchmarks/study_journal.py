"""Let `gs-tune evaluate` add a method to a finished evaluation without retraining the others.

benchmarks/study.sh evaluates each setting before Reptile has been searched (Reptile is the study's
most expensive method, so it runs last), and later runs the same evaluation again with Reptile
added. `gs-tune evaluate` keeps every run its journal (RUN_DIR/evaluation_runs.jsonl) holds with
the same method, seed and configuration, but removes the journal once evaluation.parquet is
written. This writes the journal back from evaluation.parquet, so the evaluation run again
retrains only the new method's runs and writes all of them to one table, as one evaluation would:
the kept runs are the very runs it would make (same configuration, seeds and test tasks).

    python benchmarks/study_journal.py RUN_DIR

Every row must give back its configuration exactly (its params_json through train_config), or
nothing is written. Entries the journal already holds (an extension killed part way) are kept; the
journal is replaced atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from gs_tune.config import train_config
from gs_tune.errors import GsTuneError
from gs_tune.results.tables import read_evaluation
from gs_tune.rundir import EVALUATION_FILE, EVALUATION_RUNS_FILE
from gs_tune.search.evaluate import Method, _finished_runs, run_key


def _canonical(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def journal_entries(run_dir: Path) -> list[dict[str, Any]]:
    """One journal entry (key, row) per row of the run's evaluation.parquet."""
    entries = []
    for i, row in enumerate(read_evaluation(run_dir).to_pylist()):
        values = json.loads(row["params_json"] or "{}")
        values.pop("device", None)  # recorded after the run; not part of its configuration
        where = f"{run_dir / EVALUATION_FILE} row {i} ({row['method']}, seed {row['seed']})"
        try:
            same = _canonical(train_config(values).as_dict()) == _canonical(values)
        except GsTuneError as exc:
            raise ValueError(f"{where}: {exc}; the journal is unchanged") from exc
        if not same:
            raise ValueError(f"{where}: its params_json does not give back its configuration; "
                             "the journal is unchanged")
        key = run_key(Method(row["method"], row["config_source"], values), row["seed"], values)
        entries.append({"key": key, "row": row})
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory holding evaluation.parquet")
    args = parser.parse_args(argv)
    if not (args.run_dir / EVALUATION_FILE).is_file():
        parser.error(f"{args.run_dir} has no {EVALUATION_FILE}; nothing to keep")
    try:
        seeded = journal_entries(args.run_dir)
    except ValueError as exc:
        print(f"study_journal.py: {exc}", file=sys.stderr)
        return 1
    journal = args.run_dir / EVALUATION_RUNS_FILE
    held = _finished_runs(journal)  # read as evaluate reads it: a line a kill cut short is dropped
    entries = [{"key": k, "row": r} for k, r in held.items()] + [e for e in seeded if e["key"] not in held]
    tmp = journal.with_name(journal.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(e, default=str) + "\n" for e in entries)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, journal)
    print(f"study_journal.py: {journal} holds {len(entries)} finished runs "
          f"({len(seeded)} from {EVALUATION_FILE}, {len(held)} already there)")
    return 0


if __name__ == "__main__":
    from study_runs import exit_now  # beside this script, on sys.path when it is run

    exit_now(main())
