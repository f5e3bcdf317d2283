"""`gs-tune evaluate` (gs_tune/search/evaluate.py) on a synthetic run directory: no search is run,
only the retraining (a local Ray, a few smoke-sized trainings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

from gs_tune.config import TrainConfig, train_config
from gs_tune.data import TaskBatch, load_dataset
from gs_tune.errors import ConfigError, RunDirError
from gs_tune.results.evaluation import TEST_TASK_FIELDS, read_pairs
from gs_tune.results.schema import EVALUATION_SCHEMA
from gs_tune.results.tables import ResultsWriter
from gs_tune.rundir import EVALUATION_CHECKPOINTS_DIR, EVALUATION_PAIRS_FILE, EVALUATION_RUNS_FILE
from gs_tune.search import evaluate as evaluate_module
from gs_tune.search.evaluate import (
    EVAL_SEED_BASE,
    REPTILE_DEFAULT_STEPS,
    _finished_runs,
    _methods,
    _run_values,
    checkpoint_dir,
    evaluate_run,
    run_key,
)
from gs_tune.search.space import load_space, parse_space
from gs_tune.trainer import CHECKPOINT_NAME, RunState, _Samplers, train

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
              space_name: str = "cosine_l2", smoke: dict[str, Any] | None = None) -> dict[str, Any]:
    """space.yaml (smoke-sized) and trials.parquet as a search leaves them; the fixed values."""
    data = load_space(space_name).to_dict()
    data["smoke"] = TINY_SMOKE if smoke is None else smoke
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
    writer.close()  # the tables as a finished search leaves them
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
            # what `gs-tune train --algorithm ahe` runs: searched fields at TrainConfig's defaults,
            # the space's fixed ones kept
            for name in BEST:
                assert params[name] == getattr(TrainConfig, name), name
            assert params["algorithm"] == "ahe" and params["ways"] == fixed["ways"]
        else:
            assert params["algorithm"] == "fomaml"
    assert (run_dir / EVALUATION_PAIRS_FILE).is_file()
    pairs = read_pairs(run_dir)
    assert [p.method for p in pairs] == list(methods[:3]) and {p.reference for p in pairs} == {"fomaml"}
    for pair in pairs:  # every method finished both seeds: each pair is over both
        assert pair.seeds == tuple(seeds) and pair.interval is not None and pair.note == ""
        mine = {r["seed"]: r["test_accuracy"] for r in rows if r["method"] == pair.method}
        ref = {r["seed"]: r["test_accuracy"] for r in rows if r["method"] == "fomaml"}
        assert pair.interval.mean == pytest.approx(sum(mine[s] - ref[s] for s in seeds) / 2)
    out = capsys.readouterr().out
    assert "best trial b (early_stopped)" in out
    for method in methods:
        assert any(line.startswith(method) and "%" in line and "2 seeds" in line for line in out.splitlines())
    assert "Paired differences from fomaml" in out and "95% t-interval over 10 test tasks" in out
    assert "not a tuned first-order MAML" in out


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
    _, methods, _ = _methods(run_dir, ["fomaml"], [str(b_dir)])
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
    _, methods, _ = _methods(run_dir, ["maml", "fomaml"], runs)
    best = {m.name: m.values["inner_lr"] for m in methods[3:]}
    assert best == {"maml": 0.1, "fomaml": 0.3}
    with pytest.raises(RunDirError, match="reptile"):
        _methods(run_dir, ["reptile"], runs)


def test_methods_with_the_same_seed_are_scored_on_the_same_test_tasks() -> None:
    """What evaluate's pairing rests on: the trainer draws a run's test tasks from its seed's own
    stream, so only TEST_TASK_FIELDS decide them, not the algorithm or anything it trains with."""
    data = load_dataset("digits")
    a = train_config(algorithm="ahe", seed=7, test_tasks=5, w_cos=0.3, inner_lr=0.1, iterations=10,
                     meta_batch=2, val_tasks=3, meta_train_splits="train+val")
    b = train_config(algorithm="reptile", seed=7, test_tasks=5, inner_steps=5, outer_lr=0.01, iterations=99,
                     meta_batch=8, val_tasks=20)
    other_seed = train_config(algorithm="ahe", seed=8, test_tasks=5)
    assert all(getattr(a, f) == getattr(b, f) for f in TEST_TASK_FIELDS)
    first, second = _Samplers(a, data), _Samplers(b, data)
    first.rng.random(100)  # training draws do not shift the test stream
    def drawn(samplers, n):  # the test stream's chunks as one batch
        return TaskBatch(*(torch.cat(field) for field in zip(*samplers.test_tasks(n))))

    tasks_a, tasks_b = drawn(first, a.test_tasks), drawn(second, b.test_tasks)
    assert tasks_a.num_tasks == 5
    assert all(torch.equal(x, y) for x, y in zip(tasks_a, tasks_b))
    tasks_c = drawn(_Samplers(other_seed, data), 5)
    assert not torch.equal(tasks_a.x_query, tasks_c.x_query)


def test_default_reptile_is_real_reptile(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    fixed = build_run(run_dir, [("a", BEST, 0.6, "completed")])
    assert fixed["inner_steps"] == 1  # cosine_l2 fixes K = 1, which Reptile cannot take
    _, methods, _ = _methods(run_dir, ["reptile"], [])
    reptile = next(m for m in methods if m.name == "reptile")
    cfg = train_config(_run_values(reptile.values, EVAL_SEED_BASE, 10, {}))
    assert (cfg.algorithm, cfg.inner_steps) == ("reptile", REPTILE_DEFAULT_STEPS)
    assert cfg.ways == fixed["ways"] and cfg.inner_lr == TrainConfig.inner_lr


def test_baselines_run_skips_reptile_with_one_inner_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, b_dir = tmp_path / "run", tmp_path / "baselines"
    build_run(run_dir, [("a", BEST, 0.6, "completed")])
    build_run(b_dir, [("r1", {"algorithm": "reptile", "inner_steps": 1, "inner_lr": 0.2}, 0.9, "completed"),
                      ("r5", {"algorithm": "reptile", "inner_steps": 5, "inner_lr": 0.1}, 0.7, "completed")],
              space_name="baselines")
    _, methods, reference = _methods(run_dir, ["reptile"], [str(b_dir)], reference=None)
    assert reference is None and methods[-1].name == "reptile" and methods[-1].values["inner_steps"] == 5
    assert "skipping trial r1" in capsys.readouterr().out


def test_reference_joins_the_baselines_and_is_checked(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    build_run(run_dir, [("a", BEST, 0.6, "completed")])
    _, methods, reference = _methods(run_dir, ["maml"], [], reference="fomaml")
    assert [m.name for m in methods][-2:] == ["maml", "fomaml"] and reference == "fomaml"
    # a baseline identical to an earlier method is trained once; the reference follows it
    _, methods, reference = _methods(run_dir, ["ahe"], [], reference="ahe")
    assert reference == "ahe (default)" and "ahe" not in [m.name for m in methods]
    _, _, reference = _methods(run_dir, [], [], reference="ahe (tuned, w=0)")
    assert reference == "ahe (tuned, w=0)"
    with pytest.raises(ConfigError, match="reference: 'nope' is not a method"):
        _methods(run_dir, [], [], reference="nope")


def test_an_ahe_baselines_run_joins_as_method_ahe(tmp_path: Path) -> None:
    """How the study puts the identity-HVP search into one evaluation with the rest: its best trial
    is the best `ahe` trial over the --baselines-run directories."""
    run_dir, identity = tmp_path / "run", tmp_path / "identity"
    build_run(run_dir, [("a", BEST, 0.6, "completed")])
    build_run(identity, [("i1", {**OTHER, "hvp": "identity"}, 0.7, "completed"),
                         ("i2", {**BEST, "hvp": "identity", "w_cos": 0.2}, 0.5, "completed")])
    _, methods, _ = _methods(run_dir, ["ahe"], [str(identity)], reference=None)
    joined = methods[-1]
    assert (joined.name, joined.source) == ("ahe", "baselines-run")
    assert joined.values["hvp"] == "identity" and joined.values["w_cos"] == OTHER["w_cos"]
    assert methods[0].values.get("hvp", TrainConfig.hvp) == TrainConfig.hvp


def test_an_interrupted_evaluation_keeps_its_finished_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed `gs-tune evaluate` leaves RUN_DIR/evaluation_runs.jsonl with the runs that ended; run
    again, it keeps those whose method, seed and configuration are the same and retrains the rest,
    and each run it adds can be read back (the line the kill tore does not swallow it)."""
    appended: list[str] = []
    append_run = evaluate_module._append_run

    def append_and_read_back(path: Path, key: str, row: dict[str, Any]) -> None:
        append_run(path, key, row)
        assert key in _finished_runs(path)
        appended.append(key)

    monkeypatch.setattr(evaluate_module, "_append_run", append_and_read_back)
    run_dir = tmp_path / "run"
    build_run(run_dir, [("b", BEST, 0.61, "completed")])
    space, methods, _ = _methods(run_dir, [], [], reference=None)
    assert [m.name for m in methods] == ["ahe (tuned)", "ahe (tuned, w=0)", "ahe (default)"]
    tasks = 10
    kept = {"method": methods[0].name, "config_source": methods[0].source, "seed": EVAL_SEED_BASE,
            "test_accuracy": 0.123456, "test_ci95": 0.01, "test_tasks": tasks, "sec_per_iter": 0.5,
            "peak_memory_mb": 100.0, "params": {"algorithm": "ahe", "seed": EVAL_SEED_BASE}}
    other_tasks = {**kept, "method": methods[1].name, "config_source": methods[1].source, "test_accuracy": 0.654321}
    lines = [
        json.dumps({"key": run_key(methods[0], EVAL_SEED_BASE,
                                   _run_values(methods[0].values, EVAL_SEED_BASE, tasks, space.smoke)), "row": kept}),
        # the w=0 run was made with other test tasks: it is not this evaluation's run
        json.dumps({"key": run_key(methods[1], EVAL_SEED_BASE,
                                   _run_values(methods[1].values, EVAL_SEED_BASE, tasks + 1, space.smoke)),
                    "row": other_tasks}),
        '{"key": "torn by a kill',
    ]
    journal = run_dir / EVALUATION_RUNS_FILE
    journal.write_text("\n".join(lines))

    evaluate_run(run_dir, baselines=[], seeds=1, tasks=tasks, reference=None, smoke=True,
                 object_store_memory=200 * 2**20)

    rows = {r["method"]: r for r in pq.read_table(run_dir / "evaluation.parquet").to_pylist()}
    assert rows["ahe (tuned)"]["test_accuracy"] == 0.123456  # kept, not retrained
    assert rows["ahe (tuned, w=0)"]["test_accuracy"] != 0.654321  # retrained
    assert json.loads(rows["ahe (tuned, w=0)"]["params_json"])["test_tasks"] == tasks
    assert 0.0 <= rows["ahe (default)"]["test_accuracy"] <= 1.0
    assert "1 of 3 runs already done" in capsys.readouterr().out
    assert len(appended) == 2  # the two retrained
    assert not journal.exists()  # evaluation.parquet holds its runs now


class _Killed(Exception):
    pass


def test_a_run_killed_mid_training_goes_on_from_its_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A retraining killed after its checkpoint at iteration 2 of 4 goes on from there when the
    evaluation is started again, and scores exactly what the uninterrupted run scores; the
    checkpoints are gone once the evaluation is written."""
    run_dir = tmp_path / "run"
    build_run(run_dir, [("b", BEST, 0.61, "completed")], smoke={**TINY_SMOKE, "checkpoint_every": 2})
    space, methods, _ = _methods(run_dir, [], [], reference=None)
    tasks = 10
    values = _run_values(methods[0].values, EVAL_SEED_BASE, tasks, space.smoke)
    cfg = train_config(values)
    digits = load_dataset("digits")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the evaluation's one-CPU task trains
    try:
        uninterrupted = list(train(cfg, dataset=digits))[-1]

        checkpoint = RunState.checkpoint

        def checkpoint_then_die(self: RunState, directory: Path | None) -> str | None:
            path = checkpoint(self, directory)
            if self.iteration == 2:
                raise _Killed
            return path

        monkeypatch.setattr(RunState, "checkpoint", checkpoint_then_die)
        ckpt = checkpoint_dir(run_dir, run_key(methods[0], EVAL_SEED_BASE, values))
        with pytest.raises(_Killed):
            list(train(cfg, dataset=digits, checkpoint_dir=ckpt))
        monkeypatch.setattr(RunState, "checkpoint", checkpoint)
    finally:
        torch.set_num_threads(threads)
    assert (ckpt / CHECKPOINT_NAME).is_file()

    evaluate_run(run_dir, baselines=[], seeds=1, tasks=tasks, reference=None, smoke=True,
                 object_store_memory=200 * 2**20)

    out = capsys.readouterr().out
    resumed = [line for line in out.splitlines() if "went on from its checkpoint" in line]
    assert len(resumed) == 1 and methods[0].name in resumed[0]  # the others had none to go on from
    rows = {r["method"]: r for r in pq.read_table(run_dir / "evaluation.parquet").to_pylist()}
    assert rows[methods[0].name]["test_accuracy"] == uninterrupted["test_accuracy"]
    assert rows[methods[0].name]["test_ci95"] == uninterrupted["test_ci95"]
    assert not (run_dir / EVALUATION_CHECKPOINTS_DIR).exists()
