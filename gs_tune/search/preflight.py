"""What `gs-tune launch` checks before it writes anything or starts Ray.

Everything knowable before the search is checked here, so that a mistake costs one line and exit
code 2 instead of a run directory full of failed trials: a search that would read the test split,
task sizes against every split of the dataset for every value the space can sample, the dataset's
files, the runs directory, and the cluster address.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any

from gs_tune.config import TrainConfig
from gs_tune.errors import ConfigError, DataError, RunDirError, SpaceError
from gs_tune.search.space import SearchSpace

ADDRESS_TIMEOUT_S = 10.0
_DEFAULTS = TrainConfig().as_dict()


def values_of(space: SearchSpace, field: str) -> list[Any]:
    """Every value ``field`` can take in a trial: fixed, the choices or range ends, else the default."""
    if field in space.fixed:
        return [space.fixed[field]]
    for param in space.params:
        if param.name == field:
            values = list(param.choices) if param.kind == "choice" else [param.low, param.high]
            # a conditional parameter keeps its default where its condition does not hold
            return values + ([_DEFAULTS[field]] if param.when else [])
    return [_DEFAULTS[field]]


def without_test_split(space: SearchSpace) -> SearchSpace:
    """The space with test_tasks 0, or SpaceError if it asks trials to evaluate the test split.

    Selection must never see the test split, not even as a column nobody ranks by: only
    ``gs-tune evaluate`` (and a standalone ``gs-tune train``) read it.
    """
    if any(p.name == "test_tasks" for p in space.params):
        raise SpaceError("search.test_tasks", "a search never reads the test split; remove it "
                                              "(gs-tune evaluate scores the test split)")
    asked = space.fixed.get("test_tasks", 0)
    if asked:
        raise SpaceError("fixed.test_tasks", f"got {asked}, allowed: 0 (a search never reads the test split; "
                                             "gs-tune evaluate scores it)")
    if "test_tasks" in space.fixed:
        return space
    return space.with_overrides(fix={"test_tasks": 0})


def check_data(space: SearchSpace) -> None:
    """Every dataset the space can use loads, and every split holds the largest task it can sample."""
    from gs_tune.data import TaskSampler, load_dataset

    ways = max(int(v) for v in values_of(space, "ways"))
    shots = max(int(v) for v in values_of(space, "shots"))
    query = max(int(v) for v in values_of(space, "query"))
    for dataset in dict.fromkeys(values_of(space, "dataset")):
        for root in dict.fromkeys(values_of(space, "data_root")):
            if root is not None and not Path(str(root)).is_dir():
                raise DataError(f"data_root: {root} is not a directory; pass the directory holding "
                                f"the {dataset} files (--fix data_root=DIR)")
            data = load_dataset(str(dataset), None if root is None else str(root))
            for split in ("train", "val", "test"):
                # the sampler's own check, so the message is the one a trial would have failed with
                TaskSampler(getattr(data, split), ways, shots, query, split)


def check_runs_dir(runs_dir: str | os.PathLike[str]) -> None:
    """The runs directory exists or can be created, and is writable."""
    path = Path(runs_dir).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise RunDirError(f"runs_dir: {existing} is not a directory; pass a directory for run directories")
    try:  # a real write (removed at once): os.access says yes to root even on a read-only mount
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as exc:
        raise RunDirError(f"runs_dir: {existing} is not writable ({exc.strerror}); pass a directory you can "
                          "write to (--runs-dir)") from None


def check_address(address: str | None, timeout: float = ADDRESS_TIMEOUT_S) -> None:
    """A cluster answers at ``address`` (HOST:PORT, ray://HOST:PORT or auto) within ``timeout``."""
    if not address:
        return
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS", "")
        current = Path(os.environ.get("TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        if not target and current.is_file():
            target = current.read_text().strip()
        if not target:
            raise ConfigError("address", "auto found no running Ray cluster on this machine; start one "
                                         "(ray start --head) or pass HOST:PORT")
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("address", f"got {address!r}, allowed: auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError("address", f"no Ray cluster answers at {target} within {timeout:g} s "
                                     f"({exc.strerror or exc}); check the address and that the head runs") from None


TRIAL_DEVICES = ("auto", "cpu", "cuda")


def check_device(device: str) -> None:
    if device not in TRIAL_DEVICES:
        raise ConfigError("trial_device", f"got {device!r}, allowed: {', '.join(TRIAL_DEVICES)}")


def preflight(space: SearchSpace, runs_dir: str | os.PathLike[str], address: str | None) -> SearchSpace:
    """Run every check; the space to launch (test_tasks 0). Raises one GsTuneError naming the field."""
    space = without_test_split(space)
    check_runs_dir(runs_dir)
    check_address(address)
    check_data(space)
    return space
