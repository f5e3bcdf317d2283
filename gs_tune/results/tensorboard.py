"""TensorBoard logging of one trial: grouped scalars plus HParams-plugin data in the same logdir.

One logdir per trial (RUN_DIR/tensorboard/<trial_id>/) holds both the scalars and
the trial's hparams session, so ``tensorboard --logdir RUN_DIR/tensorboard``
shows one run per trial in the Scalars dashboard and one row per trial in the
HParams dashboard. ``SummaryWriter.add_hparams`` would put the session into a
timestamped sub-run instead, splitting each trial in two; hence the summaries are
built here. Events are written by :class:`_EventFile` rather than torch's SummaryWriter: one
write(2) per logged record and no thread per trial, so the search's driver pays little per
report and a killed driver loses nothing it had logged.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import socket
import struct
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import struct_pb2
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from gs_tune.results._values import record_kind
from gs_tune.rundir import COMPLETED, DIVERGED, EARLY_STOPPED, ERROR, RUNNING, TENSORBOARD_DIR

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

    from gs_tune.records import Record

# record field (gs_tune/records.py) -> scalar tag; the prefix before "/" is the dashboard group.
TRAIN_TAGS: dict[str, str] = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "grad_norm": "grad/first_order_norm",
    "correction_norm": "grad/correction_norm",
    "grad_cosine": "grad/cosine",
    "ahe_lambda": "grad/lambda",
}
VAL_TAGS: dict[str, str] = {"val_loss": "val/loss", "val_accuracy": "val/accuracy", "val_ci95": "val/ci95"}
TEST_TAGS: dict[str, str] = {"test_loss": "test/loss", "test_accuracy": "test/accuracy", "test_ci95": "test/ci95"}
PERF_TAGS: dict[str, str] = {"sec_per_iter": "perf/sec_per_iter", "peak_memory_mb": "perf/peak_memory_mb"}
SCALAR_TAGS: dict[str, str] = {**TRAIN_TAGS, **VAL_TAGS, **TEST_TAGS, **PERF_TAGS}
# Metrics of the HParams dashboard; distinct tags from the val/* scalars so the dashboard shows the
# summary value rather than whatever val/accuracy happened to be last. test_accuracy only outside a
# search (`gs-tune train --tensorboard`): a search never evaluates the test split.
HPARAM_METRICS: tuple[str, ...] = ("best_val_accuracy", "final_val_accuracy", "test_accuracy")
METRIC_TAG_PREFIX = "hparams/"

_STATUS = {
    RUNNING: api_pb2.STATUS_RUNNING,
    COMPLETED: api_pb2.STATUS_SUCCESS,
    EARLY_STOPPED: api_pb2.STATUS_SUCCESS,  # stopped by ASHA on purpose, its metrics are valid
    DIVERGED: api_pb2.STATUS_FAILURE,
    ERROR: api_pb2.STATUS_FAILURE,
}


def _hparam_value(value: Any) -> struct_pb2.Value | None:
    """A parameter as a protobuf Value: numbers, strings, bools; anything else as its text; None dropped."""
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()
    if value is None:
        return None
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, (int, float)):
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=value if isinstance(value, str) else str(value))


def _plugin_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    data.version = metadata.PLUGIN_DATA_VERSION
    smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=smd)])


def session_start_summary(hparams: Mapping[str, Any], group_name: str = "") -> Summary:
    info = plugin_data_pb2.SessionStartInfo(group_name=group_name, start_time_secs=time.time())
    for name, value in hparams.items():
        pb = _hparam_value(value)
        if pb is not None:
            info.hparams[str(name)].CopyFrom(pb)
    return _plugin_summary(metadata.SESSION_START_INFO_TAG,
                           plugin_data_pb2.HParamsPluginData(session_start_info=info))


def session_end_summary(status: str) -> Summary:
    info = plugin_data_pb2.SessionEndInfo(status=_STATUS.get(status, api_pb2.STATUS_UNKNOWN),
                                          end_time_secs=time.time())
    return _plugin_summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=info))


def _crc32c_tables() -> tuple[list[int], ...]:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) lookup tables for 8 bytes at a time."""
    first = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        first.append(crc)
    tables = [first]
    for _ in range(7):
        tables.append([(c >> 8) ^ first[c & 0xFF] for c in tables[-1]])
    return tuple(tables)


_T0, _T1, _T2, _T3, _T4, _T5, _T6, _T7 = _crc32c_tables()


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C of TFRecord framing. TensorBoard's own is pure Python too, a byte at a
    time; eight at a time here, which halves the driver's cost of logging a report."""
    crc = 0xFFFFFFFF
    whole = len(data) & ~7
    for (word,) in struct.iter_unpack("<Q", memoryview(data)[:whole]):
        x = word ^ crc
        crc = (_T7[x & 0xFF] ^ _T6[(x >> 8) & 0xFF] ^ _T5[(x >> 16) & 0xFF] ^ _T4[(x >> 24) & 0xFF]
               ^ _T3[(x >> 32) & 0xFF] ^ _T2[(x >> 40) & 0xFF] ^ _T1[(x >> 48) & 0xFF] ^ _T0[x >> 56])
    for byte in data[whole:]:
        crc = _T0[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _EventFile:
    """One TensorBoard event file in TFRecord framing (length, its CRC, data, its CRC), as
    TensorBoard reads it, written synchronously."""

    _uid = itertools.count()

    def __init__(self, logdir: Path):
        logdir.mkdir(parents=True, exist_ok=True)
        # TensorBoard finds files by "tfevents" in the name; the rest only has to be unique.
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(self._uid)}"
        self._file = open(logdir / name, "wb")  # noqa: SIM115 - closed by close()
        self.write(Event(wall_time=time.time(), file_version="brain.Event:2"))
        self.flush()

    def write(self, event: Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)) + data
                         + struct.pack("<I", masked_crc32c(data)))

    def summary(self, summary: Summary, step: int) -> None:
        self.write(Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        self._file.flush()  # one write(2) for everything since the last flush

    def close(self) -> None:
        self._file.close()


class TrialTensorBoard:
    """Scalars and HParams session of one trial in ``logdir``.

    The session start (the trial's hyperparameters) is written at construction, so running trials
    already appear in the HParams dashboard; :meth:`close` adds the ``hparams/*`` metrics and the
    session end. No per-trial "experiment" summary is written on purpose: TensorBoard uses the first
    one it finds in any run, which would hide parameters that trial lacks (e.g. conditional ones);
    without it TensorBoard builds the experiment from all trials' sessions (union of parameters,
    value ranges, and whether each differs between trials). ``test=False`` (a search's trials)
    leaves out test/* scalars and the hparams/test_accuracy metric, whatever the records carry.
    """

    def __init__(self, logdir: str | os.PathLike[str], hparams: Mapping[str, Any], *, test: bool = True):
        self.logdir = Path(logdir)
        self.hparams = dict(hparams)
        self._test = test
        self._file = _EventFile(self.logdir)
        self._file.summary(session_start_summary(self.hparams, group_name=self.logdir.name), 0)
        self._file.flush()
        self._step = 0
        self._best_val: float | None = None
        self._final_val: float | None = None
        self._test_acc: float | None = None
        self._closed = False

    def log(self, record: Mapping[str, Any]) -> None:
        """Scalars of one record as the search reports it (gs_tune/records.py); None values are skipped.

        train/ and grad/ come from the record's ``train_log`` points, each at its own iteration
        (every ``log_every`` iterations), or from the record's own averages at its iteration when it
        has no train_log (a diverged record). val/ comes from val records only: a diverged record's
        val_accuracy is the searcher's placeholder, not a measurement. test/ (unless ``test=False``)
        and perf/ come from whichever record carries them.
        """
        kind = record_kind(record, self.logdir.name)
        if record.get("iteration") is not None:
            self._step = int(record["iteration"])
        steps: dict[int, list[Summary.Value]] = {}
        points = record.get("train_log")
        for point in points if points else [record]:
            self._values(steps, point, TRAIN_TAGS, int(point.get("iteration", self._step)))
        if kind == "val":
            self._values(steps, record, VAL_TAGS, self._step)
            val = record.get("val_accuracy")
            if val is not None:
                self._final_val = float(val)
                if math.isfinite(val) and (self._best_val is None or val > self._best_val):
                    self._best_val = float(val)
        self._values(steps, record, {**TEST_TAGS, **PERF_TAGS} if self._test else PERF_TAGS, self._step)
        if self._test and record.get("test_accuracy") is not None:
            self._test_acc = float(record["test_accuracy"])
        for step, values in steps.items():  # one event per step, all its tags in it
            self._file.summary(Summary(value=values), step)
        self._file.flush()

    @staticmethod
    def _values(steps: dict[int, list[Summary.Value]], values: Mapping[str, Any], tags: Mapping[str, str],
                step: int) -> None:
        for key, tag in tags.items():
            value = values.get(key)
            if value is not None:
                steps.setdefault(step, []).append(Summary.Value(tag=tag, simple_value=float(value)))

    def close(self, final: Mapping[str, Any] | None = None) -> None:
        """End the session: ``final`` may give best_val_accuracy, final_val_accuracy, test_accuracy
        (else those seen by :meth:`log` are used) and ``status`` (a trial status, default completed)."""
        if self._closed:
            return
        # Also accept the metric tags themselves as keys ("hparams/best_val_accuracy").
        final = {str(k).removeprefix(METRIC_TAG_PREFIX): v for k, v in (final or {}).items()}
        seen = {"best_val_accuracy": self._best_val, "final_val_accuracy": self._final_val,
                "test_accuracy": self._test_acc}
        values = []
        for name in HPARAM_METRICS:
            if name.startswith("test_") and not self._test:
                continue
            value = final.get(name, seen[name])
            if value is None:
                value = seen[name]
            if value is not None:
                values.append(Summary.Value(tag=METRIC_TAG_PREFIX + name, simple_value=float(value)))
        if values:
            self._file.summary(Summary(value=values), self._step)
        self._file.summary(session_end_summary(str(final.get("status") or COMPLETED)), self._step)
        self.suspend()

    def suspend(self) -> None:
        """Flush and close without ending the session (interrupted search; a resume reopens the logdir)."""
        if not self._closed:
            self._file.flush()
            self._file.close()
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.suspend()


def start_tensorboard_command(run_dir: str | os.PathLike[str], port: int | None = None) -> list[str]:
    """argv of ``tensorboard --logdir RUN_DIR/tensorboard --host 127.0.0.1`` (the CLI runs it).

    Prefers the tensorboard script of this interpreter's environment, which PATH may not contain
    when the CLI was started as ``.venv/bin/gs-tune`` without activating the venv.
    """
    local = Path(sys.executable).with_name("tensorboard")
    exe = str(local) if local.exists() else shutil.which("tensorboard")
    argv = [exe] if exe else [sys.executable, "-m", "tensorboard.main"]
    argv += ["--logdir", str(Path(run_dir) / TENSORBOARD_DIR), "--host", "127.0.0.1"]
    if port is not None:
        argv += ["--port", str(int(port))]
    return argv


def log_records(records: Iterator[Record], logdir: str | os.PathLike[str],
                hparams: Mapping[str, Any]) -> Iterator[Record]:
    """Pass the trainer's records through, writing each to TensorBoard under ``logdir`` (a
    standalone ``gs-tune train --tensorboard``); the session stays open if the consumer stops early."""
    board = TrialTensorBoard(logdir, hparams)
    status = COMPLETED
    try:
        for record in records:
            board.log(record)
            status = DIVERGED if record.get("kind") == "diverged" else status
            yield record
    except GeneratorExit:
        board.suspend()
        raise
    board.close({"status": status})
