"""benchmarks/study_journal.py: an evaluation's rows written back into its journal are the runs
`gs-tune evaluate` would keep, so the study can add Reptile to a finished evaluation. No training:
the keys are checked against the ones evaluate computes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from benchmark_scripts import load_script
from test_evaluate import BEST, OTHER, build_run

from gs_tune.config import train_config
from gs_tune.results.tables import write_evaluation
from gs_tune.rundir import EVALUATION_RUNS_FILE
from gs_tune.search.evaluate import _finished_runs, _methods, _run_values, _seed_list, run_key


def _evaluated(run_dir: Path, tasks: int = 10) -> tuple[list[str], list[dict[str, Any]]]:
    """An evaluation.parquet as `gs-tune evaluate --baselines fomaml --seeds 2` writes it (made-up
    accuracies), and the keys evaluate gives its runs."""
    build_run(run_dir, [("a", OTHER, 0.55, "completed"), ("b", BEST, 0.61, "completed")])
    space, methods, _ = _methods(run_dir, ["fomaml"], [], reference=None)
    keys, rows = [], []
    for m in methods:
        for seed in _seed_list(methods, 2):
            values = _run_values(m.values, seed, tasks, space.smoke)
            keys.append(run_key(m, seed, values))
            rows.append({"method": m.name, "config_source": m.source, "seed": seed, "test_accuracy": 0.5,
                         "test_ci95": 0.01, "test_tasks": tasks, "sec_per_iter": 0.1, "peak_memory_mb": 100.0,
                         "params": {**train_config(values).as_dict(), "device": "cpu"}})
    write_evaluation(run_dir, rows)
    return keys, rows


def test_the_journal_holds_every_run_under_evaluates_key(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    keys, rows = _evaluated(run_dir)
    journal = run_dir / EVALUATION_RUNS_FILE
    journal.write_text(json.dumps({"key": "an earlier run", "row": {"method": "x"}}) + '\n{"key": "torn')

    assert load_script("study_journal").main([str(run_dir)]) == 0

    held = _finished_runs(journal)
    assert set(held) == {*keys, "an earlier run"}  # every run; the torn line dropped, the whole one kept
    for key, row in zip(keys, rows):
        assert held[key]["method"] == row["method"] and held[key]["seed"] == row["seed"]
    assert load_script("study_journal").main([str(run_dir)]) == 0  # run again (a killed extension): nothing doubled
    assert len(journal.read_text().splitlines()) == len(keys) + 1


def test_a_row_that_does_not_give_back_its_configuration_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    _, rows = _evaluated(run_dir)
    rows[1]["params"] = {**rows[1]["params"], "not_a_field": 1}
    write_evaluation(run_dir, rows)

    assert load_script("study_journal").main([str(run_dir)]) == 1

    assert "row 1" in capsys.readouterr().err
    assert not (run_dir / EVALUATION_RUNS_FILE).exists()
