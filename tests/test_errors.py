"""gs_tune/errors.py: every error survives a pickle round trip with its message and fields
(Ray sends a trial's exception to the driver pickled)."""

from __future__ import annotations

import pickle

import pytest

from gs_tune.errors import CheckpointError, ConfigError, DataError, GsTuneError, RunDirError, SpaceError

CASES = [
    ConfigError("device", "cuda was asked for but torch sees no CUDA device"),
    SpaceError("search.w_cos.loguniform", "low must be > 0"),
    DataError("ways: 30-way tasks need 30 classes"),
    RunDirError("run_dir: /x has no run.json"),
    CheckpointError("checkpoint: /x/checkpoint.pt holds objects other than tensors"),
]


@pytest.mark.parametrize("error", CASES, ids=lambda e: type(e).__name__)
def test_pickle_round_trip_keeps_type_and_message(error):
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert isinstance(back, GsTuneError)


def test_fields_survive_too():
    back = pickle.loads(pickle.dumps(CASES[0]))
    assert (back.field, back.message) == ("device", "cuda was asked for but torch sees no CUDA device")
    assert pickle.loads(pickle.dumps(CASES[1])).path == "search.w_cos.loguniform"
    assert str(CASES[0]) == "device: cuda was asked for but torch sees no CUDA device"
