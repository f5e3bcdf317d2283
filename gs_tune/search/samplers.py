"""A validated SearchSpace → what the searchers take: Optuna's define-by-run function and sampler,
Ray Tune domains, and the TrainConfig of a sampled trial."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gs_tune.config import TrainConfig, train_config
from gs_tune.errors import SpaceError
from gs_tune.search.space import SearchSpace

if TYPE_CHECKING:
    import optuna


def optuna_define_by_run(space: SearchSpace) -> Callable[[optuna.trial.Trial], dict[str, Any]]:
    """A define-by-run function for OptunaSearch: suggests the params, returns the fixed constants."""

    def define(trial: optuna.trial.Trial) -> dict[str, Any]:
        values = dict(space.fixed)
        for p in space.params:
            if not p.active(values):
                continue  # conditional parameter whose condition fails: the trial keeps the default
            if p.kind == "choice":
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices or ()))
            elif p.kind == "int":
                values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), step=p.step, log=p.log)
            else:
                values[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high), log=p.log)
        return dict(space.fixed)

    return define


def tune_param_space(space: SearchSpace) -> dict[str, Any]:
    """Ray Tune domains plus fixed values, for Tune's own searchers (no conditions on searched params)."""
    from ray import tune  # imported here: ray is slow to import and only this conversion needs it

    searched = {p.name for p in space.params}
    out: dict[str, Any] = dict(space.fixed)
    for p in space.params:
        dynamic = [ref for ref, _ in p.when if ref in searched]
        if dynamic:
            raise SpaceError(f"search.{p.name}.when", f"depends on the searched {dynamic[0]}, which Tune's "
                             "search spaces cannot express; use optuna_define_by_run")
        if not p.active(space.fixed):
            continue  # a condition on fixed values is decided once, for every trial
        if p.kind == "choice":
            out[p.name] = tune.choice(list(p.choices or ()))
        elif p.kind == "uniform":
            out[p.name] = tune.uniform(p.low, p.high)
        elif p.kind == "loguniform":
            out[p.name] = tune.loguniform(p.low, p.high)
        elif p.log:
            out[p.name] = tune.lograndint(p.low, p.high + 1)  # Tune's upper bound is exclusive
        elif p.step == 1:
            out[p.name] = tune.randint(p.low, p.high + 1)
        elif p.low % p.step:
            raise SpaceError(f"search.{p.name}.int", f"Tune's qrandint draws multiples of step, so low "
                             f"({p.low}) must be one; use optuna_define_by_run")
        else:
            out[p.name] = tune.qrandint(p.low, p.high, p.step)  # inclusive upper when step > 1
    return out


def sample_to_config(space: SearchSpace, sampled: Mapping[str, Any]) -> TrainConfig:
    """The trial's TrainConfig: fixed + sampled values, inactive conditional params left at default.

    Raises :class:`~gs_tune.errors.ConfigError` if the sample holds an invalid value.
    """
    values = {**space.fixed, **sampled}
    for p in space.params:
        if p.when and p.name in values and (values[p.name] is None or not p.active(values)):
            del values[p.name]
    return train_config(values)


def derived_seed(run_name: str) -> int:
    """The sampler seed of a run whose space gives none: a hash of the run's name. Two searches
    then never share their random start-up trials (one shared seed made every search of a study
    start from the same configurations), and rerunning a name reproduces its search."""
    return int.from_bytes(hashlib.sha256(run_name.encode()).digest()[:4], "big") & 0x7FFFFFFF


def resolve_seed(space: SearchSpace, run_name: str) -> int:
    """The space's sampler seed if it gives one, else :func:`derived_seed` of the run name."""
    return space.sampler_seed if space.sampler_seed is not None else derived_seed(run_name)


def make_sampler(space: SearchSpace, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler named by the space, seeded with ``seed`` (default: the space's seed)."""
    import optuna

    seed = space.sampler_seed if seed is None else seed
    options = space.sampler_options
    if space.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if space.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, **options)
    if space.sampler == "cmaes":
        # Optuna imports `cmaes` only at the first trial; fail now, with the fix, instead.
        if importlib.util.find_spec("cmaes") is None:
            raise SpaceError("sampler.name", "cmaes needs the cmaes package: pip install cmaes")
        return optuna.samplers.CmaEsSampler(seed=seed, **options)
    return optuna.samplers.TPESampler(seed=seed, **options)
