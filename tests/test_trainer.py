"""The trainer: records, reproducibility, checkpoint/resume, λ schedules, divergence, result.json.

Runs use the embedded digits dataset, loaded once per module, and a small MLP
so that each takes about a second; one test trains Conv-4 for real and checks
that it learns.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gs_tune import trainer
from gs_tune.config import train_config
from gs_tune.data import load_dataset
from gs_tune.errors import CheckpointError, ConfigError
from gs_tune.models import build_model as trainer_build
from gs_tune.models import input_memory_format
from gs_tune.records import RUN_FIELDS, TEST_FIELDS, TRAIN_FIELDS, VAL_FIELDS
from gs_tune.trainer import CHECKPOINT_NAME, ahe_lambda, train

SMALL = {
    "dataset": "digits", "model": "mlp", "filters": 8, "iterations": 20, "val_every": 10, "val_tasks": 10,
    "test_tasks": 20, "algorithm": "ahe", "w_cos": 0.1, "seed": 0, "log_every": 5,
}
VAL_KEYS = {"kind", "iteration", *RUN_FIELDS, "device", *TRAIN_FIELDS, *VAL_FIELDS, "train_log", "checkpoint"}
TEST_KEYS = {"kind", "iteration", *TEST_FIELDS}
DIVERGED_KEYS = {"kind", "iteration", "elapsed_s", "sec_per_iter", "train_loss"}
# Wall-clock and memory measurements differ from run to run; everything else must not.
TIMING = {"elapsed_s", "sec_per_iter", "peak_memory_mb", "checkpoint"}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine OpenMP's spinning barrier made two threads
    up to 10× slower here; results are compared within one thread count, never across."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def baseline(digits):
    """The uninterrupted SMALL run that other tests compare with."""
    before = torch.get_num_threads()  # module fixtures run outside one_thread; comparisons need the same count
    torch.set_num_threads(1)
    try:
        return list(train(train_config(SMALL), dataset=digits))
    finally:
        torch.set_num_threads(before)


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


def test_records_have_the_documented_keys_and_kinds(baseline):
    assert [r["kind"] for r in baseline] == ["val", "val", "test"]
    assert [r["iteration"] for r in baseline] == [10, 20, 20]
    for record in baseline[:2]:
        assert set(record) == VAL_KEYS
        assert record["checkpoint"] is None  # neither cfg.out nor checkpoint_dir
        assert record["ahe_lambda"] == 1.0
        for k in VAL_KEYS - {"kind", "iteration", "checkpoint", "device", "train_log"}:
            assert isinstance(record[k], float) and math.isfinite(record[k]), k
        assert record["device"] == "cpu" and record["peak_memory_mb"] > 0
        for k in ("train_accuracy", "val_accuracy"):
            assert 0.0 <= record[k] <= 1.0, k
        assert record["correction_norm"] > 0  # ahe with w_cos > 0 corrects
        assert record["sec_per_iter"] > 0
    test = baseline[-1]
    assert set(test) == TEST_KEYS  # plain: no validation echoed (that is the Ray adapter's business)
    assert 0.0 <= test["test_accuracy"] <= 1.0
    assert test["test_ci95"] > 0


def test_train_log_averages_every_log_every_iterations(baseline):
    """Two points per 10-iteration validation window (log_every 5), each the mean of its own 5
    iterations: together they average to the validation record's window mean."""
    for record in baseline[:2]:
        points = record["train_log"]
        assert [p["iteration"] for p in points] == [record["iteration"] - 5, record["iteration"]]
        for key in ("train_loss", "grad_norm", "correction_norm"):
            assert (points[0][key] + points[1][key]) / 2 == pytest.approx(record[key], rel=1e-12), key
        assert points[1]["ahe_lambda"] == record["ahe_lambda"]


def test_no_test_record_without_test_tasks_or_out(digits):
    records = list(train(train_config(SMALL, iterations=4, val_every=2, test_tasks=0), dataset=digits))
    assert [(r["kind"], r["iteration"]) for r in records] == [("val", 2), ("val", 4)]


def test_validates_at_the_last_iteration_too(digits):
    records = list(train(train_config(SMALL, iterations=7, val_every=3, test_tasks=0), dataset=digits))
    assert [r["iteration"] for r in records] == [3, 6, 7]


def test_same_seed_reproduces_and_another_seed_differs(baseline, digits):
    again = list(train(train_config(SMALL), dataset=digits))
    assert [comparable(r) for r in again] == [comparable(r) for r in baseline]

    other = list(train(train_config(SMALL, seed=1), dataset=digits))
    assert other[0]["train_loss"] != baseline[0]["train_loss"]
    assert other[0]["val_loss"] != baseline[0]["val_loss"]
    assert other[-1]["test_loss"] != baseline[-1]["test_loss"]


def test_resume_from_a_validation_checkpoint_equals_an_uninterrupted_run(baseline, digits, tmp_path):
    cfg = train_config(SMALL)
    interrupted = train(cfg, dataset=digits, checkpoint_dir=tmp_path)
    first = next(interrupted)
    interrupted.close()  # stop after iteration 10, as a killed trial would
    assert first["iteration"] == 10
    assert first["checkpoint"] == str(tmp_path / CHECKPOINT_NAME)
    assert comparable(first) == comparable(baseline[0])

    resumed = list(train(cfg, dataset=digits, resume_from=tmp_path))
    assert [r["kind"] for r in resumed] == ["val", "test"]
    assert [comparable(r) for r in resumed] == [comparable(r) for r in baseline[1:]]


def _resume_from_iteration_15(digits, tmp_path, monkeypatch):
    """Checkpoint every 5 iterations, validate every 10, resume from the copy written at 15."""
    saved = tmp_path / "at15.pt"
    real_save = trainer.save_checkpoint

    def save_and_copy(path: Path, state: dict) -> None:
        real_save(path, state)
        if state["iteration"] == 15:
            shutil.copy(path, saved)

    cfg = train_config(SMALL, checkpoint_every=5)
    with monkeypatch.context() as m:
        m.setattr(trainer, "save_checkpoint", save_and_copy)
        list(train(cfg, dataset=digits, checkpoint_dir=tmp_path / "run"))
    assert saved.exists()
    return list(train(cfg, dataset=digits, resume_from=saved))


def test_resume_between_validations_keeps_the_validation_metrics(baseline, digits, tmp_path, monkeypatch):
    resumed = _resume_from_iteration_15(digits, tmp_path, monkeypatch)
    assert [r["kind"] for r in resumed] == ["val", "test"]
    for key in ("val_loss", "val_accuracy", "val_ci95", "ahe_lambda", "iteration", "train_log"):
        assert resumed[0][key] == baseline[1][key], key
    for key in ("test_loss", "test_accuracy", "test_ci95", "iteration"):
        assert resumed[1][key] == baseline[2][key], key


def test_resume_between_validations_keeps_the_training_averages(baseline, digits, tmp_path, monkeypatch):
    resumed = _resume_from_iteration_15(digits, tmp_path, monkeypatch)
    for key in ("train_loss", "train_accuracy", "grad_norm", "correction_norm", "grad_cosine"):
        assert resumed[0][key] == baseline[1][key], key


def test_ahe_lambda_schedules():
    def values(schedule: str, **kw) -> list[float]:
        cfg = train_config(iterations=100, ahe_scale=2.0, ahe_schedule=schedule, **kw)
        return [ahe_lambda(cfg, i) for i in range(100)]

    assert values("constant") == [2.0] * 100

    warm = values("linear_warmup", ahe_warmup=0.2)  # 0 → λ₀ over the first 20 iterations, then flat
    assert warm[0] == 0.0
    assert warm[10] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(warm[:21]))
    assert warm[20:] == [2.0] * 80

    decay = values("linear_decay")  # λ₀·(1 − t)
    assert decay[0] == 2.0 and decay[50] == pytest.approx(1.0) and decay[99] == pytest.approx(0.02)
    assert all(a > b for a, b in itertools.pairwise(decay))

    cos = values("cosine")  # λ₀·(1 + cos πt)/2
    assert cos[0] == 2.0 and cos[50] == pytest.approx(1.0)
    assert cos[99] == pytest.approx(1.0 + math.cos(0.99 * math.pi))
    assert all(a > b for a, b in itertools.pairwise(cos))
    assert cos[25] == pytest.approx(1.0 + math.sqrt(0.5))

    step = values("step", ahe_step_every=0.3, ahe_step_gamma=0.5)  # ×0.5 at t = 0.3, 0.6, 0.9
    assert step[:30] == [2.0] * 30
    assert step[30:60] == pytest.approx([1.0] * 30)
    assert step[60:90] == pytest.approx([0.5] * 30)
    assert step[90:] == pytest.approx([0.25] * 10)

    # every schedule stays within [0, λ₀]
    for schedule in ("constant", "linear_warmup", "linear_decay", "cosine", "step"):
        assert all(0.0 <= v <= 2.0 for v in values(schedule))


def test_records_report_the_scheduled_lambda(digits):
    cfg = train_config(SMALL, algorithm="fomaml", iterations=8, val_every=2, test_tasks=0,
                       ahe_schedule="linear_decay", ahe_scale=0.5)
    records = list(train(cfg, dataset=digits))
    assert [r["ahe_lambda"] for r in records] == [ahe_lambda(cfg, r["iteration"] - 1) for r in records]
    assert [r["ahe_lambda"] for r in records] == pytest.approx([0.5 * (1 - i / 8) for i in (1, 3, 5, 7)])


def test_non_finite_loss_ends_the_run_with_a_diverged_record(digits, tmp_path):
    # An inner step of 1e30 overflows float32 at once. (inner_lr or outer_lr of 1e6 only makes the loss
    # ~1e10-1e13 here: batch norm keeps the activations finite.)
    cfg = train_config(SMALL, inner_lr=1e30)
    records = list(train(cfg, dataset=digits, out=tmp_path / "run"))
    assert len(records) == 1
    record = records[0]
    assert record["kind"] == "diverged"
    assert set(record) == DIVERGED_KEYS  # no placeholder val_accuracy: that is the searcher's adapter
    assert record["iteration"] == 1
    assert not math.isfinite(record["train_loss"])
    assert not (tmp_path / "run" / "result.json").exists()


@pytest.mark.parametrize("how", ["diverged", "stopped early", "finished"])
def test_the_progress_bar_is_closed_on_every_exit_path(digits, monkeypatch, how):
    closed = []
    from tqdm import auto

    class Bar(auto.tqdm):
        def close(self):
            closed.append(True)
            super().close()

    monkeypatch.setattr(auto, "tqdm", Bar)
    cfg = train_config(SMALL, iterations=4, val_every=2, test_tasks=0,
                       inner_lr=1e30 if how == "diverged" else 0.4)
    records = train(cfg, dataset=digits, progress=True)
    if how == "stopped early":
        next(records)
        records.close()
    else:
        list(records)
    assert closed, how


def test_result_json_and_checkpoint_in_out(baseline, digits, tmp_path):
    out = tmp_path / "run"
    cfg = train_config(SMALL)
    records = list(train(cfg, dataset=digits, out=out))
    final = records[-1]
    assert final["kind"] == "test"
    assert [r["checkpoint"] for r in records[:2]] == [str(out / CHECKPOINT_NAME)] * 2
    assert (out / CHECKPOINT_NAME).exists()
    assert [comparable(r) for r in records] == [comparable(r) for r in baseline]  # files change no number

    result = json.loads((out / "result.json").read_text())
    assert result["config"] == cfg.as_dict()
    assert result["test_accuracy"] == final["test_accuracy"]
    assert result["test_ci95"] == final["test_ci95"]
    assert result["val_accuracy"] == records[1]["val_accuracy"]
    assert "kind" not in result and "train_log" not in result
    assert not list(out.glob(".*tmp*"))  # atomic writes leave no temporary files

    state = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert state["iteration"] == 20
    assert state["config"] == cfg.as_dict()


def test_conv4_learns_digits(digits):
    """5-way 1-shot Conv-4 on digits beats chance (0.2) clearly after 150 meta-iterations.

    5 queries per class instead of 15 make it 3-4× faster; measured test accuracy
    0.47-0.49 over seeds 0-2 (about 20 s on a loaded 2-core machine).
    """
    cfg = train_config(
        dataset="digits", model="conv4", filters=32, ways=5, shots=1, query=5, iterations=150, meta_batch=4,
        inner_lr=0.4, algorithm="fomaml", val_every=150, val_tasks=50, test_tasks=100, seed=0,
    )
    records = list(train(cfg, dataset=digits))
    final = records[-1]
    assert final["kind"] == "test"
    assert final["test_accuracy"] >= 0.35, final
    assert records[-2]["val_accuracy"] >= 0.35, records[-2]


def test_train_val_meta_training_draws_val_classes_too(digits, monkeypatch):
    drawn = []  # (tasks drawn, classes of the sampler) per draw
    original = trainer.TaskSampler.sample

    def spy(self, num_tasks, rng):
        drawn.append((num_tasks, len(self._by_class)))
        return original(self, num_tasks, rng)

    monkeypatch.setattr(trainer.TaskSampler, "sample", spy)
    cfg = train_config(SMALL, iterations=2, val_every=2, test_tasks=0, meta_train_splits="train+val")
    list(train(cfg, dataset=digits))
    assert cfg.meta_batch != cfg.val_tasks
    assert drawn.count((cfg.val_tasks, digits.val.num_classes)) == 1
    assert drawn.count((cfg.meta_batch, digits.train.num_classes + digits.val.num_classes)) == 2
    with pytest.raises(ConfigError, match="meta_train_splits"):
        train_config(SMALL, meta_train_splits="val")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this ran while loading",))


def test_a_tampered_checkpoint_is_refused(baseline, digits, tmp_path):
    cfg = train_config(SMALL)
    list(train(cfg, dataset=digits, checkpoint_dir=tmp_path, out=None))
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    state["payload"] = _RunsCode()
    torch.save(state, tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="holds more than tensors and plain values, refused"):
        next(train(cfg, dataset=digits, resume_from=tmp_path))


def test_a_truncated_checkpoint_is_one_error(digits, tmp_path):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"PK\x03\x04 not a whole file")
    with pytest.raises(CheckpointError, match="cannot be read"):
        next(train(train_config(SMALL), dataset=digits, resume_from=tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_device_names_cuda_visible_devices_and_the_build(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError) as info:
        train(train_config(SMALL), device="cuda")
    message = str(info.value)
    assert message.startswith("device: cuda was asked for but torch sees no CUDA device")
    assert "CUDA_VISIBLE_DEVICES=0" in message and f"torch {torch.__version__}" in message


def test_resuming_a_finished_run_says_its_last_validation_again(baseline, digits, tmp_path):
    cfg = train_config(SMALL)
    list(train(cfg, dataset=digits, checkpoint_dir=tmp_path))
    again = list(train(cfg, dataset=digits, resume_from=tmp_path))
    assert [r["kind"] for r in again] == ["val", "test"]
    assert [comparable(r) for r in again] == [comparable(r) for r in baseline[1:]]


def test_non_transductive_evaluation_scores_each_query_on_its_own(digits):
    """eval_batch_norm=support: a query example's score does not depend on the rest of the query
    set, so the accuracy differs from the transductive one (same model, same tasks)."""
    base = train_config(SMALL, iterations=4, val_every=4, test_tasks=0, model="conv4", filters=8)
    trans = list(train(base, dataset=digits))[-1]
    supp = list(train(train_config(base.as_dict(), eval_batch_norm="support"), dataset=digits))[-1]
    assert trans["train_loss"] == supp["train_loss"]  # training is the same
    assert trans["val_loss"] != supp["val_loss"]
    with pytest.raises(ConfigError, match="^eval_batch_norm: got 'query'"):
        train_config(SMALL, eval_batch_norm="query")


def test_channels_last_kernel_path_trains_the_same_model(digits, monkeypatch):
    """memory_format=channels_last changes how Conv-4 is laid out, not what it computes: in float64
    the records match the contiguous run's."""
    base = train_config(SMALL, iterations=4, val_every=2, test_tasks=0, model="conv4", filters=8, dtype="float64")
    plain = list(train(base, dataset=digits))
    nhwc_cfg = train_config(base.as_dict(), memory_format="channels_last")
    built = []
    monkeypatch.setattr(trainer, "build_model", lambda *a, **k: built.append(trainer_build(*a, **k)) or built[-1])
    nhwc = list(train(nhwc_cfg, dataset=digits))
    assert input_memory_format(built[0]) == torch.channels_last  # the run did take the NHWC path
    for a, b in zip(plain, nhwc, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key
    with pytest.raises(ConfigError, match="^memory_format: got 'nhwc'"):
        train_config(SMALL, memory_format="nhwc")


def test_test_tasks_are_drawn_and_scored_a_chunk_at_a_time(digits):
    """The test holds one chunk of tasks' images at a time, yet draws and scores exactly the tasks
    one batch of them all would have held."""
    cfg = train_config(SMALL, test_tasks=trainer.EVAL_CHUNK * 2 + 7)
    streams = trainer._Samplers(cfg, digits)
    chunks = list(streams.test_tasks(cfg.test_tasks))
    assert [c.num_tasks for c in chunks] == [trainer.EVAL_CHUNK, trainer.EVAL_CHUNK, 7]
    whole = streams.test.sample(cfg.test_tasks, np.random.default_rng(streams.test_seq))
    assert all(torch.equal(torch.cat(parts), field) for parts, field in zip(zip(*chunks), whole))
    model = trainer_build(cfg.model, digits.image_shape, cfg.ways, cfg.filters, torch.Generator().manual_seed(0))
    cpu = torch.device("cpu")
    by_chunk = trainer.evaluate(model, iter(chunks), cfg, cpu, torch.float32)
    at_once = trainer.evaluate(model, whole, cfg, cpu, torch.float32)
    assert by_chunk == at_once
