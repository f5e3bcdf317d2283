"""Reading a data pickle that may hold only numpy arrays, numbers, strings, lists and dicts.

A pickle names the functions that rebuild its objects and unpickling calls them, so an arbitrary
pickle can run any code. The shared dataset pickles need only numpy's array and scalar
constructors; every other name is refused before it is looked up.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

from gs_tune.errors import DataError

# numpy < 2 wrote numpy.core.*, numpy >= 2 writes numpy._core.* (and _frombuffer for protocol 5)
_NUMPY_GLOBALS = {
    ("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"),
}
# _codecs.encode rebuilds bytes in protocol-2 pickles written by Python 3
_ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"), ("_codecs", "encode")} | {
    (f"numpy.{core}.{module}", name) for core in ("core", "_core") for module, name in _NUMPY_GLOBALS
}


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}")
        if module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core."):]
        return getattr(importlib.import_module(module), name)


def _str_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {(k.decode("latin-1") if isinstance(k, bytes) else k): _str_keys(v) for k, v in value.items()}
    return value


def load_numpy_pickle(path: Path, source: str) -> dict[str, Any]:
    """The dict stored in the pickle at ``path`` (bytes keys, as Python 2 wrote them, become str)."""
    try:
        with open(path, "rb") as f:
            # latin-1 is how numpy arrays pickled by Python 2 are read back byte for byte
            data = _ArraysOnly(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{source}: refused to unpickle {path}: {e}; only numpy arrays, lists and dicts "
                        "are accepted") from e
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{source}: cannot read the pickle {path}: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"{source}: {path} holds a {type(data).__name__}; expected a dict")
    return _str_keys(data)
