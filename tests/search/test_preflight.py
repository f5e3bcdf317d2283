"""gs_tune/search/preflight.py: what launch refuses before it writes anything."""

from __future__ import annotations

import socket

import pytest

from gs_tune.errors import ConfigError, DataError, RunDirError, SpaceError
from gs_tune.search.preflight import (
    check_address,
    check_data,
    check_runs_dir,
    values_of,
    without_test_split,
)
from gs_tune.search.space import parse_space

BASE = {"name": "t", "fixed": {"dataset": "digits", "algorithm": "fomaml", "test_tasks": 0},
        "search": {"inner_lr": {"loguniform": [0.1, 0.5]}}}


def _space(fixed=None, search=None):
    search = {**BASE["search"], **(search or {})}
    fixed = {k: v for k, v in {**BASE["fixed"], **(fixed or {})}.items() if k not in search}
    return parse_space({**BASE, "fixed": fixed, "search": search}, "t")


def test_values_of_fixed_searched_and_default():
    space = _space({"ways": 5}, {"query": {"int": [5, 12]}, "algorithm": {"choice": ["maml", "fomaml"]}})
    assert values_of(space, "ways") == [5]
    assert values_of(space, "query") == [5, 12]
    assert values_of(space, "algorithm") == ["maml", "fomaml"]
    assert values_of(space, "shots") == [1]  # TrainConfig's default


def test_a_search_asking_for_the_test_split_is_refused():
    with pytest.raises(SpaceError, match=r"^fixed.test_tasks: got 200, allowed: 0"):
        without_test_split(_space({"test_tasks": 200}))
    with pytest.raises(SpaceError, match=r"^search.test_tasks: a search never reads the test split"):
        without_test_split(_space(search={"test_tasks": {"int": [0, 10]}}))


def test_a_space_silent_on_test_tasks_gets_none():
    data = {**BASE, "fixed": {"dataset": "digits"}}
    space = parse_space(data, "t")
    assert without_test_split(space).fixed["test_tasks"] == 0


@pytest.mark.parametrize("fixed, search, message", [
    ({}, {"ways": {"int": [5, 21]}}, "ways: 21-way tasks need 21 classes but the val split has 20"),
    ({"shots": 5, "query": 500}, {}, "shots + query: 5 + 500 examples per class exceed"),
])
def test_task_sizes_are_checked_against_every_split_for_every_sampled_value(fixed, search, message):
    with pytest.raises(DataError) as info:
        check_data(_space(fixed, search))
    assert str(info.value).startswith(message)


def test_a_missing_data_root_is_refused(tmp_path):
    with pytest.raises(DataError, match="data_root: .*missing is not a directory"):
        check_data(_space({"dataset": "mnist", "data_root": str(tmp_path / "missing")}))


def test_runs_dir_under_a_file_or_unwritable_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is not a directory"):
        check_runs_dir(tmp_path / "file" / "runs")
    with pytest.raises(RunDirError, match="is not writable"):
        check_runs_dir("/proc/gs-tune-runs")
    check_runs_dir(tmp_path / "new" / "runs")
    assert not (tmp_path / "new").exists()  # checking wrote nothing


def test_an_address_nobody_answers_is_refused_quickly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: the connection is refused at once
        with pytest.raises(ConfigError, match=f"^address: no Ray cluster answers at 127.0.0.1:{port}"):
            check_address(f"127.0.0.1:{port}", timeout=5)
    with pytest.raises(ConfigError, match="^address: got 'nohost', allowed: auto, HOST:PORT"):
        check_address("nohost")
