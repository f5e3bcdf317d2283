"""Search-space mappings and an Optuna driver shared by tests/search (a plain module, not conftest,
so test files can import them; its name is unique across the test tree)."""

from __future__ import annotations

from typing import Any

import optuna

from gs_tune.search.samplers import optuna_define_by_run

# Every distribution kind once, with fixed values the searched ones must be merged with.
ALL_KINDS: dict[str, Any] = {
    "fixed": {"algorithm": "ahe", "iterations": 100, "val_every": 50},
    "search": {
        "inner_lr": {"uniform": [0.05, 0.8]},
        "w_cos": {"loguniform": [1.0e-3, 1.0]},
        "inner_steps": {"int": [1, 5]},
        "filters": {"int": [16, 64], "step": 16},
        "query": {"int": [2, 40], "log": True},
        "ahe_schedule": {"choice": ["constant", "linear_warmup", "cosine"]},
    },
}
# A conditional parameter on a searched one (the accuracy_vs_cost pattern).
CONDITIONAL: dict[str, Any] = {
    "search": {
        "algorithm": {"choice": ["maml", "fomaml", "ahe"]},
        "w_cos": {"loguniform": [1.0e-3, 1.0], "when": {"algorithm": "ahe"}},
        "ahe_clip": {"uniform": [0.5, 4.0], "when": {"algorithm": ["ahe", "fomaml"]}},
    },
}


def run_define_by_run(space, n_trials: int = 20) -> list[tuple[dict[str, Any], dict[str, Any], Any]]:
    """(params, returned constants, distributions) of n trials of an in-memory study."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    define, out = optuna_define_by_run(space), []
    for _ in range(n_trials):
        trial = study.ask()
        constants = define(trial)
        out.append((dict(trial.params), constants, dict(trial.distributions)))
        study.tell(trial, 0.0)
    return out
