"""summarize() and the analysis helpers it shares with the report."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from results_helpers import FIXED, SEARCH, empty_study_db, val_record
from test_results_report import _with_old_test_columns

from gs_tune.errors import RunDirError
from gs_tune.results.analysis import (
    DEFAULT_OBJECTIVE,
    Objective,
    asha_rung,
    param_importances,
    pareto_mask,
    resolve_objectives,
    searched_params,
)
from gs_tune.results.summary import summarize
from gs_tune.results.tables import ResultsWriter, read_trials
from gs_tune.rundir import new_run_info, read_run, write_run
from gs_tune.search.space import parse_space

COLUMNS = ["best_val_accuracy", "final_val_accuracy", "best_val_loss", "sec_per_iter", "test_accuracy"]


def _ranked_ids(text: str) -> list[str]:
    # table rows start with the rank, then the trial id
    return re.findall(r"^\d+\s+(t\d+)\s", text, flags=re.MULTILINE)


def test_single_objective_summary(make_run) -> None:
    text = summarize(make_run("single"), top_k=3)
    assert "6 trials (4 completed, 1 early_stopped, 1 diverged)" in text
    assert "Top 3 trials by best_val_accuracy (max)" in text
    assert _ranked_ids(text) == ["t2", "t5", "t1"]
    header = next(line for line in text.splitlines() if line.startswith("#"))
    # searched parameters (space.yaml `search:`) are columns; fixed ones are not
    assert header.split()[-3:] == ["algorithm", "w_cos", "inner_lr"] and "dataset" not in header
    assert "t4: non-finite training loss at iteration 150" in text
    assert "Parameter importances (fANOVA over 5 completed trials" in text
    assert "inner_lr" in text.split("Parameter importances")[1]


def test_multi_objective_summary_shows_pareto_front(make_run) -> None:
    text = summarize(make_run("multi"))
    assert "Objective: best_val_accuracy (max), sec_per_iter (min)" in text
    assert "Pareto-optimal trials (3):" in text
    # t5 is both fast and accurate; t2 the most accurate; t3 the fastest
    assert _ranked_ids(text) == ["t2", "t5", "t3"]
    assert "first objective of the study" in text


def test_interrupted_run(make_run) -> None:
    text = summarize(make_run("interrupted"), top_k=10)
    assert "3 trial(s) still marked running" in text
    assert "(3 running, 3 completed)" in text
    assert set(_ranked_ids(text)) == {"t0", "t1", "t2", "t3", "t4", "t5"}  # partial values still rank
    assert "Parameter importances: skipped (needs at least 2 completed trials in study.db, found 1)." in text


def test_run_without_study(make_run) -> None:
    run = make_run("nostudy")
    text = summarize(run)
    assert f"Parameter importances: skipped (no study.db in {run})." in text
    assert param_importances(run) == (None, f"no study.db in {run}")


def test_missing_trials_table_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match=str(tmp_path / "trials.parquet")):
        summarize(tmp_path)


def test_unreadable_study_is_a_note(make_run) -> None:
    run = make_run("nostudy")
    (run / "study.db").write_bytes(b"not a database")
    assert "Parameter importances: skipped (cannot read" in summarize(run)


def _launched(run_dir: Path, objective: object) -> Path:
    """run.json and space.yaml as `gs-tune launch` writes them for a space with ``objective``."""
    space = parse_space({"search": {"w_cos": {"uniform": [0.0, 1.0]}}, "objective": objective}, "s")
    run_dir.mkdir(exist_ok=True)
    write_run(run_dir, new_run_info(run_dir, space), space)
    return run_dir


@pytest.mark.parametrize(("objective", "expected"), [
    ({"metric": "val_accuracy", "mode": "max"}, [DEFAULT_OBJECTIVE]),
    ([{"metric": "val_accuracy", "mode": "max"}, {"metric": "sec_per_iter", "mode": "min"}],
     [DEFAULT_OBJECTIVE, Objective("sec_per_iter", "sec_per_iter", "min")]),
    ({"metric": "val_loss"}, [Objective("val_loss", "best_val_loss", "min")]),
])
def test_objectives_recorded_at_launch(tmp_path: Path, objective: object, expected: list[Objective]) -> None:
    run = _launched(tmp_path / "run", objective)
    assert resolve_objectives(run, COLUMNS) == (expected, [])
    # the facts are in run.json: space.yaml is not read again
    (run / "space.yaml").unlink()
    assert resolve_objectives(run, COLUMNS) == (expected, [])


def test_run_json_of_an_older_run_gets_its_facts_from_space_yaml(tmp_path: Path) -> None:
    run = _launched(tmp_path / "run", {"metric": "val_loss"})
    data = json.loads((run / "run.json").read_text())
    del data["objectives"], data["params"]
    (run / "run.json").write_text(json.dumps(data))
    assert resolve_objectives(run, COLUMNS) == ([Objective("val_loss", "best_val_loss", "min")], [])
    assert read_run(run).params == ("w_cos",)


def test_objective_fallbacks(tmp_path: Path) -> None:
    assert resolve_objectives(tmp_path, COLUMNS) == ([DEFAULT_OBJECTIVE], [])  # no run.json
    run = _launched(tmp_path / "run", {"metric": "train_loss"})  # no trials.parquet column summarises it
    objectives, notes = resolve_objectives(run, COLUMNS)
    assert objectives == [DEFAULT_OBJECTIVE] and "'train_loss'" in notes[0]
    (run / "run.json").write_text("{unclosed")
    objectives, notes = resolve_objectives(run, COLUMNS)
    assert objectives == [DEFAULT_OBJECTIVE] and "unreadable" in notes[0] and "run.json" in notes[0]


def test_pareto_mask() -> None:
    points = [(0.9, 3.0), (0.8, 1.0), (0.7, 2.0), (0.9, 3.0), (0.5, 0.5)]
    assert pareto_mask(points, ["max", "min"]) == [True, True, False, True, True]
    assert pareto_mask([(1.0,), (2.0,)], ["max"]) == [False, True]


def test_searched_params_fall_back_to_varying_columns(make_run) -> None:
    run = make_run("interrupted")  # has no run.json
    rows = read_trials(run).to_pylist()
    assert searched_params(run, rows) == ["param_algorithm", "param_inner_lr", "param_w_cos"]
    assert searched_params(run, rows, numeric_only=True) == ["param_inner_lr", "param_w_cos"]


def test_summary_shows_no_test_values(make_run) -> None:
    """A search never evaluates the test split: even an older run whose trials.parquet holds test
    columns gets none of them in its summary."""
    run = _with_old_test_columns(make_run("single"))
    text = summarize(run, top_k=10).replace(str(run), "RUN_DIR")  # pytest's tmp path says "test"
    assert "test" not in text.lower() and "0.98" not in text and "3.22" not in text


def test_importances_at_one_iteration_take_every_trial_that_reached_it(make_run) -> None:
    run = make_run("single")
    values, note = param_importances(run, at_iteration=200)
    assert set(values or {}) == {"algorithm", "w_cos", "inner_lr"}
    # t4 diverged at iteration 100: left out, and said so
    assert note == ("fANOVA over 5 trials, val_accuracy at iteration 200 "
                    "(one budget for all; 1 without a value there left out)")
    assert param_importances(run, at_iteration=250) == (
        None, ("needs at least 2 trials with val_accuracy at iteration 250 "
               "(one budget for all; 6 without a value there left out), found 0"))


def test_importances_at_one_iteration_read_that_iteration_not_the_study(tmp_path: Path) -> None:
    """Under ASHA the study holds each trial's value when it stopped; the same-budget importances
    must come from metrics.parquet. Here the study's values follow w_cos only and the values at
    iteration 100 follow inner_lr only, so the two answers point at different parameters."""
    run = tmp_path / "asha"
    space = parse_space({"search": {"w_cos": {"uniform": [0.0, 1.0]}, "inner_lr": {"uniform": [0.05, 0.8]}},
                         "objective": {"metric": "val_accuracy", "mode": "max"}}, run.name)
    run.mkdir()
    write_run(run, new_run_info(run, space), space)
    shutil.copy(empty_study_db(tmp_path / "empty.db"), run / "study.db")
    study = optuna.create_study(study_name=run.name, storage=f"sqlite:///{run / 'study.db'}", direction="maximize")
    distributions = {"w_cos": FloatDistribution(0.0, 1.0), "inner_lr": FloatDistribution(0.05, 0.8)}
    writer = ResultsWriter(run)
    grid = [(a / 3, 0.05 + 0.25 * b) for a in range(4) for b in range(4)]
    for i, (w_cos, inner_lr) in enumerate(grid):
        params = {"w_cos": w_cos, "inner_lr": inner_lr}
        writer.on_report(f"t{i}", val_record(100, 0.2 + 0.6 * inner_lr, 0.1), params)
        writer.on_trial_end(f"t{i}", "early_stopped")
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=w_cos))
    writer.close()
    at_100, note = param_importances(run, at_iteration=100)
    assert note.startswith("fANOVA over 16 trials, val_accuracy at iteration 100")
    assert at_100 is not None and at_100["inner_lr"] > 0.9
    objective, note = param_importances(run)
    assert note == "fANOVA over 16 completed trials, study objective"
    assert objective is not None and objective["w_cos"] > 0.9
    # rows a caller has read already are used instead of metrics.parquet: here they follow w_cos
    rows = [{"trial_id": f"t{i}", "iteration": 100, "val_accuracy": w_cos} for i, (w_cos, _) in enumerate(grid)]
    given, note = param_importances(run, at_iteration=100, metrics=rows)
    assert note.startswith("fANOVA over 16 trials, val_accuracy at iteration 100")
    assert given is not None and given["w_cos"] > 0.9
    assert param_importances(run, at_iteration=100, metrics=[{"trial_id": "t0", "iteration": 100}]) == (
        None, "metrics.parquet has no 'val_accuracy' column")


def test_summary_of_an_asha_search_adds_importances_at_the_first_rung(make_run) -> None:
    run = make_run("single")
    assert asha_rung(run) is None  # no scheduler in its space
    space = parse_space({"fixed": FIXED, "search": SEARCH, "objective": {"metric": "val_accuracy", "mode": "max"},
                         "scheduler": {"name": "asha", "grace_period": 150}}, run.name)
    write_run(run, new_run_info(run, space), space)
    assert asha_rung(run) == 200  # the first validation at or past the grace period
    text = summarize(run)
    assert "Parameter importances (fANOVA over 5 completed trials, study objective):" in text
    assert ("Parameter importances at ASHA's first rung (fANOVA over 5 trials, val_accuracy at iteration 200 "
            "(one budget for all; 1 without a value there left out)):") in text
    (run / "metrics.parquet").unlink()
    assert asha_rung(run) == 150
    assert "Parameter importances at ASHA's first rung: skipped (" in summarize(run)
