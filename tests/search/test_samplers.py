"""A validated space → Optuna define-by-run, Ray Tune domains, trial configs and samplers
(gs_tune/search/samplers.py)."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from space_helpers import ALL_KINDS, CONDITIONAL, run_define_by_run

from gs_tune.config import TrainConfig
from gs_tune.errors import ConfigError, SpaceError
from gs_tune.search.samplers import make_sampler, optuna_define_by_run, sample_to_config, tune_param_space
from gs_tune.search.space import load_space, parse_space, shipped_spaces

optuna.logging.set_verbosity(optuna.logging.WARNING)


# --- Optuna -----------------------------------------------------------------------------------

def test_optuna_distributions_ranges_and_log_flags():
    space = parse_space(ALL_KINDS, "all")
    expected = {
        "inner_lr": FloatDistribution(0.05, 0.8, log=False),
        "w_cos": FloatDistribution(1e-3, 1.0, log=True),
        "inner_steps": IntDistribution(1, 5),
        "filters": IntDistribution(16, 64, step=16),
        "query": IntDistribution(2, 40, log=True),
        "ahe_schedule": CategoricalDistribution(["constant", "linear_warmup", "cosine"]),
    }
    seen: dict[str, set] = {name: set() for name in expected}
    for params, constants, distributions in run_define_by_run(space, 40):
        assert distributions == expected
        assert list(params) == list(expected)  # declaration order
        assert constants == {"algorithm": "ahe", "iterations": 100, "val_every": 50}
        for name, value in params.items():
            seen[name].add(value)
            assert expected[name]._contains(expected[name].to_internal_repr(value))
    assert seen["filters"] <= {16, 32, 48, 64} and seen["inner_steps"] <= {1, 2, 3, 4, 5}
    assert 5 in seen["inner_steps"]  # the upper end is reachable (inclusive)
    assert all(isinstance(v, float) for v in seen["w_cos"]) and all(isinstance(v, int) for v in seen["query"])


def test_optuna_conditional_parameter_only_for_its_condition():
    space = parse_space(CONDITIONAL, "cond")
    algorithms = set()
    for params, _, _ in run_define_by_run(space, 40):
        algorithms.add(params["algorithm"])
        assert ("w_cos" in params) == (params["algorithm"] == "ahe")
        assert ("ahe_clip" in params) == (params["algorithm"] in ("ahe", "fomaml"))
    assert algorithms == {"maml", "fomaml", "ahe"}


@pytest.mark.parametrize("algorithm, sampled", [("fomaml", False), ("ahe", True)])
def test_condition_on_a_fixed_value_is_decided_once(algorithm, sampled):
    data = {"fixed": {"algorithm": algorithm},
            "search": {"inner_lr": {"uniform": [0.1, 0.5]},
                       "w_cos": {"loguniform": [1e-3, 1.0], "when": {"algorithm": "ahe"}}}}
    space = parse_space(data, "fixed_cond")
    assert all(("w_cos" in params) == sampled for params, _, _ in run_define_by_run(space, 10))
    assert ("w_cos" in tune_param_space(space)) == sampled


def test_condition_on_an_unset_field_uses_the_trainconfig_default():
    data = {"search": {"w_cos": {"loguniform": [1e-3, 1.0], "when": {"algorithm": "ahe"}}}}
    assert TrainConfig().algorithm == "ahe"
    assert all("w_cos" in params for params, _, _ in run_define_by_run(parse_space(data, "d"), 3))


def test_ray_optuna_search_merges_the_fixed_constants():
    from ray.tune.search.optuna import OptunaSearch

    for name in shipped_spaces():
        space = load_space(name)
        multi = space.is_multi_objective
        searcher = OptunaSearch(space=optuna_define_by_run(space), sampler=make_sampler(space),
                                metric=space.metrics if multi else space.metrics[0],
                                mode=space.modes if multi else space.modes[0])
        for i in range(3):
            config = searcher.suggest(f"trial_{i}")
            assert {k: config[k] for k in space.fixed} == space.fixed
            assert isinstance(sample_to_config(space, config), TrainConfig)


def test_a_choice_may_include_null():
    space = parse_space({"search": {"ahe_clip": {"choice": [None, 1.0, 2.0]}}}, "clip")
    seen = {params["ahe_clip"] for params, _, _ in run_define_by_run(space, 30)}
    assert seen == {None, 1.0, 2.0}
    assert sample_to_config(space, {"ahe_clip": None}).ahe_clip is None


# --- Ray Tune -----------------------------------------------------------------------------------

def test_tune_domains_and_inclusive_integer_bounds():
    from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Quantized, Uniform

    out = tune_param_space(parse_space(ALL_KINDS, "all"))
    assert {k: out[k] for k in ("algorithm", "iterations", "val_every")} == ALL_KINDS["fixed"]
    assert isinstance(out["inner_lr"], Float) and isinstance(out["inner_lr"].get_sampler(), Uniform)
    assert (out["inner_lr"].lower, out["inner_lr"].upper) == (0.05, 0.8)
    assert isinstance(out["w_cos"], Float) and isinstance(out["w_cos"].get_sampler(), LogUniform)
    assert (out["w_cos"].lower, out["w_cos"].upper) == (1e-3, 1.0)
    assert isinstance(out["inner_steps"], Integer) and out["inner_steps"].upper == 6  # randint: exclusive
    assert isinstance(out["filters"].get_sampler(), Quantized) and out["filters"].get_sampler().q == 16
    assert isinstance(out["query"].get_sampler(), LogUniform) and out["query"].upper == 41
    assert isinstance(out["ahe_schedule"], Categorical)
    assert out["ahe_schedule"].categories == ["constant", "linear_warmup", "cosine"]
    draws = {name: set(out[name].sample(size=400, random_state=0)) for name in ("inner_steps", "filters")}
    assert draws == {"inner_steps": {1, 2, 3, 4, 5}, "filters": {16, 32, 48, 64}}
    assert {int(v) for v in out["query"].sample(size=400, random_state=0)} <= set(range(2, 41))


def test_tune_refuses_a_condition_on_a_searched_parameter():
    with pytest.raises(SpaceError) as err:
        tune_param_space(parse_space(CONDITIONAL, "cond"))
    assert err.value.path == "search.w_cos.when"


def test_tune_refuses_a_step_grid_that_is_not_multiples_of_step():
    space = parse_space({"search": {"inner_steps": {"int": [1, 9], "step": 2}}}, "odd")
    assert {p["inner_steps"] for p, _, _ in run_define_by_run(space, 30)} <= {1, 3, 5, 7, 9}
    with pytest.raises(SpaceError) as err:
        tune_param_space(space)
    assert err.value.path == "search.inner_steps.int"


# --- configs and samplers -------------------------------------------------------------------------

def test_sample_to_config_merges_and_drops_inactive_conditionals():
    space = parse_space(CONDITIONAL, "cond")
    cfg = sample_to_config(space, {"algorithm": "ahe", "w_cos": 0.1, "ahe_clip": 2.0})
    assert (cfg.algorithm, cfg.w_cos, cfg.ahe_clip) == ("ahe", 0.1, 2.0)
    cfg = sample_to_config(space, {"algorithm": "maml", "w_cos": 0.1, "ahe_clip": None})
    assert (cfg.algorithm, cfg.w_cos, cfg.ahe_clip) == ("maml", TrainConfig().w_cos, None)  # the default
    with pytest.raises(ConfigError):
        sample_to_config(space, {"algorithm": "ahe", "w_cos": -1.0})


@pytest.mark.parametrize("name, cls", [("tpe", optuna.samplers.TPESampler),
                                       ("random", optuna.samplers.RandomSampler)])
def test_make_sampler_is_seeded(name, cls):
    space = parse_space({**ALL_KINDS, "sampler": {"name": name, "seed": 3}}, "s")
    assert isinstance(make_sampler(space), cls)
    firsts = []
    for _ in range(2):
        study = optuna.create_study(sampler=make_sampler(space))
        trial = study.ask()
        optuna_define_by_run(space)(trial)
        firsts.append(trial.params)
    assert firsts[0] == firsts[1]


def test_make_sampler_cmaes_needs_its_package():
    space = parse_space({**ALL_KINDS, "sampler": {"name": "cmaes"}}, "s")
    try:
        import cmaes  # noqa: F401
    except ImportError:
        with pytest.raises(SpaceError, match="pip install cmaes"):
            make_sampler(space)
    else:
        assert isinstance(make_sampler(space), optuna.samplers.CmaEsSampler)
