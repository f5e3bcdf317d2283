"""Search-space YAML → a validated SearchSpace (gs_tune/search/space.py, space_checks.py)."""

from __future__ import annotations

import copy
from typing import Any

import optuna
import pytest
import yaml
from space_helpers import ALL_KINDS, CONDITIONAL, run_define_by_run

from gs_tune.config import TrainConfig
from gs_tune.errors import SpaceError
from gs_tune.search.samplers import make_sampler, sample_to_config
from gs_tune.search.space import SPACES_DIR, Asha, load_space, parse_space, shipped_spaces

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- shipped spaces -----------------------------------------------------------------------------

def test_the_three_spaces_are_shipped():
    assert {"cosine_l2", "baselines", "accuracy_vs_cost"} <= set(shipped_spaces())


@pytest.mark.parametrize("name", shipped_spaces())
def test_shipped_space_loads_and_gives_valid_trials(name):
    space = load_space(name)
    assert space.name == name
    assert "test_tasks" not in space.smoke and not space.fixed.get("test_tasks")  # searches never test
    if name in ("cosine_l2", "baselines", "accuracy_vs_cost"):  # the MAML-protocol presets hold their own
        assert space.fixed["dataset"] == "digits" and space.fixed["ways"] == 5 and space.fixed["shots"] == 1
    assert space.num_samples >= 1 and space.max_concurrent >= 1
    for params, constants, _ in run_define_by_run(space, 5):
        assert constants == space.fixed
        assert isinstance(sample_to_config(space, {**constants, **params}), TrainConfig)
    smoke = space.with_overrides(smoke=True)
    assert smoke.fixed["iterations"] == 30 and "test_tasks" not in smoke.fixed


def test_accuracy_vs_cost_is_multi_objective_without_asha():
    space = load_space("accuracy_vs_cost")
    assert space.is_multi_objective
    assert space.metrics == ["val_accuracy", "sec_per_iter"] and space.modes == ["max", "min"]
    assert space.sampler == "nsga2" and space.scheduler is None
    assert isinstance(make_sampler(space), optuna.samplers.NSGAIISampler)


def test_cosine_l2_uses_asha_bounded_by_iterations():
    space = load_space("cosine_l2")
    assert space.metrics == ["val_accuracy"] and space.modes == ["max"] and not space.is_multi_objective
    assert space.scheduler == Asha(grace_period=100, reduction_factor=3, max_t=space.fixed["iterations"])


@pytest.mark.parametrize("spelling", ["cosine_l2", "cosine_l2.yaml", str(SPACES_DIR / "cosine_l2.yaml")])
def test_load_by_name_file_name_or_path(spelling):
    assert load_space(spelling) == load_space("cosine_l2")


def test_unknown_space_name_lists_the_shipped_ones():
    with pytest.raises(SpaceError) as err:
        load_space("no_such_space")
    assert err.value.path == "space"
    assert "no_such_space" in err.value.message
    assert ", ".join(shipped_spaces()) in err.value.message


def test_unparseable_yaml_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("search: {inner_lr: [1, 2\nfixed: x\n")
    with pytest.raises(SpaceError) as err:
        load_space(str(path))
    assert str(err.value).startswith(f"space: cannot parse {path}: ")
    assert "\n" not in str(err.value)


def test_file_name_is_the_default_name_and_1e_3_is_a_number(tmp_path):
    path = tmp_path / "my_space.yml"
    path.write_text("search:\n  w_cos: {loguniform: [1e-3, 1e+0]}\n")
    space = load_space(str(path))
    assert space.name == "my_space"
    assert (space.params[0].low, space.params[0].high) == (0.001, 1.0)
    path.write_text("name: renamed\nsearch:\n  w_cos: {loguniform: [1e-3, 1]}\n")
    assert load_space(str(path)).name == "renamed"

# --- overrides and YAML round trip ----------------------------------------------------------------

def test_with_overrides_applies_smoke_and_cli_values():
    space = load_space("cosine_l2")
    smoke = space.with_overrides(num_samples=3, max_concurrent=1, smoke=True, cpus_per_trial=2,
                                 gpus_per_trial=0.25)
    assert {k: smoke.fixed[k] for k in space.smoke} == space.smoke
    assert (smoke.num_samples, smoke.max_concurrent, smoke.cpus_per_trial, smoke.gpus_per_trial) == (
        3, 1, 2, 0.25)
    # ASHA's grace period shrinks with iterations (100/600 of 30, rounded up to a validation)
    assert smoke.scheduler == Asha(grace_period=10, reduction_factor=3, max_t=30)
    assert smoke.params == space.params
    assert space.fixed["iterations"] == 600  # the original is untouched
    with pytest.raises(SpaceError) as err:
        space.with_overrides(num_samples=0)
    assert err.value.path == "num_samples"


def test_fix_pins_a_searched_or_fixed_field():
    space = load_space("baselines")
    maml = space.with_overrides(fix={"algorithm": "maml", "ways": 20})
    assert maml.fixed["algorithm"] == "maml" and maml.fixed["ways"] == 20
    assert [p.name for p in maml.params] == [p.name for p in space.params if p.name != "algorithm"]
    assert "algorithm" in [p.name for p in space.params]  # the original is untouched
    with pytest.raises(SpaceError) as err:
        space.with_overrides(fix={"algorithm": "sgd"})
    assert err.value.path == "fixed.algorithm" and "allowed" in str(err.value)
    with pytest.raises(SpaceError) as err:
        space.with_overrides(fix={"algorithm": "maml", "inner_lr": 0.1, "outer_lr": 0.001, "inner_steps": 1})
    assert err.value.path == "search"  # nothing left to search


@pytest.mark.parametrize("space", [*shipped_spaces(), "all", "cond"])
def test_to_yaml_round_trips(space):
    if space == "all":
        loaded = parse_space(ALL_KINDS, space)
    elif space == "cond":
        loaded = parse_space(CONDITIONAL, space)
    else:
        loaded = load_space(space)
    assert parse_space(yaml.safe_load(loaded.to_yaml()), "other") == loaded
    smoke = loaded.with_overrides(smoke=True)
    assert parse_space(yaml.safe_load(smoke.to_yaml()), "other") == smoke


def test_default_smoke_leaves_searched_fields_alone():
    space = parse_space({"search": {"iterations": {"int": [50, 100]}}}, "iters")
    assert space.smoke == {"val_every": 10, "val_tasks": 10}  # and never test tasks
    assert parse_space({"search": {"w_cos": {"uniform": [0.0, 1.0]}}}, "w").smoke["iterations"] == 30


# --- invalid spaces -----------------------------------------------------------------------------

BASE: dict[str, Any] = {"fixed": {"dataset": "digits", "iterations": 100},
                        "search": {"w_cos": {"loguniform": [1e-3, 1.0]}}}
MULTI = [{"metric": "val_accuracy"}, {"metric": "sec_per_iter"}]


def searching(**params: Any) -> dict[str, Any]:
    return {"search": params}


INVALID = [
    # (what is replaced at the top level of BASE, exact key path, part of the message)
    (searching(w_cos={"loguniform": [0, 1]}), "search.w_cos.loguniform", "low must be > 0"),
    (searching(foo={"uniform": [0, 1]}), "search.foo", "unknown parameter; allowed: ahe_at, ahe_clip"),
    ({"fixed": {"ways": -1}}, "fixed.ways", "must be > 0, got -1"),
    ({"fixed": {"ahe_warmup": 2}}, "fixed.ahe_warmup", "fraction"),
    ({"fixed": {"nope": 1}}, "fixed.nope", "unknown parameter"),
    ({"sampler": {"name": "x"}}, "sampler.name", "got 'x', allowed: tpe, random, cmaes, nsga2"),
    ({"sampler": {"seed": -1}}, "sampler.seed", "integer >= 0"),
    ({"sampler": {"name": "random", "n_startup_trials": 3}}, "sampler.n_startup_trials", "unknown key"),
    ({"sampler": {"name": "nsga2"}}, "sampler.name", "nsga2 needs several objectives"),
    ({"objective": MULTI, "sampler": {"name": "tpe"}}, "sampler.name", "use nsga2"),
    ({"objective": MULTI, "sampler": {"population_size": 1}}, "sampler.population_size", ">= 2"),
    (searching(inner_lr={"uniform": [0.5, 0.1]}), "search.inner_lr.uniform", "low must be < high"),
    (searching(inner_lr={"uniform": [-1, 1]}), "search.inner_lr.uniform", "low must be > 0, got -1.0"),
    (searching(ahe_warmup={"uniform": [0.1, 2]}), "search.ahe_warmup.uniform", "high is a fraction"),
    (searching(inner_lr={"uniform": ["a", 1]}), "search.inner_lr.uniform", "low must be a finite number"),
    (searching(inner_lr={"uniform": [True, 1]}), "search.inner_lr.uniform", "low must be a finite number"),
    (searching(inner_lr={"uniform": [0.1]}), "search.inner_lr.uniform", "must be [low, high]"),
    (searching(inner_lr=0.4), "search.inner_lr", "must be a mapping"),
    (searching(inner_lr={"uniform": [0.1, 1], "choice": [1]}), "search.inner_lr", "exactly one of"),
    (searching(inner_lr={"normal": [0, 1]}), "search.inner_lr", "exactly one of"),
    (searching(inner_lr={"uniform": [0.1, 1], "step": 2}), "search.inner_lr.step", "unknown key"),
    (searching(inner_steps={"uniform": [1, 5]}), "search.inner_steps.uniform", "use int"),
    (searching(algorithm={"uniform": [1, 5]}), "search.algorithm.uniform", "use choice"),
    (searching(inner_steps={"int": [1.5, 3]}), "search.inner_steps.int", "low must be an integer"),
    (searching(inner_steps={"int": [0, 3]}), "search.inner_steps.int", "low must be > 0"),
    (searching(inner_steps={"int": [1, 8], "step": 2}), "search.inner_steps.step", "not a multiple"),
    (searching(inner_steps={"int": [1, 9], "step": 0}), "search.inner_steps.step", "integer >= 1"),
    (searching(inner_steps={"int": [1, 9], "step": 2, "log": True}), "search.inner_steps.log", "step"),
    (searching(inner_steps={"int": [1, 9], "log": "yes"}), "search.inner_steps.log", "true or false"),
    (searching(algorithm={"choice": ["maml", "sgd"]}), "search.algorithm.choice[1]", "got 'sgd', allowed"),
    (searching(algorithm={"choice": []}), "search.algorithm.choice", "non-empty list"),
    (searching(algorithm={"choice": ["maml", "maml"]}), "search.algorithm.choice[1]", "duplicate"),
    (searching(algorithm={"choice": [["maml"]]}), "search.algorithm.choice[0]", "must be text, a number"),
    ({"search": {}}, "search", "at least one parameter"),
    ({"search": ["w_cos"]}, "search", "must be a mapping"),
    ({"fixed": {"w_cos": 0.1}}, "search.w_cos", "is also in fixed"),
    (searching(w_cos={"uniform": [0.1, 1], "when": {"nope": 1}}), "search.w_cos.when.nope",
     "unknown parameter"),
    (searching(w_cos={"uniform": [0.1, 1], "when": {"algorithm": "sgd"}}), "search.w_cos.when.algorithm",
     "got 'sgd'"),
    (searching(w_cos={"uniform": [0.1, 1], "when": "ahe"}), "search.w_cos.when", "must be a mapping"),
    (searching(w_cos={"uniform": [0.1, 1], "when": {"algorithm": "ahe"}},
               algorithm={"choice": ["maml", "ahe"]}), "search.w_cos.when.algorithm", "list it before"),
    (searching(algorithm={"choice": ["maml", "ahe"]},
               w_cos={"uniform": [0.1, 1], "when": {"algorithm": "fomaml"}}),
     "search.w_cos.when.algorithm", "not one of the choices"),
    ({"bogus": 1}, "bogus", "unknown key; allowed: name, description"),
    ({"name": "has space"}, "name", "letters, digits"),
    ({"description": 3}, "description", "must be text"),
    ({"objective": {"metric": "accuracy"}}, "objective.metric", "allowed: val_accuracy, val_loss"),
    ({"objective": {"metric": "val_accuracy", "mode": "min"}}, "objective.mode", "takes mode max"),
    ({"objective": [{"metric": "val_loss"}, {"metric": "val_loss"}]}, "objective[1].metric", "twice"),
    ({"objective": []}, "objective", "non-empty list"),
    ({"objective": {"metric": "val_loss", "goal": "min"}}, "objective.goal", "unknown key"),
    ({"num_samples": 0}, "num_samples", "integer >= 1"),
    ({"num_samples": "many"}, "num_samples", "integer >= 1"),
    ({"max_concurrent": 1.5}, "max_concurrent", "integer >= 1"),
    ({"scheduler": {"name": "hyperband"}}, "scheduler.name", "allowed: asha, none"),
    ({"scheduler": {"name": "asha", "grace_period": 500}}, "scheduler.grace_period", "<= iterations (100)"),
    ({"scheduler": {"name": "asha", "reduction_factor": 1}}, "scheduler.reduction_factor", "> 1"),
    ({"scheduler": {"name": "asha", "max_t": 10}}, "scheduler.max_t", "unknown key"),
    ({"scheduler": {"name": "none", "grace_period": 10}}, "scheduler.grace_period", "unknown key"),
    ({"scheduler": {"name": "asha"}, "objective": MULTI}, "scheduler.name", "several objectives"),
    ({"scheduler": {"name": "asha"}, "fixed": {}, "search": {"iterations": {"int": [50, 100]}}},
     "scheduler.name", "iterations fixed"),
    ({"resources": {"cpus_per_trial": 0}}, "resources.cpus_per_trial", "> 0"),
    ({"resources": {"gpus_per_trial": "all"}}, "resources.gpus_per_trial", "auto or a number"),
    ({"resources": {"gpu": 1}}, "resources.gpu", "unknown key"),
    ({"smoke": {"w_cos": 0.1}}, "smoke.w_cos", "is searched"),
    ({"smoke": {"iters": 3}}, "smoke.iters", "unknown parameter"),
    ({"smoke": {"iterations": 0}}, "smoke.iterations", "must be > 0"),
    ({"storage": "study.db"}, "storage", "storage URL"),
]


@pytest.mark.parametrize("change, path, message", INVALID, ids=[f"{c[1]}-{i}" for i, c in enumerate(INVALID)])
def test_invalid_space_names_the_key(change, path, message):
    data = {**copy.deepcopy(BASE), **copy.deepcopy(change)}
    with pytest.raises(SpaceError) as err:
        parse_space(data, "bad")
    assert err.value.path == path, str(err.value)
    assert str(err.value).startswith(f"{path}: ")
    assert message in err.value.message, str(err.value)


def test_valid_storage_urls():
    for url in ("sqlite:///runs/x/study.db", "postgresql://user@host/db", "postgresql+psycopg2://h/db"):
        assert parse_space({**BASE, "storage": url}, "s").storage == url


def test_reptile_searches_its_inner_steps_and_never_runs_with_one():
    space = load_space("baselines").with_overrides(fix={"algorithm": "reptile"})
    (steps,) = [p for p in space.params if p.name == "inner_steps"]
    assert (steps.low, steps.high) == (3, 10)
    for params, constants, _ in run_define_by_run(space, 5):
        assert sample_to_config(space, {**constants, **params}).inner_steps >= 3
    maml = load_space("baselines").with_overrides(fix={"algorithm": "maml"})
    for params, constants, _ in run_define_by_run(maml, 3):
        assert sample_to_config(maml, {**constants, **params}).inner_steps == 1
