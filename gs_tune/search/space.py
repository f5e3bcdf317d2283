"""Search spaces: a YAML file → a validated :class:`SearchSpace` → Optuna or Ray Tune.

Pure functions only (no ``ray.init``, no Tuner): everything a search needs is checked here, before
anything runs, and every error is a :class:`~gs_tune.errors.SpaceError` naming the dotted key path.

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
    sampler: {name: tpe, seed: 0}   # tpe (default) | random | cmaes | nsga2 (default when multi-objective);
        # several objectives need nsga2, and nsga2 only makes sense for several; cmaes needs the
        # `cmaes` package. Optional: n_startup_trials (tpe, cmaes), population_size (nsga2). seed:
        # an integer or null (default 0, so a search is reproducible).
    num_samples: 10            # trials (default 10)
    max_concurrent: 1          # trials at once (default 1)
    scheduler: {name: asha, grace_period: 100, reduction_factor: 3}
        # or {name: none} (the default). grace_period is in meta-iterations (default: val_every),
        # ASHA's max_t is the fixed `iterations`; ASHA needs a single objective and fixed iterations.
    resources: {cpus_per_trial: 1, gpus_per_trial: auto}
        # auto = 1 GPU per trial when the cluster has GPUs else 0; fractions (0.25) are allowed.
    smoke: {iterations: 30, val_every: 10, val_tasks: 10, test_tasks: 20}   # the default (minus searched)
        # TrainConfig overrides applied by --smoke (fields that are not searched); ASHA's grace
        # period shrinks with iterations.
    storage: null              # Optuna storage URL: sqlite:///… or postgresql://…; null = RUN_DIR/study.db
"""

from __future__ import annotations

import copy
import importlib.util
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gs_tune.config import TrainConfig, train_config
from gs_tune.errors import ConfigError, SpaceError

if TYPE_CHECKING:
    import optuna

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"
METRICS = {"val_accuracy": "max", "val_loss": "min", "sec_per_iter": "min", "train_loss": "min"}
SAMPLERS = ("tpe", "random", "cmaes", "nsga2")
SAMPLER_OPTIONS = {"tpe": ("n_startup_trials",), "random": (), "cmaes": ("n_startup_trials",),
                   "nsga2": ("population_size",)}
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
TOP_KEYS = ("name", "description", "fixed", "search", "objective", "sampler", "num_samples",
            "max_concurrent", "scheduler", "resources", "smoke", "storage")
DEFAULT_SMOKE = {"iterations": 30, "val_every": 10, "val_tasks": 10, "test_tasks": 20}

# "float", "int", "str", "bool" per field (annotations are strings under postponed evaluation).
_FIELD_TYPES = {f.name: str(f.type).replace(" | None", "") for f in fields(TrainConfig)}
_FIELDS = ", ".join(sorted(_FIELD_TYPES))
# What a trial gets for a field nobody set: conditions are evaluated against the config as built.
_DEFAULTS = TrainConfig().as_dict()


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads ``1e-3`` (no dot) as a string; read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))


@dataclass(frozen=True)
class Param:
    """One searched TrainConfig field."""

    name: str
    kind: str  # uniform | loguniform | int | choice
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] | None = None
    step: int = 1
    log: bool = False
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    """(field, allowed values) pairs that must all hold for the parameter to be sampled."""

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether the condition holds for ``values`` (fixed + sampled so far; unset = default)."""
        return all(values.get(ref, _DEFAULTS[ref]) in allowed for ref, allowed in self.when)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.kind: list(self.choices or ()) if self.kind == "choice"
                               else [self.low, self.high]}
        if self.kind == "int" and self.step != 1:
            out["step"] = self.step
        if self.kind == "int" and self.log:
            out["log"] = True
        if self.when:
            out["when"] = {ref: vals[0] if len(vals) == 1 else list(vals) for ref, vals in self.when}
        return out


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # max | min


@dataclass(frozen=True)
class Asha:
    grace_period: int
    reduction_factor: float
    max_t: int
    """The fixed ``iterations``: ASHA stops nothing before its grace period nor runs past this."""


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
    source: dict[str, Any] = field(default_factory=dict, compare=False)
    """The mapping as it was read, for provenance; :meth:`to_yaml` writes the resolved space."""

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
                data["scheduler"]["grace_period"] = _smoke_grace(self.scheduler, data["fixed"])
        return replace(parse_space(data, self.name), source=self.source)

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


# --- validation ---------------------------------------------------------------------------------

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
    fixed = _overrides(data.get("fixed"), "fixed", {}, set())
    params = _params(data.get("search"), fixed)
    objectives = _objectives(data.get("objective"))
    sampler, seed, options = _sampler(data.get("sampler"), len(objectives) > 1)
    cpus, gpus = _resources(data.get("resources"))
    searched = {p.name for p in params}
    default_smoke = {k: v for k, v in DEFAULT_SMOKE.items() if k not in searched}
    smoke = _overrides(data.get("smoke", default_smoke), "smoke", fixed, searched)
    return SearchSpace(
        name=space_name, description=description, fixed=fixed, params=params, objectives=objectives,
        sampler=sampler, sampler_seed=seed, sampler_options=options,
        num_samples=_count(data.get("num_samples", 10), "num_samples"),
        max_concurrent=_count(data.get("max_concurrent", 1), "max_concurrent"),
        scheduler=_scheduler(data.get("scheduler"), fixed, params, len(objectives) > 1),
        cpus_per_trial=cpus, gpus_per_trial=gpus, smoke=smoke,
        storage=_storage(data.get("storage")), source=copy.deepcopy(dict(data)),
    )


def _mapping(value: Any, path: str, example: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpaceError(path, f"must be a mapping like {example}, got {type(value).__name__}")
    return value


def _check_keys(value: Mapping[str, Any], path: str, allowed: tuple[str, ...] | set[str]) -> None:
    for key in value:
        if key not in allowed:
            raise SpaceError(f"{path}.{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}")


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but `true` is never meant as a number in a space file.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any, path: str) -> int:
    if not _is_number(value) or value != int(value) or value < 1:
        raise SpaceError(path, f"must be an integer >= 1, got {value!r}")
    return int(value)


def _validated(values: Mapping[str, Any], path: str, label: str | None = None) -> TrainConfig:
    """train_config, its ConfigError re-raised as a SpaceError under the space's key path.

    Without ``label`` the failing field is appended to ``path`` (``fixed.ways``); with one, ``path``
    is already exact and ``label`` ("low ", "high ") says which value failed.
    """
    try:
        return train_config(values)
    except ConfigError as exc:
        if label is None:
            raise SpaceError(f"{path}.{exc.field}", exc.message) from None
        raise SpaceError(path, f"{label}{exc.message}") from None


def _overrides(value: Any, path: str, base: dict[str, Any], searched: set[str]) -> dict[str, Any]:
    """A mapping of TrainConfig fields (fixed:, smoke:), validated on top of ``base``, coerced."""
    values = _mapping(value, path, "{ways: 5}")
    for key in values:
        if key not in _FIELD_TYPES:
            raise SpaceError(f"{path}.{key}", f"unknown parameter; allowed: {_FIELDS}")
        if key in searched:
            raise SpaceError(f"{path}.{key}", "is searched; smoke may only override fields that are not")
    cfg = _validated({**base, **values}, path)
    return {key: getattr(cfg, key) for key in values}  # coerced: "0.4" → 0.4


def _params(value: Any, fixed: dict[str, Any]) -> tuple[Param, ...]:
    search = _mapping(value, "search", "{inner_lr: {uniform: [0.05, 0.8]}}")
    if not search:
        raise SpaceError("search", "must name at least one parameter to search")
    params: list[Param] = []
    for name, spec in search.items():
        path = f"search.{name}"
        if name not in _FIELD_TYPES:
            raise SpaceError(path, f"unknown parameter; allowed: {_FIELDS}")
        if name in fixed:
            raise SpaceError(path, "is also in fixed; a parameter is either fixed or searched")
        params.append(_param(name, spec, path, fixed, params, set(search)))
    return tuple(params)


def _param(name: str, spec: Any, path: str, fixed: dict[str, Any], earlier: list[Param],
           searched: set[str]) -> Param:
    if not isinstance(spec, Mapping):
        raise SpaceError(path, f"must be a mapping like {{uniform: [low, high]}}, got {spec!r}")
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    if len(kinds) != 1:
        got = ", ".join(map(str, spec)) or "none"
        raise SpaceError(path, f"needs exactly one of {', '.join(DISTRIBUTIONS)}; got keys: {got}")
    kind = kinds[0]
    _check_keys(spec, path, {kind, "when", "step", "log"} if kind == "int" else {kind, "when"})
    base, dpath = _FIELD_TYPES[name], f"{path}.{kind}"
    if kind != "choice" and base not in ("float", "int"):
        raise SpaceError(dpath, f"{name} is a {base} field; use choice")
    if kind in ("uniform", "loguniform") and base == "int":
        raise SpaceError(dpath, f"{name} is an integer field; use int")
    when = _when(spec.get("when"), f"{path}.when", name, earlier, searched)
    if kind == "choice":
        return Param(name, kind, choices=_choices(spec[kind], dpath, name, fixed), when=when)
    step, log = spec.get("step", 1), spec.get("log", kind == "loguniform")
    if not isinstance(log, bool):
        raise SpaceError(f"{path}.log", f"must be true or false, got {log!r}")
    low, high = _range(spec[kind], dpath, integer=kind == "int", positive=log)
    if kind == "int":
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise SpaceError(f"{path}.step", f"must be an integer >= 1, got {step!r}")
        if (high - low) % step:
            raise SpaceError(f"{path}.step", f"high - low = {high - low} is not a multiple of step {step}")
        if log and step != 1:
            raise SpaceError(f"{path}.log", "cannot be combined with step (Optuna samples neither)")
    for label, end in (("low", low), ("high", high)):
        _validated({**fixed, name: end}, dpath, f"{label} ")
    return Param(name, kind, low=low, high=high, step=step, log=log, when=when)


def _range(value: Any, path: str, integer: bool, positive: bool) -> tuple[Any, Any]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise SpaceError(path, f"must be [low, high], got {value!r}")
    for label, end in zip(("low", "high"), value):
        if not _is_number(end):
            raise SpaceError(path, f"{label} must be a finite number, got {end!r}")
        if integer and end != int(end):
            raise SpaceError(path, f"{label} must be an integer, got {end!r}")
    low, high = (int(v) for v in value) if integer else (float(v) for v in value)
    if positive and low <= 0:
        raise SpaceError(path, f"low must be > 0 on a log scale, got {low!r}")
    if low >= high:
        raise SpaceError(path, f"low must be < high, got [{low!r}, {high!r}]")
    return low, high


def _choices(value: Any, path: str, name: str, fixed: dict[str, Any]) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise SpaceError(path, f"must be a non-empty list, got {value!r}")
    out: list[Any] = []
    for i, choice in enumerate(value):
        if not (choice is None or isinstance(choice, (str, bool)) or _is_number(choice)):
            raise SpaceError(f"{path}[{i}]", f"must be text, a number, true/false or null, got {choice!r}")
        coerced = getattr(_validated({**fixed, name: choice}, f"{path}[{i}]", ""), name)
        if coerced in out:
            raise SpaceError(f"{path}[{i}]", f"duplicate choice {choice!r}")
        out.append(coerced)
    return tuple(out)


def _when(value: Any, path: str, name: str, earlier: list[Param],
          searched: set[str]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping) or not value:
        raise SpaceError(path, f"must be a mapping like {{algorithm: ahe}}, got {value!r}")
    before = {p.name: p for p in earlier}
    out = []
    for ref, allowed in value.items():
        rpath = f"{path}.{ref}"
        if ref not in _FIELD_TYPES:
            raise SpaceError(rpath, f"unknown parameter; allowed: {_FIELDS}")
        if ref in searched and ref not in before:
            # define-by-run samples in order, so the value must exist when this one is decided
            raise SpaceError(rpath, f"is searched after {name}; list it before {name} under search")
        values = []
        for v in allowed if isinstance(allowed, list) else [allowed]:
            coerced = getattr(_validated({ref: v}, rpath, ""), ref)
            if ref in before and before[ref].kind == "choice" and coerced not in before[ref].choices:
                choices = list(before[ref].choices or ())
                raise SpaceError(rpath, f"{v!r} is not one of the choices of {ref}: {choices}")
            values.append(coerced)
        out.append((ref, tuple(values)))
    return tuple(out)


def _objectives(value: Any) -> tuple[Objective, ...]:
    items = [value] if isinstance(value, Mapping) else value
    if value is None:
        items = [{"metric": "val_accuracy"}]
    if not isinstance(items, list) or not items:
        raise SpaceError("objective", "must be {metric: ..., mode: ...} or a non-empty list of them")
    out: list[Objective] = []
    for i, item in enumerate(items):
        path = "objective" if isinstance(value, Mapping) else f"objective[{i}]"
        item = _mapping(item, path, "{metric: val_accuracy, mode: max}")
        _check_keys(item, path, ("metric", "mode"))
        metric = item.get("metric")
        if metric not in METRICS:
            raise SpaceError(f"{path}.metric", f"got {metric!r}, allowed: {', '.join(METRICS)}")
        mode = item.get("mode", METRICS[metric])
        if mode != METRICS[metric]:
            raise SpaceError(f"{path}.mode", f"{metric} takes mode {METRICS[metric]}, not {mode!r}")
        if metric in (o.metric for o in out):
            raise SpaceError(f"{path}.metric", f"{metric} is listed twice")
        out.append(Objective(metric, mode))
    return tuple(out)


def _sampler(value: Any, multi: bool) -> tuple[str, int | None, dict[str, int]]:
    spec = _mapping(value, "sampler", "{name: tpe, seed: 0}")
    name = spec.get("name", "nsga2" if multi else "tpe")
    if name not in SAMPLERS:
        raise SpaceError("sampler.name", f"got {name!r}, allowed: {', '.join(SAMPLERS)}")
    if multi and name != "nsga2":
        raise SpaceError("sampler.name", f"{name} with several objectives: use nsga2")
    if not multi and name == "nsga2":
        raise SpaceError("sampler.name", "nsga2 needs several objectives; use tpe, random or cmaes")
    _check_keys(spec, "sampler", ("name", "seed", *SAMPLER_OPTIONS[name]))
    seed = spec.get("seed", 0)
    if seed is not None and (not _is_number(seed) or seed != int(seed) or seed < 0):
        raise SpaceError("sampler.seed", f"must be an integer >= 0 or null, got {seed!r}")
    options = {}
    for key in SAMPLER_OPTIONS[name]:
        if key in spec:
            options[key] = _count(spec[key], f"sampler.{key}")
    if options.get("population_size", 2) < 2:
        raise SpaceError("sampler.population_size", "must be >= 2")
    return name, None if seed is None else int(seed), options


def _scheduler(value: Any, fixed: dict[str, Any], params: tuple[Param, ...], multi: bool) -> Asha | None:
    spec = _mapping(value, "scheduler", "{name: asha, grace_period: 100}")
    name = spec.get("name", "none")
    if name not in ("asha", "none"):
        raise SpaceError("scheduler.name", f"got {name!r}, allowed: asha, none")
    allowed = ("name", "grace_period", "reduction_factor") if name == "asha" else ("name",)
    _check_keys(spec, "scheduler", allowed)
    if name == "none":
        return None
    if multi:
        raise SpaceError("scheduler.name", "asha ranks trials by one metric, not by several objectives; "
                         "use none")
    if any(p.name == "iterations" for p in params):
        raise SpaceError("scheduler.name", "asha needs iterations fixed (it is ASHA's max_t); use none")
    max_t = fixed.get("iterations", _DEFAULTS["iterations"])
    grace = _count(spec.get("grace_period", min(max_t, fixed.get("val_every", _DEFAULTS["val_every"]))),
                   "scheduler.grace_period")
    if grace > max_t:
        raise SpaceError("scheduler.grace_period", f"must be <= iterations ({max_t}), got {grace}")
    factor = spec.get("reduction_factor", 3)
    if not _is_number(factor) or factor <= 1:
        raise SpaceError("scheduler.reduction_factor", f"must be a number > 1, got {factor!r}")
    return Asha(grace, factor, max_t)


def _smoke_grace(asha: Asha, smoke_fixed: Mapping[str, Any]) -> int:
    """Shrink the grace period with iterations, to a multiple of val_every (when accuracy exists)."""
    iterations = smoke_fixed.get("iterations", _DEFAULTS["iterations"])
    val_every = smoke_fixed.get("val_every", _DEFAULTS["val_every"])
    scaled = asha.grace_period * iterations / asha.max_t
    return max(1, min(iterations, math.ceil(scaled / val_every) * val_every))


def _resources(value: Any) -> tuple[float, str | float]:
    spec = _mapping(value, "resources", "{cpus_per_trial: 1, gpus_per_trial: auto}")
    _check_keys(spec, "resources", ("cpus_per_trial", "gpus_per_trial"))
    cpus, gpus = spec.get("cpus_per_trial", 1), spec.get("gpus_per_trial", "auto")
    if not _is_number(cpus) or cpus <= 0:
        raise SpaceError("resources.cpus_per_trial", f"must be a number > 0, got {cpus!r}")
    if gpus != "auto" and (not _is_number(gpus) or gpus < 0):
        raise SpaceError("resources.gpus_per_trial", f"must be auto or a number >= 0, got {gpus!r}")
    return cpus, gpus


def _storage(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"(sqlite|postgresql|mysql)(\+\w+)?://", value):
        raise SpaceError("storage", f"must be a storage URL (sqlite:///… or postgresql://…), got {value!r}")
    return value


# --- conversions ----------------------------------------------------------------------------------

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


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The Optuna sampler named by the space, seeded with its seed."""
    import optuna

    seed, options = space.sampler_seed, space.sampler_options
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
