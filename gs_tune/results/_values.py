"""Value coercion shared by the table writers: Tune/Optuna/numpy values in, Arrow-ready values out."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import pyarrow as pa

from gs_tune.records import KINDS
from gs_tune.results.schema import widen


def plain(value: Any) -> Any:
    """numpy scalars (what Optuna and Tune hand out) to the Python scalar they hold."""
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        try:
            return item()
        except (TypeError, ValueError):
            return value
    return value


def to_float(value: Any, key: str) -> float | None:
    value = plain(value)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"record field {key!r} must be a number, got {value!r}") from None


def to_int(value: Any, key: str) -> int | None:
    value = plain(value)
    if value is None:
        return None
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        as_float = math.nan
    if not as_float.is_integer():
        raise ValueError(f"field {key!r} must be an integer, got {value!r}")
    return int(as_float)


def is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def value_type(value: Any, current: pa.DataType | None) -> pa.DataType | None:
    """The Arrow type a parameter value asks for; an integral float keeps an int column int."""
    value = plain(value)
    if value is None:
        return None
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        if current == pa.int64() and value.is_integer():
            return pa.int64()
        return pa.float64()
    return pa.string()


def merge_type(current: pa.DataType | None, value: Any) -> pa.DataType | None:
    return widen(current, value_type(value, current))


def cast_param(value: Any, type_: pa.DataType) -> Any:
    """A parameter value converted to its column's (possibly widened) type."""
    value = plain(value)
    if value is None:
        return None
    if type_ == pa.string():
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple, dict)):
            return json.dumps(value, sort_keys=True, default=str)
        return str(value)
    if type_ == pa.float64():
        return float(value)
    if type_ == pa.int64():
        return int(value)
    return bool(value)


@lru_cache(maxsize=1)
def config_param_types() -> dict[str, pa.DataType]:
    """Column types of TrainConfig fields, so e.g. param_ahe_clip is float64 even while every value is None.

    Optional: the results package must work on a run directory without the trainer importable.
    """
    try:
        from gs_tune.config import TrainConfig, field_types
    except Exception:  # noqa: BLE001 - any failure just means "no hints"
        return {}
    base = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
    return {name: base[type_] for name, (type_, _) in field_types(TrainConfig).items() if type_ in base}


def record_kind(record: Mapping[str, Any], trial_id: str) -> str:
    """A record's ``kind`` (gs_tune/records.py); ValueError naming the trial if it has none we know."""
    kind = record.get("kind")
    if kind not in KINDS:
        raise ValueError(f"trial {trial_id}: record kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return str(kind)
