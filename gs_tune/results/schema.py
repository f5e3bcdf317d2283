"""Arrow schemas of the run-directory tables: trials.parquet, metrics.parquet, evaluation.parquet.

Every field carries a ``description`` in its Arrow metadata so a reader of the
Parquet file (``pq.read_schema(path).field(name).metadata``) finds the meaning
without this module. docs/results.md is the prose version; keep both in step.
The core columns and their order are a contract with readers (notebooks, DuckDB
queries): add columns at the end of a section, never rename or retype one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa

# 2: trials.parquet lost its test_* columns (searches no longer evaluate the test split).
SCHEMA_VERSION = "2"
PARAM_PREFIX = "param_"

_F64 = pa.float64()
_I64 = pa.int64()
_STR = pa.string()


def column(name: str, type_: pa.DataType, description: str, nullable: bool = True) -> pa.Field:
    """A column whose meaning travels in its Parquet metadata (``description``)."""
    return pa.field(name, type_, nullable=nullable, metadata={"description": description})


def table_schema(fields: list[pa.Field], table: str) -> pa.Schema:
    """A gs-tune table's schema, stamped with the table's name and the schema version."""
    return pa.schema(fields, metadata={"gs_tune.table": table, "gs_tune.schema_version": SCHEMA_VERSION})


# --- trials.parquet -----------------------------------------------------------

# No test columns: a search never evaluates the test split (`gs-tune evaluate` does, into
# evaluation.parquet).
TRIAL_CORE_FIELDS: list[pa.Field] = [
    column("trial_id", _STR, "Ray Tune trial id; also the name of tune/<id>/ and tensorboard/<id>/.", False),
    column("status", _STR, "running, completed, early_stopped (by ASHA), diverged (non-finite loss) or error.",
           False),
    column("final_val_accuracy", _F64, "val_accuracy of the last validation record."),
    column("best_val_accuracy", _F64, "Highest finite val_accuracy over the trial's validation records."),
    column("final_val_loss", _F64, "val_loss of the last validation record."),
    column("best_val_loss", _F64, "Lowest finite val_loss over the trial's validation records."),
    column("final_val_ci95", _F64, "95% confidence half-width of final_val_accuracy."),
    column("iterations", _I64, "Meta-iterations done (iteration of the latest record)."),
    column("wall_seconds", _F64, "elapsed_s of the latest record: wall time of the trial so far."),
    column("sec_per_iter", _F64, "Mean wall seconds per training meta-iteration (latest record)."),
    column("device", _STR, "Device the trial trained on (e.g. cuda:0, cpu), when the search layer knows it."),
    column("node", _STR, "Host / Ray node the trial ran on, when known."),
    column("seed", _I64, "Training seed of the trial (as its actor reports it, or its 'seed' parameter)."),
    column("error", _STR, "Error message of a trial that ended with status error or diverged."),
    column("peak_memory_mb", _F64, "Peak accelerator/host memory of the trial in MiB, latest reported."),
]
TRIAL_CORE_COLUMNS: tuple[str, ...] = tuple(f.name for f in TRIAL_CORE_FIELDS)

_PY_TO_ARROW: dict[type, pa.DataType] = {bool: pa.bool_(), int: _I64, float: _F64, str: _STR}
# Promotion order when one parameter takes values of different kinds across trials:
# a column can only widen (bool < int < float < string), so old rows always still fit.
_RANK = {pa.bool_(): 0, _I64: 1, _F64: 2, _STR: 3}


def arrow_type(type_: type | pa.DataType) -> pa.DataType:
    """The Arrow type of a parameter column for a Python type (bool, int, float, str) or Arrow type."""
    if isinstance(type_, pa.DataType):
        if type_ not in _RANK:
            raise TypeError(f"parameter columns are bool, int64, float64 or string, got {type_}")
        return type_
    if type_ in _PY_TO_ARROW:
        return _PY_TO_ARROW[type_]
    # Lists, dicts and other objects are stored as their JSON text.
    return _STR


def widen(a: pa.DataType | None, b: pa.DataType | None) -> pa.DataType | None:
    """The narrowest parameter type that holds values of both types (None = no value seen yet)."""
    if a is None:
        return b
    if b is None:
        return a
    return a if _RANK[a] >= _RANK[b] else b


def param_column(name: str) -> str:
    return PARAM_PREFIX + name


def trials_schema(param_types: Mapping[str, type | pa.DataType]) -> pa.Schema:
    """Schema of trials.parquet: the core columns, then one nullable ``param_<name>`` column per parameter.

    ``param_types`` maps each searched or fixed parameter name to ``bool``, ``int``, ``float`` or
    ``str`` (or the Arrow type); parameter columns come in sorted order so two runs over the same
    space have identical schemas whatever order the parameters were first seen in.
    """
    fields = list(TRIAL_CORE_FIELDS)
    for name in sorted(param_types):
        fields.append(column(param_column(name), arrow_type(param_types[name]),
                             f"Trial parameter '{name}' (searched or fixed); null when not set."))
    return table_schema(fields, "trials")


def trial_params(row: Mapping[str, Any]) -> dict[str, Any]:
    """A trials.parquet row's parameters by name; null (not sampled) ones are left out."""
    return {k[len(PARAM_PREFIX):]: v for k, v in row.items() if k.startswith(PARAM_PREFIX) and v is not None}


def param_types_of(schema: pa.Schema) -> dict[str, pa.DataType]:
    """Inverse of :func:`trials_schema`: the parameter types held in a trials schema."""
    return {f.name[len(PARAM_PREFIX):]: f.type for f in schema if f.name.startswith(PARAM_PREFIX)}

# --- metrics.parquet ----------------------------------------------------------

METRICS_SCHEMA: pa.Schema = table_schema([
    column("trial_id", _STR, "Ray Tune trial id (join key with trials.parquet).", False),
    column("iteration", _I64, "Meta-iterations done when the record was made; unique per trial.", False),
    column("elapsed_s", _F64, "Wall seconds since the trial started."),
    column("train_loss", _F64, "Query loss after adaptation, averaged since the previous record."),
    column("train_accuracy", _F64, "Query accuracy after adaptation, averaged since the previous record."),
    column("val_loss", _F64, "Validation query loss after adaptation."),
    column("val_accuracy", _F64, "Validation query accuracy after adaptation."),
    column("val_ci95", _F64, "95% confidence half-width of val_accuracy over the validation tasks."),
    column("grad_norm", _F64, "Norm of the first-order meta-gradient."),
    column("correction_norm", _F64, "Norm of the AHE correction λ·H·u (0 for non-ahe algorithms)."),
    column("grad_cosine", _F64, "Cosine between support and query gradients."),
    column("ahe_lambda", _F64, "λ of the AHE schedule at this iteration."),
    column("sec_per_iter", _F64, "Mean wall seconds per training meta-iteration so far."),
], "metrics")
METRIC_COLUMNS: tuple[str, ...] = tuple(METRICS_SCHEMA.names)

# --- evaluation.parquet -------------------------------------------------------

EVALUATION_SCHEMA: pa.Schema = table_schema([
    column("method", _STR, "Method evaluated: 'ahe (tuned)', 'ahe (default)', maml, fomaml, reptile.", False),
    column("config_source", _STR, "Where the configuration came from: tuned, default, baselines-run, …"),
    column("seed", _I64, "Seed of this evaluation run."),
    column("test_accuracy", _F64, "Mean test accuracy over test_tasks tasks."),
    column("test_ci95", _F64, "95% confidence half-width of test_accuracy."),
    column("test_tasks", _I64, "Number of test tasks evaluated."),
    column("sec_per_iter", _F64, "Mean wall seconds per training meta-iteration."),
    column("peak_memory_mb", _F64, "Peak memory of the run in MiB."),
    column("params_json", _STR, "All parameters of the run as a JSON object (sorted keys)."),
], "evaluation")

