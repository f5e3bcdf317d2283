"""Typed configuration: the one place where a flat dict becomes config.

Every caller (CLI flags, a YAML file, a Ray Tune trial's sampled parameters)
produces a flat ``dict`` and hands it to :func:`train_config` or
:func:`algo_hparams`. Validation lives here so an error always names the field
and what is allowed, whoever the caller was.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import math
import textwrap
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from gs_tune.errors import ConfigError

ALGORITHMS = ("maml", "fomaml", "reptile", "ahe")
DATASETS = ("digits", "mnist", "omniglot", "miniimagenet")
MODELS = ("conv4", "mlp")
HVP_MODES = ("exact", "finite_difference", "finite_difference_f32", "identity")
AHE_AT = ("first_step", "all_steps")
SCHEDULES = ("constant", "linear_warmup", "linear_decay", "cosine", "step")
DEVICES = ("auto", "cpu", "cuda")
BATCHING = ("auto", "vmap", "loop")
DTYPES = ("float32", "float64")
META_TRAIN_SPLITS = ("train", "train+val")
EVAL_BATCH_NORM = ("transductive", "support")
MEMORY_FORMATS = ("contiguous", "channels_last")


@dataclass(frozen=True)
class AlgoHParams:
    """Hyperparameters of one meta-gradient computation (docs/method.md)."""

    inner_lr: float = 0.4
    """α: SGD step size of the inner (task-adaptation) loop."""
    inner_steps: int = 1
    """K: inner SGD steps on the support set."""
    w_cos: float = 1.0
    """Weight of the cosine term w_cos·(1 − cos(g_S, g_Q)) (ahe only). The defaults 1.0 / 0.01 are
    what `gs-tune train --algorithm ahe` runs without a search: non-zero, so untuned AHE is the
    method, not first-order MAML (the best of w_cos 0.03-1.0 on validation, digits 5-way 1-shot,
    benchmarks/default_weights.py, BENCHMARKS §2)."""
    w_l2: float = 0.01
    """Weight of the squared-error term w_l2·‖g_S − g_Q‖² (ahe only)."""
    w_dot: float = 0.0
    """Weight of the dot term −w_dot·⟨g_S, g_Q⟩; w_dot = inner_lr recovers MAML at K = 1."""
    hvp: str = "exact"
    """How AHE computes H_S·u: exact (reverse-over-reverse on the first support gradient's own
    graph: exact to rounding, about the cost of the old float32 difference), finite_difference
    (central difference, its two gradients in float64), finite_difference_f32 (the same in the
    model's dtype: ~30% off in float32, kept for the record), identity (H ≈ I: u as is).
    Error and cost of each: BENCHMARKS.md §2; docs/method.md."""
    fd_eps: float | None = None
    """Step ε of the finite-difference modes along û = u/‖u‖; None: 3e-8 for finite_difference,
    1e-6 for finite_difference_f32 (each mode's measured best: a larger ε crosses ReLU/max-pool
    kinks, error ~jump/ε, a 5-shot task did at ε ≥ 1e-7; a smaller one drowns in rounding)."""
    ahe_at: str = "first_step"
    """Apply the correction at θ only, or sum it over every inner iterate θ_k."""
    ahe_scale: float = 1.0
    """λ, the scale of the correction; in a run's config λ₀, the peak of the ahe_schedule that the
    trainer applies at each meta-iteration."""
    ahe_clip: float | None = None
    """ρ: clip ‖λ·H·u‖ to ρ·‖g_Q‖ per task; None disables clipping."""
    batching: str = "auto"
    """Tasks batched with vmap, a Python loop, or auto (vmap on CUDA, loop on CPU)."""

    @property
    def has_correction(self) -> bool:
        return (self.w_cos, self.w_l2, self.w_dot) != (0.0, 0.0, 0.0) and self.ahe_scale != 0.0

    @property
    def fd_step(self) -> float:
        """ε of the finite-difference modes: fd_eps, or the default of the mode in use."""
        if self.fd_eps is not None:
            return self.fd_eps
        return 1e-6 if self.hvp == "finite_difference_f32" else 3e-8


@dataclass(frozen=True)
class TrainConfig(AlgoHParams):
    """Everything one meta-training run needs; a Ray Tune trial is one of these.

    The algorithm's fields are inherited from :class:`AlgoHParams` (declared once); here
    ``ahe_scale`` is λ₀, the peak of the λ schedule that the trainer applies per iteration.
    Where it runs (device, output directory, progress bar, TensorBoard) is not configuration:
    those are arguments of :func:`gs_tune.train`, so a search space cannot fix them.
    """

    # data
    dataset: str = "digits"
    """Few-shot benchmark: digits (embedded), mnist, omniglot, miniimagenet."""
    data_root: str | None = None
    """Directory of the dataset files (not needed for digits)."""
    ways: int = 5
    """N: classes per task."""
    shots: int = 1
    """K-shot: support examples per class."""
    query: int = 15
    """Q: query examples per class."""
    meta_train_splits: str = "train"
    """Classes meta-training draws tasks from: train, or train+val for a final retraining once the
    search has used val to pick the configuration (val records then score seen classes)."""
    # model
    model: str = "conv4"
    """conv4 (4 × conv-BN-ReLU-pool, MAML's network) or mlp."""
    filters: int = 32
    """Conv-4 channels per layer (32 or 64 in the literature); MLP hidden width ×8."""
    memory_format: str = "contiguous"
    """Conv-4's kernel path: contiguous (NCHW) or channels_last (NHWC weights and images, a loop
    over tasks; vmap keeps NCHW). Same values in exact arithmetic; channels_last speeds up the
    first-order algorithms on CPU, but its batch norm leaves float32 gradients up to ~1e-4 to 3e-2 from
    float64 instead of ~1e-6, which puts the default HVP past its accuracy target, hence not the
    default (BENCHMARKS.md §1, §2)."""
    # algorithm (the rest is inherited from AlgoHParams)
    algorithm: str = "ahe"
    """maml, fomaml, reptile or ahe (first-order MAML + gradient-similarity correction)."""
    eval_inner_steps: int | None = None
    """Inner steps at validation/test time; None means inner_steps."""
    eval_batch_norm: str = "transductive"
    """Batch-norm statistics of the query set at validation/test: transductive (the whole query set
    in one batch, as MAML's code does; most papers' numbers) or support (the support set's
    statistics at the adapted parameters, so each query example is scored on its own)."""
    ahe_schedule: str = "constant"
    """λ(t) over meta-iterations: constant, linear_warmup, linear_decay, cosine, step."""
    ahe_warmup: float = 0.2
    """Fraction of iterations that linear_warmup takes to reach λ₀."""
    ahe_step_every: float = 0.5
    """step schedule: multiply λ by ahe_step_gamma every this fraction of iterations."""
    ahe_step_gamma: float = 0.1
    """step schedule: the factor λ is multiplied by at each step."""
    # outer loop
    outer_lr: float = 1e-3
    """Adam step size of the meta-update."""
    iterations: int = 300
    """Meta-iterations (outer Adam steps)."""
    meta_batch: int = 4
    """Tasks per meta-iteration."""
    # evaluation
    val_every: int = 50
    """Validate every this many meta-iterations (and at the last one)."""
    val_tasks: int = 100
    """Validation tasks per validation."""
    test_tasks: int = 600
    """Tasks of the final test evaluation (600 as in the MAML paper); 0 skips it."""
    log_every: int = 10
    """Average the training statistics over this many meta-iterations for the train_log of the
    next validation record (TensorBoard's train/ and grad/ curves)."""
    # run
    seed: int = 0
    """Seeds initialisation, training tasks and validation/test tasks (independent streams)."""
    dtype: str = "float32"
    """Floating-point type of the model and the tasks."""
    checkpoint_every: int = 100
    """Also checkpoint every this many meta-iterations between validations."""

    def algo_hparams(self, ahe_scale: float | None = None) -> AlgoHParams:
        """The per-iteration hyperparameters, with λ replaced by the scheduled value."""
        kwargs = {f.name: getattr(self, f.name) for f in fields(AlgoHParams)}
        if ahe_scale is not None:
            kwargs["ahe_scale"] = ahe_scale
        return AlgoHParams(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- validation -------------------------------------------------------------

_CHOICES: dict[str, tuple[str, ...]] = {
    "algorithm": ALGORITHMS,
    "dataset": DATASETS,
    "model": MODELS,
    "hvp": HVP_MODES,
    "ahe_at": AHE_AT,
    "ahe_schedule": SCHEDULES,
    "batching": BATCHING,
    "dtype": DTYPES,
    "meta_train_splits": META_TRAIN_SPLITS,
    "eval_batch_norm": EVAL_BATCH_NORM,
    "memory_format": MEMORY_FORMATS,
}
_POSITIVE = {
    "inner_lr", "inner_steps", "outer_lr", "iterations", "meta_batch", "ways", "shots",
    "query", "filters", "fd_eps", "val_every", "val_tasks", "checkpoint_every", "log_every",
    "eval_inner_steps", "ahe_clip", "ahe_step_every",
}
_NON_NEGATIVE = {"w_cos", "w_l2", "w_dot", "ahe_scale", "test_tasks", "ahe_warmup", "ahe_step_gamma"}
_KIND = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}


@functools.cache
def field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """Each field's base type and whether it is optional (``X | None``), read once from the hints."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = typing.get_args(hint)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        out[name] = (base, optional)
    return out


def _parse_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise ValueError(value)
    return bool(value)


def _coerce(name: str, value: Any, base: type, optional: bool) -> Any:
    """Turn YAML/CLI/Tune values (often strings or numpy scalars) into the field's type."""
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(name, "must be set")
    try:
        if base is bool:
            return _parse_bool(value)
        if base is int:
            as_float = float(value)
            if not as_float.is_integer():
                raise ValueError(value)
            return int(as_float)
        if base is float:
            out = float(value)
            if not math.isfinite(out):
                raise ValueError(value)
            return out
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(name, f"must be {_KIND.get(base, base.__name__)}, got {value!r}") from None


def _check_value(name: str, value: Any) -> None:
    if value is None:
        return
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ConfigError(name, f"got {value!r}, allowed: {', '.join(_CHOICES[name])}")
    if name in _POSITIVE and value <= 0:
        raise ConfigError(name, f"must be > 0, got {value!r}")
    if name in _NON_NEGATIVE and value < 0:
        raise ConfigError(name, f"must be >= 0, got {value!r}")


def check_field(name: str, value: Any, cls: type | None = None) -> Any:
    """One field's value coerced to its type and checked on its own (no cross-field rules)."""
    types = field_types(cls or TrainConfig)
    if name not in types:
        raise ConfigError(name, f"unknown field; allowed: {', '.join(sorted(types))}")
    coerced = _coerce(name, value, *types[name])
    _check_value(name, coerced)
    return coerced


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    types = field_types(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(unknown[0], f"unknown field; allowed: {', '.join(sorted(types))}")
    return cls(**{name: check_field(name, value, cls) for name, value in values.items()})


def train_config(values: Mapping[str, Any] | None = None, **overrides: Any) -> TrainConfig:
    """Validate a flat mapping (YAML, CLI flags, Tune sample) into a :class:`TrainConfig`."""
    merged = {**(values or {}), **overrides}
    merged = {k.replace("-", "_"): v for k, v in merged.items()}
    cfg = _build(TrainConfig, merged)
    if cfg.algorithm == "reptile" and cfg.inner_steps < 2:
        # (θ − θ₁)/α with one step on support ∪ query is the gradient of the joint loss at θ: plain
        # multi-task training, which would be reported under Reptile's name
        raise ConfigError("inner_steps", "reptile with 1 inner step is joint training on support ∪ query, "
                                         "not Reptile; allowed: >= 2 (Nichol et al. use 5-10)")
    if cfg.ahe_warmup > 1 or cfg.ahe_step_every > 1:
        name = "ahe_warmup" if cfg.ahe_warmup > 1 else "ahe_step_every"
        raise ConfigError(name, "is a fraction of iterations and must be <= 1")
    return cfg


def algo_hparams(values: Mapping[str, Any] | None = None, **overrides: Any) -> AlgoHParams:
    """Validate keyword hyperparameters of :func:`gs_tune.meta_gradient`."""
    return _build(AlgoHParams, {**(values or {}), **overrides})


@functools.cache
def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """Each field's docstring (the string literal under it in the class body), for ``--help``.

    Python keeps no attribute docstrings at run time, so they are read from the source once.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]
        except (OSError, TypeError):
            continue  # no source (frozen app): --help then shows defaults only
        for node, after in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs
