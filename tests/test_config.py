"""gs_tune/config.py: the one place a flat dict becomes typed config."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gs_tune.config import AlgoHParams, TrainConfig, algo_hparams, field_docs, field_types, train_config
from gs_tune.errors import ConfigError


def test_train_config_declares_the_algorithm_fields_once():
    algo = {f.name for f in dataclasses.fields(AlgoHParams)}
    train = [f.name for f in dataclasses.fields(TrainConfig)]
    assert algo <= set(train)
    assert len(train) == len(set(train))
    assert issubclass(TrainConfig, AlgoHParams)


def test_runtime_choices_are_not_config():
    for name in ("device", "out", "progress", "tensorboard"):
        with pytest.raises(ConfigError, match=f"^{name}: unknown field"):
            train_config({name: "x"})


def test_algo_hparams_carries_the_scheduled_lambda():
    cfg = train_config(w_cos=0.3, ahe_scale=2.0, inner_steps=3)
    hp = cfg.algo_hparams(0.5)
    assert isinstance(hp, AlgoHParams) and not isinstance(hp, TrainConfig)
    assert (hp.w_cos, hp.inner_steps, hp.ahe_scale) == (0.3, 3, 0.5)
    assert cfg.algo_hparams().ahe_scale == 2.0


@pytest.mark.parametrize("value, expected", [
    ("3", 3), (3.0, 3), (np.int64(3), 3), (np.float32(3.0), 3),
])
def test_integers_accept_strings_and_numpy_scalars(value, expected):
    cfg = train_config(inner_steps=value)
    assert cfg.inner_steps == expected and type(cfg.inner_steps) is int


@pytest.mark.parametrize("value, expected", [("none", None), ("null", None), (None, None), ("2.5", 2.5)])
def test_optional_fields_take_null(value, expected):
    assert train_config(ahe_clip=value).ahe_clip == expected


def test_non_optional_field_refuses_null():
    with pytest.raises(ConfigError, match="^ways: must be set"):
        train_config(ways=None)


@pytest.mark.parametrize("field, value, message", [
    ("inner_steps", "2.5", "inner_steps: must be an integer, got '2.5'"),
    ("inner_lr", "nan", "inner_lr: must be a finite number"),
    ("inner_lr", 0, "inner_lr: must be > 0"),
    ("w_cos", -1, "w_cos: must be >= 0"),
    ("algorithm", "sgd", "algorithm: got 'sgd', allowed: maml, fomaml, reptile, ahe"),
    ("ahe_warmup", 1.5, "ahe_warmup: is a fraction of iterations"),
    ("log_every", 0, "log_every: must be > 0"),
    ("nonsense", 1, "nonsense: unknown field; allowed: "),
])
def test_bad_values_name_the_field_and_what_is_allowed(field, value, message):
    with pytest.raises(ConfigError) as info:
        train_config({field: value})
    assert str(info.value).startswith(message)
    assert info.value.field == field
    assert "\n" not in str(info.value)


def test_dashes_are_underscores():
    assert train_config({"inner-lr": 0.1}).inner_lr == 0.1


def test_algo_hparams_refuses_trainer_fields():
    assert algo_hparams(w_l2=0.2).w_l2 == 0.2
    with pytest.raises(ConfigError, match="^iterations: unknown field"):
        algo_hparams(iterations=3)


def test_field_types_are_read_from_the_hints():
    types = field_types(TrainConfig)
    assert types["ahe_clip"] == (float, True)
    assert types["inner_steps"] == (int, False)
    assert types["dataset"] == (str, False)
    assert set(types) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_every_field_has_a_docstring():
    docs = field_docs(TrainConfig)
    missing = [f.name for f in dataclasses.fields(TrainConfig) if not docs.get(f.name)]
    assert not missing
    assert docs["inner_steps"].startswith("K: inner SGD steps")


def test_reptile_with_one_inner_step_is_refused():
    with pytest.raises(ConfigError, match=r"^inner_steps: reptile with 1 inner step is joint training"):
        train_config(algorithm="reptile", inner_steps=1)
    assert train_config(algorithm="reptile", inner_steps=5).inner_steps == 5


def test_the_default_ahe_config_has_a_correction():
    cfg = train_config(algorithm="ahe")
    assert cfg.w_cos > 0 and cfg.w_l2 > 0
    assert cfg.algo_hparams().has_correction
