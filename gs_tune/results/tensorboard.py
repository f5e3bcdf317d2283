"""TensorBoard logging of one trial: grouped scalars plus HParams-plugin data in the same logdir.

One logdir per trial (RUN_DIR/tensorboard/<trial_id>/) holds both the scalars and
the trial's hparams session, so ``tensorboard --logdir RUN_DIR/tensorboard``
shows one run per trial in the Scalars dashboard and one row per trial in the
HParams dashboard. ``SummaryWriter.add_hparams`` would put the session into a
timestamped sub-run instead, splitting each trial in two; hence the summaries are
built here and written through the writer's own file writer.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.protobuf import struct_pb2
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

# record key -> scalar tag; the prefix before "/" is the dashboard group.
SCALAR_TAGS: dict[str, str] = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "val_ci95": "val/ci95",
    "test_loss": "test/loss",
    "test_accuracy": "test/accuracy",
    "test_ci95": "test/ci95",
    "grad_norm": "grad/first_order_norm",
    "correction_norm": "grad/correction_norm",
    "grad_cosine": "grad/cosine",
    "ahe_lambda": "grad/lambda",
    "sec_per_iter": "perf/sec_per_iter",
    "peak_memory_mb": "perf/peak_memory_mb",
}
# Metrics of the HParams dashboard; distinct tags from the val/* scalars so the dashboard shows the
# summary value rather than whatever val/accuracy happened to be last.
HPARAM_METRICS: tuple[str, ...] = ("best_val_accuracy", "final_val_accuracy", "test_accuracy")
METRIC_TAG_PREFIX = "hparams/"

_STATUS = {
    "completed": api_pb2.STATUS_SUCCESS,
    "early_stopped": api_pb2.STATUS_SUCCESS,  # stopped by ASHA on purpose, its metrics are valid
    "diverged": api_pb2.STATUS_FAILURE,
    "error": api_pb2.STATUS_FAILURE,
    "running": api_pb2.STATUS_RUNNING,
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


class TrialTensorBoard:
    """Scalars and HParams session of one trial in ``logdir``.

    The session start (the trial's hyperparameters) is written at construction, so running trials
    already appear in the HParams dashboard; :meth:`close` adds the ``hparams/*`` metrics and the
    session end. No per-trial "experiment" summary is written on purpose: TensorBoard uses the first
    one it finds in any run, which would hide parameters that trial lacks (e.g. conditional ones);
    without it TensorBoard builds the experiment from all trials' sessions (union of parameters,
    value ranges, and whether each differs between trials).
    """

    def __init__(self, logdir: str | os.PathLike[str], hparams: Mapping[str, Any], flush_secs: int = 10):
        self.logdir = Path(logdir)
        self.hparams = dict(hparams)
        # Flush often: the driver may be killed, and live dashboards should not lag minutes behind.
        self._writer = SummaryWriter(log_dir=str(self.logdir), flush_secs=flush_secs)
        self._file_writer = self._writer._get_file_writer()
        self._file_writer.add_summary(session_start_summary(self.hparams, group_name=self.logdir.name))
        self._step = 0
        self._best_val: float | None = None
        self._final_val: float | None = None
        self._test: float | None = None
        self._closed = False

    def log(self, record: Mapping[str, Any]) -> None:
        """Scalars of one trainer record at step = its ``iteration``; None values are skipped.

        A test record repeats the last validation values and a diverged record carries a placeholder
        val_accuracy; only the test and perf scalars of the one and the train scalars of the other
        are logged, so val/* holds measured validations only.
        """
        kind = record.get("kind", "val")
        step = record.get("iteration")
        self._step = int(step) if step is not None else self._step
        for key, tag in SCALAR_TAGS.items():
            value = record.get(key)
            if value is None or (kind in ("test", "diverged") and tag.startswith("val/")):
                continue
            self._writer.add_scalar(tag, float(value), self._step)
        val = record.get("val_accuracy")
        if val is not None and kind not in ("test", "diverged"):
            self._final_val = float(val)
            if math.isfinite(val) and (self._best_val is None or val > self._best_val):
                self._best_val = float(val)
        if record.get("test_accuracy") is not None:
            self._test = float(record["test_accuracy"])

    def close(self, final: Mapping[str, Any] | None = None) -> None:
        """End the session: ``final`` may give best_val_accuracy, final_val_accuracy, test_accuracy
        (else those seen by :meth:`log` are used) and ``status`` (a trial status, default completed)."""
        if self._closed:
            return
        # Also accept the metric tags themselves as keys ("hparams/best_val_accuracy").
        final = {str(k).removeprefix(METRIC_TAG_PREFIX): v for k, v in (final or {}).items()}
        seen = {"best_val_accuracy": self._best_val, "final_val_accuracy": self._final_val,
                "test_accuracy": self._test}
        for name in HPARAM_METRICS:
            value = final.get(name, seen[name])
            if value is None:
                value = seen[name]
            if value is not None:
                self._writer.add_scalar(METRIC_TAG_PREFIX + name, float(value), self._step)
        self._file_writer.add_summary(session_end_summary(str(final.get("status") or "completed")), self._step)
        self.suspend()

    def suspend(self) -> None:
        """Flush and close without ending the session (interrupted search; a resume reopens the logdir)."""
        if not self._closed:
            self._writer.flush()
            self._writer.close()
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
    argv += ["--logdir", str(Path(run_dir) / "tensorboard"), "--host", "127.0.0.1"]
    if port is not None:
        argv += ["--port", str(int(port))]
    return argv
