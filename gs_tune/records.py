"""The records :func:`gs_tune.train` yields: one shape shared by every consumer.

The trainer yields plain records of three kinds and nothing else:

* ``val``      every ``val_every`` meta-iterations and at the last one: training averages since
               the previous validation, the validation score, run facts (device, peak memory) and
               ``train_log``, the training statistics averaged over every ``log_every`` iterations
               (so a dashboard can follow them more finely than validations come).
* ``test``     once, after the last iteration, when ``test_tasks`` > 0: the test score only.
* ``diverged`` when the training loss stops being finite; the run ends there.

Adapters (the Ray trial, the Parquet tables, TensorBoard) read these names from here, so a
field is added in one place. How a scheduler wants records merged is the adapter's business.
"""

from __future__ import annotations

from typing import Literal, TypedDict

RecordKind = Literal["val", "test", "diverged"]
KINDS: tuple[str, ...] = ("val", "test", "diverged")

# Per-iteration statistics of the meta-gradient, under their record names.
TRAIN_FIELDS: tuple[str, ...] = (
    "train_loss", "train_accuracy", "grad_norm", "correction_norm", "grad_cosine", "ahe_lambda",
)
VAL_FIELDS: tuple[str, ...] = ("val_loss", "val_accuracy", "val_ci95")
TEST_FIELDS: tuple[str, ...] = ("test_loss", "test_accuracy", "test_ci95")
# Facts about the run so far, carried by every val record.
RUN_FIELDS: tuple[str, ...] = ("elapsed_s", "sec_per_iter", "peak_memory_mb")


class TrainPoint(TypedDict, total=False):
    """Training statistics averaged over the ``log_every`` iterations ending at ``iteration``."""

    iteration: int
    train_loss: float
    train_accuracy: float
    grad_norm: float
    correction_norm: float
    grad_cosine: float
    ahe_lambda: float


class Record(TrainPoint, total=False):
    """One record; which keys are present depends on ``kind`` (module docstring). A val record
    carries the training statistics (TrainPoint's fields) averaged since the last validation."""

    kind: RecordKind
    elapsed_s: float
    sec_per_iter: float
    peak_memory_mb: float
    device: str
    val_loss: float
    val_accuracy: float
    val_ci95: float
    test_loss: float
    test_accuracy: float
    test_ci95: float
    train_log: list[TrainPoint]
    checkpoint: str | None
    """Path of the checkpoint written at this record's iteration, or None."""
