"""Ray Tune callback that turns trial reports into Arrow tables and TensorBoard logs.

It runs in the driver, so the tables are written by one process, atomically,
as results arrive: a search killed midway leaves readable tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from gs_tune.config import TrainConfig
from gs_tune.rundir import COMPLETED, DIVERGED, EARLY_STOPPED, ERROR


def trial_status(config: dict[str, Any], last: dict[str, Any] | None) -> str:
    """The status of a trial Tune saw return: diverged (its last report says so), completed (it
    reached its last iteration) or early_stopped (ASHA stopped it before)."""
    last = last or {}
    if last.get("kind") == "diverged":
        return DIVERGED
    planned = int(config.get("iterations", TrainConfig.iterations))
    return COMPLETED if last.get("iteration", 0) >= planned else EARLY_STOPPED


class ResultsCallback(tune.Callback):
    """Feeds :class:`gs_tune.results.tables.ResultsWriter` (tables + per-trial TensorBoard)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self._writer = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles callbacks with the experiment; the open writer is rebuilt on use
        return {"run_dir": self.run_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["run_dir"])

    @property
    def writer(self):
        if self._writer is None:
            from gs_tune.results.tables import ResultsWriter

            self._writer = ResultsWriter(self.run_dir, tensorboard=True)
        return self._writer

    def setup(self, **info: Any) -> None:
        _ = self.writer

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict[str, Any], **info: Any) -> None:
        self.writer.on_report(trial.trial_id, result, dict(trial.config))

    def _end(self, trial, status: str, error: str | None = None) -> None:
        last = trial.last_result or {}
        self.writer.on_trial_end(trial.trial_id, status, error=error, device=last.get("device"),
                                 node=last.get("node"), params=dict(trial.config))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._end(trial, trial_status(trial.config, trial.last_result))

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        message = None
        error_file = getattr(trial, "error_file", None)
        if error_file and Path(error_file).exists():
            lines = [ln for ln in Path(error_file).read_text().splitlines() if ln.strip()]
            message = lines[-1] if lines else None
        self._end(trial, ERROR, error=message or "trial failed")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._writer is not None:
            self._writer.close()
