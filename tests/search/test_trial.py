"""gs_tune/search/trial.py: how the trainer's records are reshaped for Ray Tune's scheduler."""

from __future__ import annotations

from gs_tune.search.trial import _reportable, for_scheduler


def _val(i: int, acc: float) -> dict:
    return {"kind": "val", "iteration": i, "val_accuracy": acc, "checkpoint": f"ckpt{i}", "train_log": []}


def test_last_validation_and_test_travel_as_one_report():
    records = [_val(5, 0.5), _val(10, 0.6), {"kind": "test", "iteration": 10, "test_accuracy": 0.55}]
    out = list(for_scheduler(records, iterations=10, test_follows=True))
    assert [r["iteration"] for r in out] == [5, 10]
    assert out[1] == {**_val(10, 0.6), "test_accuracy": 0.55}  # kind val, the validation's checkpoint


def test_without_a_test_every_validation_is_sent_as_it_is():
    records = [_val(5, 0.5), _val(10, 0.6)]
    assert list(for_scheduler(records, iterations=10, test_follows=False)) == records


def test_a_held_validation_is_still_sent_if_no_test_comes():
    assert list(for_scheduler([_val(10, 0.6)], iterations=10, test_follows=True)) == [_val(10, 0.6)]


def test_diverged_ranks_last_for_the_searcher():
    out = list(for_scheduler([{"kind": "diverged", "iteration": 3, "train_loss": float("nan")}], 10, True))
    assert out[0]["val_accuracy"] == 0.0 and out[0]["kind"] == "diverged"


def test_reportable_keeps_scalars_and_the_train_log_only():
    record = {"a": 1.0, "b": float("nan"), "c": "x", "d": {"nested": 1}, "train_log": [{"iteration": 1}]}
    assert _reportable(record) == {"a": 1.0, "c": "x", "train_log": [{"iteration": 1}]}
