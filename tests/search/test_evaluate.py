"""`gs-tune evaluate` (gs_tune/search/evaluate.py) on a synthetic run directory: no search is run,
only the retraining (a local Ray, a few smoke-sized trainings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from gs_tune.errors import RunDirError
from gs_tune.results.schema import EVALUATION_SCHEMA
from gs_tune.results.tables import ResultsWriter
from gs_tune.search.evaluate import EVAL_SEED_BASE, UNTUNED_DEFAULTS, _methods, evaluate_run
from gs_tune.search.space import load_space, parse_space

# The space's --smoke budget shrunk further (the shipped one takes ~15 s per training on a loaded
# 2-core machine): evaluate_run(smoke=True) trains with the run dir's own smoke block.
TINY_SMOKE = {"iterations": 4, "val_every": 2, "val_tasks": 5, "test_tasks": 10, "meta_batch": 2}
# The best finished trial (its values are what the tuned rows must have been trained with).
BEST = {"w_cos": 0.0123, "w_l2": 0.00456, "inner_lr": 0.3, "outer_lr": 0.0012, "ahe_schedule": "cosine",
        "ahe_clip": 2.5}
OTHER = {"w_cos": 0.5, "w_l2": 0.1, "inner_lr": 0.1, "outer_lr": 0.0005, "ahe_schedule": "constant",
         "ahe_clip": 1.0}
# A running trial that validates better than every finished one: it must not be picked.
RUNNING = {**OTHER, "w_cos": 0.9}


def _val(iteration: int, acc: float) -> dict[str, Any]:
    return {"kind": "val", "iteration": iteration, "elapsed_s": 3.0, "sec_per_iter": 0.1, "train_loss": 1.2,
            "train_accuracy": 0.5, "grad_norm": 1.0, "correction_norm": 0.1, "grad_cosine": 0.2,
            "ahe_lambda": 1.0, "val_loss": 1.1, "val_accuracy": acc, "val_ci95": 0.05}


def build_run(run_dir: Path, trials: list[tuple[str, dict[str, Any], float, str]],
              space_name: str = "cosine_l2") -> dict[str, Any]:
    """space.yaml (smoke-sized) and trials.parquet as a search leaves them; the fixed values."""
    data = load_space(space_name).to_dict()
    data["smoke"] = TINY_SMOKE
    space = parse_space(data, space_name).with_overrides(smoke=True)
    run_dir.mkdir(parents=True)
    (run_dir / "space.yaml").write_text(space.to_yaml())
    writer = ResultsWriter(run_dir)
    for tid, searched, acc, status in trials:
        params = {**space.fixed, **searched}  # Tune's trial config: fixed values and the sampled ones
        iterations = int(space.fixed["iterations"])
        writer.on_report(tid, _val(iterations, acc), params)
        if status != "running":
            writer.on_trial_end(tid, status, params=params)
    return dict(space.fixed)


def test_evaluate_retrains_best_default_and_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    fixed = build_run(run_dir, [("a", OTHER, 0.55, "completed"), ("b", BEST, 0.61, "early_stopped"),
                                ("c", RUNNING, 0.90, "running")])

    table = evaluate_run(run_dir, baselines=["fomaml"], seeds=2, tasks=10, smoke=True,
                         object_store_memory=200 * 2**20)

    on_disk = pq.read_table(run_dir / "evaluation.parquet")
    assert on_disk.schema.names == EVALUATION_SCHEMA.names
    assert on_disk.schema.equals(EVALUATION_SCHEMA, check_metadata=False)
    assert table.equals(on_disk)
    rows = on_disk.to_pylist()
    seeds = [EVAL_SEED_BASE, EVAL_SEED_BASE + 1]
    methods = ("ahe (tuned)", "ahe (tuned, w=0)", "ahe (default)", "fomaml")
    assert sorted((r["method"], r["seed"]) for r in rows) == sorted((m, s) for m in methods for s in seeds)
    sources = {r["method"]: r["config_source"] for r in rows}
    assert sources == {"ahe (tuned)": "tuned", "ahe (tuned, w=0)": "tuned-ablation", "ahe (default)": "default",
                       "fomaml": "default"}
    for r in rows:
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert r["test_ci95"] > 0 and r["test_tasks"] == 10
        assert r["sec_per_iter"] > 0 and r["peak_memory_mb"] > 0
        params = json.loads(r["params_json"])
        assert params["seed"] == r["seed"] and params["test_tasks"] == 10
        assert params["iterations"] == TINY_SMOKE["iterations"] == fixed["iterations"] == params["val_every"]
        assert params["device"] == "cpu" and params["meta_train_splits"] == "train+val"
        if r["method"] == "ahe (tuned)":
            assert {k: params[k] for k in BEST} == BEST
        elif r["method"] == "ahe (tuned, w=0)":  # the correction off, everything else tuned
            assert {k: params[k] for k in BEST} == {**BEST, "w_cos": 0.0, "w_l2": 0.0}
        elif r["method"] == "ahe (default)":
            # searched fields back at their (untuned) defaults, fixed ones kept
            assert params["w_cos"] == UNTUNED_DEFAULTS["ahe"]["w_cos"]
            assert params["w_l2"] == UNTUNED_DEFAULTS["ahe"]["w_l2"]
            assert params["inner_lr"] == 0.4 and params["ahe_schedule"] == "constant"
            assert params["ahe_clip"] is None and params["algorithm"] == "ahe"
        else:
            assert params["algorithm"] == "fomaml" and params["w_cos"] == 0.0
    out = capsys.readouterr().out
    assert "best trial b (early_stopped)" in out
    for method in methods:
        assert any(line.startswith(method) and "%" in line for line in out.splitlines())


def test_no_finished_trial_is_a_run_dir_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    build_run(run_dir, [("a", OTHER, 0.5, "running"), ("b", BEST, 0.6, "error")])
    with pytest.raises(RunDirError, match="no finished trial"):
        evaluate_run(run_dir, baselines=[], smoke=True)


def test_missing_tables_is_a_run_dir_error(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="space.yaml"):
        evaluate_run(tmp_path, smoke=True)


def test_baselines_run_gives_each_baseline_its_best_trial(tmp_path: Path) -> None:
    run_dir, b_dir = tmp_path / "run", tmp_path / "baselines"
    build_run(run_dir, [("a", BEST, 0.6, "completed")])
    build_run(b_dir, [("m", {"algorithm": "maml", "inner_lr": 0.2, "outer_lr": 0.001}, 0.9, "completed"),
                      ("f1", {"algorithm": "fomaml", "inner_lr": 0.1, "outer_lr": 0.001}, 0.5, "completed"),
                      ("f2", {"algorithm": "fomaml", "inner_lr": 0.6, "outer_lr": 0.002}, 0.7, "early_stopped"),
                      ("f3", {"algorithm": "fomaml", "inner_lr": 0.7, "outer_lr": 0.002}, 0.8, "diverged")],
              space_name="baselines")
    _, methods = _methods(run_dir, ["fomaml"], [str(b_dir)])
    assert [(m.name, m.source) for m in methods] == [
        ("ahe (tuned)", "tuned"), ("ahe (tuned, w=0)", "tuned-ablation"), ("ahe (default)", "default"),
        ("fomaml", "baselines-run")]
    assert methods[3].values["inner_lr"] == 0.6 and methods[3].values["algorithm"] == "fomaml"
    with pytest.raises(RunDirError, match="reptile"):
        _methods(run_dir, ["reptile"], [str(b_dir)])


def test_baselines_runs_pool_one_run_per_algorithm(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    build_run(run_dir, [("a", BEST, 0.6, "completed")])
    runs = []
    for algo, trials in (("maml", [("m1", 0.2, 0.7), ("m2", 0.1, 0.8)]), ("fomaml", [("f1", 0.3, 0.75)])):
        b_dir = tmp_path / f"b_{algo}"
        build_run(b_dir, [(tid, {"algorithm": algo, "inner_lr": lr, "outer_lr": 0.001}, acc, "completed")
                          for tid, lr, acc in trials], space_name="baselines")
        runs.append(str(b_dir))
    _, methods = _methods(run_dir, ["maml", "fomaml"], runs)
    best = {m.name: m.values["inner_lr"] for m in methods[3:]}
    assert best == {"maml": 0.1, "fomaml": 0.3}
    with pytest.raises(RunDirError, match="reptile"):
        _methods(run_dir, ["reptile"], runs)
