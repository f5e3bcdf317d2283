"""Search spaces: a YAML file → a validated :class:`SearchSpace` (samplers.py turns it into what
Optuna and Ray Tune take).

Pure functions only (no ``ray.init``, no Tuner): everything a search needs is checked here and in
space_checks.py (the rules of each key), before anything runs, and every error is a
:class:`~gs_tune.errors.SpaceError` naming the dotted key path.

YAML format (every key but ``search`` is optional)::

    name: cosine_l2            # default: the file stem; letters, digits, _ - . (it names run dirs)
    description: free text
    fixed:                     # TrainConfig fields (gs_tune/config.py) fixed for every trial
      algorithm: ahe
      iterations: 600
    search:                    # TrainConfig fields, one distribution each, sampled in this order
      w_cos: {loguniform: [1.0e-3, 1.0]}     # log-uniform float, low > 0 (1e-3 is read as a number too)
      inner_lr: {uniform: [0.05, 0.8]}       # uniform float
      inner_steps: {int: [1, 5]}             # integer, both ends inclusive
      filters: {int: [16, 64], step: 16}     # every step-th integer from low; high - low a multiple of step
      query: {int: [5, 40], log: true}       # log-uniform integer (not combinable with step)
      ahe_schedule: {choice: [constant, linear_warmup, cosine]}   # categorical (scalars, null allowed)
      ahe_clip: {uniform: [0.5, 4.0], when: {algorithm: ahe}}
        # `when`: only sampled if every named parameter equals the value (a list value means "in").
        # The named parameter may be fixed, left at its TrainConfig default, or searched earlier in
        # this list; a parameter that is not sampled keeps its TrainConfig default in the trial.
    objective: {metric: val_accuracy, mode: max}   # or a list of such maps (multi-objective)
        # metrics: val_accuracy (max), val_loss (min), sec_per_iter (min), train_loss (min);
        # mode may be omitted and must match the metric's direction. Default: val_accuracy.
    sampler: {name: tpe}       # tpe (default) | random | cmaes | nsga2 (default when multi-objective);
        # several objectives need nsga2, and nsga2 only makes sense for several; cmaes needs the
        # `cmaes` package. Optional: n_startup_trials (tpe, cmaes), population_size (nsga2). seed:
        # an integer, or left out / null: derived from the run's name, so every search has a seed
        # of its own and the same run name reproduces it (recorded in run.json either way).
    num_samples: 10            # trials (default 10)
    max_concurrent: 1          # trials at once (default 1)
    scheduler: {name: asha, grace_period: 100, reduction_factor: 3}
        # or {name: none} (the default). grace_period is in meta-iterations (default: val_every),
        # ASHA's max_t is the fixed `iterations`; ASHA needs a single objective and fixed iterations.
    resources: {cpus_per_trial: 1, gpus_per_trial: auto}
        # auto = 1 GPU per trial when the cluster has GPUs else 0; fractions (0.25) are allowed.
    smoke: {iterations: 30, val_every: 10, val_tasks: 10}   # the default (minus searched)
        # TrainConfig overrides applied by --smoke (fields that are not searched); ASHA's grace
        # period shrinks with iterations.
    storage: null              # Optuna storage URL: sqlite:///… or postgresql://…; null = RUN_DIR/study.db
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gs_tune.errors import SpaceError
from gs_tune.search.space_checks import (
    DEFAULT_SMOKE,
    TOP_KEYS,
    Asha,
    Objective,
    Param,
    count,
    fixed_values,
    objective_list,
    resources_spec,
    sampler_spec,
    scheduler_spec,
    search_params,
    smoke_grace,
    storage_url,
)

__all__ = ["SPACES_DIR", "Asha", "Objective", "Param", "SearchSpace", "load_space", "parse_space",
           "shipped_spaces"]

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads ``1e-3`` (no dot) as a string; read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))



@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    fixed: dict[str, Any]
    params: tuple[Param, ...]
    objectives: tuple[Objective, ...]
    sampler: str
    sampler_seed: int | None
    sampler_options: dict[str, int]
    num_samples: int
    max_concurrent: int
    scheduler: Asha | None
    cpus_per_trial: float
    gpus_per_trial: str | float
    smoke: dict[str, Any]
    storage: str | None

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]

    @property
    def is_multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def with_overrides(self, num_samples: int | None = None, max_concurrent: int | None = None,
                       smoke: bool = False, cpus_per_trial: float | None = None,
                       gpus_per_trial: str | float | None = None,
                       fix: Mapping[str, Any] | None = None) -> SearchSpace:
        """A copy with CLI overrides applied, validated like the YAML (errors name the key).

        ``fix`` pins fields: a searched one leaves ``search`` for ``fixed`` (``algorithm=maml`` runs
        the baselines space for one algorithm, so each gets a search budget of its own).
        """
        data = self.to_dict()
        for key, value in (fix or {}).items():
            data["search"].pop(key, None)
            data["fixed"][key] = value
        for key, value in (("num_samples", num_samples), ("max_concurrent", max_concurrent)):
            if value is not None:
                data[key] = value
        for key, value in (("cpus_per_trial", cpus_per_trial), ("gpus_per_trial", gpus_per_trial)):
            if value is not None:
                data["resources"][key] = value
        if smoke:
            data["fixed"].update(self.smoke)
            if self.scheduler is not None:
                data["scheduler"]["grace_period"] = smoke_grace(self.scheduler, data["fixed"])
        return parse_space(data, self.name)

    def to_dict(self) -> dict[str, Any]:
        """The resolved space (defaults filled in) as plain YAML-able data."""
        objectives = [{"metric": o.metric, "mode": o.mode} for o in self.objectives]
        scheduler: dict[str, Any] = {"name": "none"}
        if self.scheduler is not None:
            scheduler = {"name": "asha", "grace_period": self.scheduler.grace_period,
                         "reduction_factor": self.scheduler.reduction_factor}
        return {
            "name": self.name, "description": self.description, "fixed": dict(self.fixed),
            "search": {p.name: p.to_dict() for p in self.params},
            "objective": objectives if self.is_multi_objective else objectives[0],
            "sampler": {"name": self.sampler, "seed": self.sampler_seed, **self.sampler_options},
            "num_samples": self.num_samples, "max_concurrent": self.max_concurrent,
            "scheduler": scheduler,
            "resources": {"cpus_per_trial": self.cpus_per_trial, "gpus_per_trial": self.gpus_per_trial},
            "smoke": dict(self.smoke), "storage": self.storage,
        }

    def to_yaml(self) -> str:
        """The resolved space as YAML; ``parse_space(yaml.safe_load(text), name)`` gives it back."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)



# --- loading ----------------------------------------------------------------------------------

def shipped_spaces() -> list[str]:
    """Names of the spaces shipped in gs_tune/search_spaces/."""
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path: str) -> SearchSpace:
    """Read and validate a space: a YAML path, or the name of a shipped space (``cosine_l2``)."""
    path = Path(name_or_path)
    if not path.is_file() and path.parent == Path("."):
        stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
        path = SPACES_DIR / f"{stem}.yaml"
    if not path.is_file():
        shipped = ", ".join(shipped_spaces())
        raise SpaceError("space", f"no such file {name_or_path!r}; shipped spaces: {shipped}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except OSError as exc:
        raise SpaceError("space", f"cannot read {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpaceError("space", f"cannot parse {path}: {_one_line(exc)}") from None
    if not isinstance(data, Mapping):
        raise SpaceError("space", f"{path} must hold a mapping of keys, got {type(data).__name__}")
    return parse_space(data, path.stem)


def _one_line(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())



def parse_space(data: Mapping[str, Any], name: str) -> SearchSpace:
    """Validate a space mapping (as read from YAML); ``name`` is used unless ``data`` names itself."""
    if not isinstance(data, Mapping):
        raise SpaceError("space", f"must be a mapping of keys, got {type(data).__name__}")
    for key in data:
        if key not in TOP_KEYS:
            raise SpaceError(str(key), f"unknown key; allowed: {', '.join(TOP_KEYS)}")
    space_name = data.get("name") or name
    if not isinstance(space_name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", space_name):
        raise SpaceError("name", f"must be letters, digits, _ - . (it names run dirs), got {space_name!r}")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise SpaceError("description", f"must be text, got {type(description).__name__}")
    raw_search = data.get("search")
    fixed = fixed_values(data.get("fixed"), "fixed", {}, set(),
                         per_trial=raw_search if isinstance(raw_search, Mapping) else ())
    params = search_params(data.get("search"), fixed)
    objectives = objective_list(data.get("objective"))
    sampler, seed, options = sampler_spec(data.get("sampler"), len(objectives) > 1)
    cpus, gpus = resources_spec(data.get("resources"))
    searched = {p.name for p in params}
    default_smoke = {k: v for k, v in DEFAULT_SMOKE.items() if k not in searched}
    smoke = fixed_values(data.get("smoke", default_smoke), "smoke", fixed, searched)
    return SearchSpace(
        name=space_name, description=description, fixed=fixed, params=params, objectives=objectives,
        sampler=sampler, sampler_seed=seed, sampler_options=options,
        num_samples=count(data.get("num_samples", 10), "num_samples"),
        max_concurrent=count(data.get("max_concurrent", 1), "max_concurrent"),
        scheduler=scheduler_spec(data.get("scheduler"), fixed, params, len(objectives) > 1),
        cpus_per_trial=cpus, gpus_per_trial=gpus, smoke=smoke,
        storage=storage_url(data.get("storage")),
    )

