"""summarize() and the analysis helpers it shares with the report."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from gs_tune.errors import RunDirError
from gs_tune.results.analysis import (
    DEFAULT_OBJECTIVE,
    Objective,
    param_importances,
    pareto_mask,
    resolve_objectives,
    searched_params,
)
from gs_tune.results.summary import summarize
from gs_tune.results.tables import read_trials

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


@pytest.mark.parametrize(("objective", "expected"), [
    ({"metric": "val_accuracy", "mode": "max"}, [DEFAULT_OBJECTIVE]),
    ([{"metric": "val_accuracy", "mode": "max"}, {"metric": "sec_per_iter", "mode": "min"}],
     [DEFAULT_OBJECTIVE, Objective("sec_per_iter", "sec_per_iter", "min")]),
    ("val_loss", [Objective("val_loss", "best_val_loss", "min")]),
    ({"final_val_accuracy": "maximize"}, [Objective("final_val_accuracy", "final_val_accuracy", "max")]),
    ("test_accuracy:max", [Objective("test_accuracy", "test_accuracy", "max")]),
])
def test_objectives_from_space_yaml(tmp_path: Path, objective: object, expected: list[Objective]) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"objective": objective}))
    assert resolve_objectives(tmp_path, COLUMNS) == (expected, [])


def test_objective_fallbacks(tmp_path: Path) -> None:
    assert resolve_objectives(tmp_path, COLUMNS) == ([DEFAULT_OBJECTIVE], [])
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({"objective": {"metric": "f1", "mode": "max"}}))
    objectives, notes = resolve_objectives(tmp_path, COLUMNS)
    assert objectives == [DEFAULT_OBJECTIVE] and "'f1'" in notes[0]
    (tmp_path / "space.yaml").write_text("objective: [unclosed")
    objectives, notes = resolve_objectives(tmp_path, COLUMNS)
    assert objectives == [DEFAULT_OBJECTIVE] and "unreadable" in notes[0]


def test_pareto_mask() -> None:
    points = [(0.9, 3.0), (0.8, 1.0), (0.7, 2.0), (0.9, 3.0), (0.5, 0.5)]
    assert pareto_mask(points, ["max", "min"]) == [True, True, False, True, True]
    assert pareto_mask([(1.0,), (2.0,)], ["max"]) == [False, True]


def test_searched_params_fall_back_to_varying_columns(make_run) -> None:
    run = make_run("interrupted")  # has no space.yaml
    rows = read_trials(run).to_pylist()
    assert searched_params(run, rows) == ["param_algorithm", "param_inner_lr", "param_w_cos"]
    assert searched_params(run, rows, numeric_only=True) == ["param_inner_lr", "param_w_cos"]
