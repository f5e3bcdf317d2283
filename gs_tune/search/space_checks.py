"""The rules of each key of a search-space YAML (the format is in gs_tune/search/space.py).

Every function takes the raw YAML value and the dotted key path it came from, and returns the
validated, coerced value or raises :class:`~gs_tune.errors.SpaceError` naming that path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from gs_tune.config import TrainConfig, check_field, train_config
from gs_tune.errors import ConfigError, SpaceError

METRICS = {"val_accuracy": "max", "val_loss": "min", "sec_per_iter": "min", "train_loss": "min"}
SAMPLERS = ("tpe", "random", "cmaes", "nsga2")
SAMPLER_OPTIONS = {"tpe": ("n_startup_trials",), "random": (), "cmaes": ("n_startup_trials",),
                   "nsga2": ("population_size",)}
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
TOP_KEYS = ("name", "description", "fixed", "search", "objective", "sampler", "num_samples",
            "max_concurrent", "scheduler", "resources", "smoke", "storage")
DEFAULT_SMOKE = {"iterations": 30, "val_every": 10, "val_tasks": 10}

# "float", "int", "str", "bool" per field (annotations are strings under postponed evaluation).
_FIELD_TYPES = {f.name: str(f.type).replace(" | None", "") for f in fields(TrainConfig)}
_FIELDS = ", ".join(sorted(_FIELD_TYPES))
# What a trial gets for a field nobody set: conditions are evaluated against the config as built.
_DEFAULTS = TrainConfig().as_dict()


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


def count(value: Any, path: str) -> int:
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


def fixed_values(value: Any, path: str, base: dict[str, Any], searched: set[str],
                 per_trial: Iterable[str] = ()) -> dict[str, Any]:
    """A mapping of TrainConfig fields (fixed:, smoke:), validated on top of ``base``, coerced.
    ``searched`` may not be overridden here; rules tying a value to a field of ``searched`` or
    ``per_trial`` (names under search:) are left to each trial's config."""
    values = _mapping(value, path, "{ways: 5}")
    for key in values:
        if key not in _FIELD_TYPES:
            raise SpaceError(f"{path}.{key}", f"unknown parameter; allowed: {_FIELDS}")
        if key in searched:
            raise SpaceError(f"{path}.{key}", "is searched; smoke may only override fields that are not")
    try:
        cfg = train_config({**base, **values})
    except ConfigError as exc:
        linked = set(searched) | set(per_trial)
        if exc.field not in linked:
            raise SpaceError(f"{path}.{exc.field}", exc.message) from None
        # a rule tying a fixed field to a searched one (reptile needs inner_steps >= 2) is decided
        # per trial; each fixed value is still checked on its own
        return {key: _alone_or_with({}, key, v, f"{path}.{key}", "", linked) for key, v in values.items()}
    return {key: getattr(cfg, key) for key in values}  # coerced: "0.4" → 0.4


def search_params(value: Any, fixed: dict[str, Any]) -> tuple[Param, ...]:
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
        return Param(name, kind, choices=_choices(spec[kind], dpath, name, fixed, searched), when=when)
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
        _alone_or_with(fixed, name, end, dpath, f"{label} ", searched)
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


def _alone_or_with(fixed: dict[str, Any], name: str, value: Any, path: str, label: str,
                   searched: set[str]) -> Any:
    """``value`` of ``name`` validated with the fixed fields; when only a rule that ties it to
    another *searched* field fails (reptile needs inner_steps >= 2), on its own: that pair is
    decided per trial and checked when the trial's config is built."""
    try:
        return getattr(train_config({**fixed, name: value}), name)
    except ConfigError as exc:
        if exc.field in searched and exc.field != name:
            try:
                return check_field(name, value)
            except ConfigError as alone:
                raise SpaceError(path, f"{label}{alone.message}") from None
        raise SpaceError(path, f"{label}{exc.message}") from None


def _choices(value: Any, path: str, name: str, fixed: dict[str, Any],
             searched: set[str] = frozenset()) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise SpaceError(path, f"must be a non-empty list, got {value!r}")
    out: list[Any] = []
    for i, choice in enumerate(value):
        if not (choice is None or isinstance(choice, (str, bool)) or _is_number(choice)):
            raise SpaceError(f"{path}[{i}]", f"must be text, a number, true/false or null, got {choice!r}")
        coerced = _alone_or_with(fixed, name, choice, f"{path}[{i}]", "", searched)
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
            try:  # the referenced value on its own: what it is combined with is decided per trial
                coerced = check_field(ref, v)
            except ConfigError as exc:
                raise SpaceError(rpath, exc.message) from None
            if ref in before and before[ref].kind == "choice" and coerced not in before[ref].choices:
                choices = list(before[ref].choices or ())
                raise SpaceError(rpath, f"{v!r} is not one of the choices of {ref}: {choices}")
            values.append(coerced)
        out.append((ref, tuple(values)))
    return tuple(out)


def objective_list(value: Any) -> tuple[Objective, ...]:
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


def sampler_spec(value: Any, multi: bool) -> tuple[str, int | None, dict[str, int]]:
    spec = _mapping(value, "sampler", "{name: tpe, seed: 0}")
    name = spec.get("name", "nsga2" if multi else "tpe")
    if name not in SAMPLERS:
        raise SpaceError("sampler.name", f"got {name!r}, allowed: {', '.join(SAMPLERS)}")
    if multi and name != "nsga2":
        raise SpaceError("sampler.name", f"{name} with several objectives: use nsga2")
    if not multi and name == "nsga2":
        raise SpaceError("sampler.name", "nsga2 needs several objectives; use tpe, random or cmaes")
    _check_keys(spec, "sampler", ("name", "seed", *SAMPLER_OPTIONS[name]))
    seed = spec.get("seed")  # None: derived from the run's name at launch (samplers.resolve_seed)
    if seed is not None and (not _is_number(seed) or seed != int(seed) or seed < 0):
        raise SpaceError("sampler.seed", f"must be an integer >= 0 or null, got {seed!r}")
    options = {}
    for key in SAMPLER_OPTIONS[name]:
        if key in spec:
            options[key] = count(spec[key], f"sampler.{key}")
    if options.get("population_size", 2) < 2:
        raise SpaceError("sampler.population_size", "must be >= 2")
    return name, None if seed is None else int(seed), options


def scheduler_spec(value: Any, fixed: dict[str, Any], params: tuple[Param, ...], multi: bool) -> Asha | None:
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
    grace = count(spec.get("grace_period", min(max_t, fixed.get("val_every", _DEFAULTS["val_every"]))),
                   "scheduler.grace_period")
    if grace > max_t:
        raise SpaceError("scheduler.grace_period", f"must be <= iterations ({max_t}), got {grace}")
    factor = spec.get("reduction_factor", 3)
    if not _is_number(factor) or factor <= 1:
        raise SpaceError("scheduler.reduction_factor", f"must be a number > 1, got {factor!r}")
    return Asha(grace, factor, max_t)


def smoke_grace(asha: Asha, smoke_fixed: Mapping[str, Any]) -> int:
    """Shrink the grace period with iterations, to a multiple of val_every (when accuracy exists)."""
    iterations = smoke_fixed.get("iterations", _DEFAULTS["iterations"])
    val_every = smoke_fixed.get("val_every", _DEFAULTS["val_every"])
    scaled = asha.grace_period * iterations / asha.max_t
    return max(1, min(iterations, math.ceil(scaled / val_every) * val_every))


def resources_spec(value: Any) -> tuple[float, str | float]:
    spec = _mapping(value, "resources", "{cpus_per_trial: 1, gpus_per_trial: auto}")
    _check_keys(spec, "resources", ("cpus_per_trial", "gpus_per_trial"))
    cpus, gpus = spec.get("cpus_per_trial", 1), spec.get("gpus_per_trial", "auto")
    if not _is_number(cpus) or cpus <= 0:
        raise SpaceError("resources.cpus_per_trial", f"must be a number > 0, got {cpus!r}")
    if gpus != "auto" and (not _is_number(gpus) or gpus < 0):
        raise SpaceError("resources.gpus_per_trial", f"must be auto or a number >= 0, got {gpus!r}")
    return cpus, gpus


def storage_url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"(sqlite|postgresql|mysql)(\+\w+)?://", value):
        raise SpaceError("storage", f"must be a storage URL (sqlite:///… or postgresql://…), got {value!r}")
    return value

