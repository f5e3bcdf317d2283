"""gs_tune/search/trial.py: how the trainer's records are reshaped for Ray Tune's searcher."""

from __future__ import annotations

from gs_tune.search.trial import _reportable, for_searcher


def _val(i: int, acc: float) -> dict:
    return {"kind": "val", "iteration": i, "val_accuracy": acc, "checkpoint": f"ckpt{i}", "train_log": []}


def test_validations_are_sent_as_they_are():
    records = [_val(5, 0.5), _val(10, 0.6)]
    assert list(for_searcher(records)) == records


def test_diverged_ranks_last_for_the_searcher():
    out = list(for_searcher([{"kind": "diverged", "iteration": 3, "train_loss": float("nan")}]))
    assert out[0]["val_accuracy"] == 0.0 and out[0]["kind"] == "diverged"


def test_reportable_keeps_scalars_and_the_train_log_only():
    record = {"a": 1.0, "b": float("nan"), "c": "x", "d": {"nested": 1}, "train_log": [{"iteration": 1}]}
    assert _reportable(record) == {"a": 1.0, "c": "x", "train_log": [{"iteration": 1}]}
