"""TensorBoard: grouped scalar tags and HParams session data in one logdir per trial."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from results_helpers import FIXED, val_record
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata

from gs_tune import records
from gs_tune.results.tables import ResultsWriter
from gs_tune.results.tensorboard import SCALAR_TAGS, TrialTensorBoard, start_tensorboard_command

TRAINING_TAGS = {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "val/ci95",
                 "grad/first_order_norm", "grad/correction_norm", "grad/cosine", "grad/lambda",
                 "perf/sec_per_iter"}


def _load(logdir: Path) -> EventAccumulator:
    ea = EventAccumulator(str(logdir))
    ea.Reload()
    return ea


def _session(ea: EventAccumulator) -> tuple[dict[str, object], int]:
    content = ea.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    values = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind)
    return values, end.status


def test_results_writer_logs_every_trial(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path, tensorboard=True)
    for tid, w_cos, status in (("a", 0.1, "completed"), ("b", 0.5, "diverged")):
        params = {**FIXED, "w_cos": w_cos, "algorithm": "ahe"}
        writer.on_report(tid, val_record(100, 0.4, 0.1), params)
        # test values a search should never send: its TensorBoard leaves them out all the same
        writer.on_report(tid, val_record(200, 0.6, 0.1, test_accuracy=0.55, test_ci95=0.01), params)
        writer.on_trial_end(tid, status)
    for tid, w_cos, status in (("a", 0.1, api_pb2.STATUS_SUCCESS), ("b", 0.5, api_pb2.STATUS_FAILURE)):
        logdir = tmp_path / "tensorboard" / tid
        assert [p for p in logdir.iterdir() if p.is_dir()] == []  # no add_hparams-style sub-run
        ea = _load(logdir)
        tags = set(ea.Tags()["scalars"])
        assert TRAINING_TAGS <= tags
        assert {"hparams/best_val_accuracy", "hparams/final_val_accuracy"} <= tags
        assert not {t for t in tags if "test" in t}  # no test/* scalars, no hparams/test_accuracy
        assert [e.step for e in ea.Scalars("val/accuracy")] == [100, 200]
        assert ea.Scalars("hparams/best_val_accuracy")[-1].value == pytest.approx(0.6)
        hparams, end_status = _session(ea)
        assert hparams["w_cos"] == pytest.approx(w_cos) and hparams["algorithm"] == "ahe"
        assert "ahe_clip" not in hparams  # None: left out rather than written as a fake value
        assert end_status == status


def test_trial_tensorboard_direct_use(tmp_path: Path) -> None:
    hparams = {"inner_lr": np.float32(0.25), "inner_steps": np.int64(3), "algorithm": "maml",
               "vmap": True, "schedule": [1, 2], "ahe_clip": None}
    with TrialTensorBoard(tmp_path / "run", hparams) as board:
        board.log(val_record(10, 0.5, 0.2))
        board.log(val_record(20, 0.7, 0.2))
        board.log(val_record(30, 0.6, 0.2))
        board.log({"kind": "diverged", "iteration": 35, "train_loss": math.nan, "val_accuracy": 0.0})
        # the CLI passes the metric tags as keys; None (no test set) must be skipped
        board.close({"hparams/test_accuracy": None, "status": "diverged"})
    ea = _load(tmp_path / "run")
    assert ea.Scalars("hparams/best_val_accuracy")[-1].value == pytest.approx(0.7)
    assert ea.Scalars("hparams/final_val_accuracy")[-1].value == pytest.approx(0.6)
    assert "hparams/test_accuracy" not in ea.Tags()["scalars"]
    assert [e.step for e in ea.Scalars("val/accuracy")] == [10, 20, 30]
    assert math.isnan(ea.Scalars("train/loss")[-1].value)
    values, status = _session(ea)
    assert values == {"inner_lr": pytest.approx(0.25), "inner_steps": 3.0, "algorithm": "maml",
                      "vmap": True, "schedule": "[1, 2]"}
    assert status == api_pb2.STATUS_FAILURE


def _point(iteration: int, loss: float) -> dict[str, float]:
    return {"iteration": iteration, "train_loss": loss, "train_accuracy": 0.5, "grad_norm": 1.0,
            "correction_norm": 0.1 * iteration, "grad_cosine": 0.2, "ahe_lambda": 1.0}


def test_train_log_gives_train_and_grad_scalars_at_every_point(tmp_path: Path) -> None:
    with TrialTensorBoard(tmp_path / "run", {}) as board:
        board.log(val_record(20, 0.5, 0.2, train_log=[_point(10, 1.5), _point(20, 1.2)]))
        board.log(val_record(40, 0.6, 0.2, train_log=[_point(30, 1.1), _point(40, 1.0)]))
        board.log({"kind": "test", "iteration": 40, "test_accuracy": 0.55, "test_loss": 1.0, "test_ci95": 0.01})
    ea = _load(tmp_path / "run")
    # every log_every iterations, not only at validations, and the points' values, not the record's
    assert [(e.step, round(e.value, 6)) for e in ea.Scalars("train/loss")] == [(10, 1.5), (20, 1.2), (30, 1.1),
                                                                              (40, 1.0)]
    assert [e.step for e in ea.Scalars("grad/correction_norm")] == [10, 20, 30, 40]
    assert ea.Scalars("grad/correction_norm")[-1].value == pytest.approx(4.0)
    assert [e.step for e in ea.Scalars("val/accuracy")] == [20, 40]
    assert [e.step for e in ea.Scalars("test/accuracy")] == [40]


def test_every_record_field_has_a_tag() -> None:
    assert set(SCALAR_TAGS) >= {*records.TRAIN_FIELDS, *records.VAL_FIELDS, *records.TEST_FIELDS}
    assert len(set(SCALAR_TAGS.values())) == len(SCALAR_TAGS)


def test_suspended_session_has_no_end(tmp_path: Path) -> None:
    board = TrialTensorBoard(tmp_path / "run", {"w_cos": 0.1})
    board.log(val_record(10, 0.5, 0.2))
    board.suspend()
    content = _load(tmp_path / "run").PluginTagToContent(metadata.PLUGIN_NAME)
    assert set(content) == {metadata.SESSION_START_INFO_TAG}


def test_start_tensorboard_command(tmp_path: Path) -> None:
    argv = start_tensorboard_command(tmp_path)
    assert argv[-4:] == ["--logdir", str(tmp_path / "tensorboard"), "--host", "127.0.0.1"]
    assert Path(argv[0]).name == "tensorboard" or argv[1:3] == ["-m", "tensorboard.main"]
    assert start_tensorboard_command(tmp_path, port=6007)[-2:] == ["--port", "6007"]


def test_logged_scalars_are_on_disk_before_close(tmp_path: Path) -> None:
    # each log() is one write: a driver killed before closing the board keeps what it logged
    board = TrialTensorBoard(tmp_path / "run", {"w_cos": 0.1})
    board.log(val_record(10, 0.5, 0.2))
    board.log(val_record(20, 0.6, 0.2))
    assert [e.step for e in _load(tmp_path / "run").Scalars("val/accuracy")] == [10, 20]
    board.suspend()


def test_masked_crc32c_is_tensorboards() -> None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as reference

    from gs_tune.results.tensorboard import masked_crc32c

    rng = np.random.default_rng(0)
    for length in [*range(20), 63, 64, 65, 150, 1000]:
        data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        assert masked_crc32c(data) == reference(data), length
    assert masked_crc32c(b"123456789") == reference(b"123456789")
