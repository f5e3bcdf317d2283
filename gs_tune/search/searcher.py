"""Ray Tune's OptunaSearch, made safe to resume after a hard kill of the driver.

The Optuna study (an RDB: SQLite or PostgreSQL, transactional) is the record of which trials
ended: OptunaSearch writes a trial's end there first, and Tune's experiment snapshot and the
Parquet tables follow. A SIGKILL can land between those writes, so on resume the study may hold
a trial as finished while Tune's snapshot still holds it as running (Tune then restores it, and
a report into the closed Optuna trial raised ``UpdateFinishedTrialError``), or hold a trial Tune
never snapshotted. Reconciling from the study:

* a trial the study already closed may report again (it re-says its final result from its final
  checkpoint, see search/trial.py); those reports are not forwarded to Optuna, which keeps the
  value it has;
* a trial the study holds as running that Tune does not know is failed in the study: nothing
  can continue it, and the search suggests a new one in its place.
"""

from __future__ import annotations

from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

TUNE_ID_ATTR = "tune_trial_id"


class ResumableOptunaSearch(OptunaSearch):
    """OptunaSearch that tags each Optuna trial with its Tune trial id and reconciles on restore.

    It reads the private ``_ot_trials`` / ``_ot_study`` / ``_completed_trials`` of Ray's class:
    they are the state Ray itself pickles for a restore, and this subclass lives beside the pin
    of Ray in constraints.txt.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._closed_before_restore: set[str] = set()

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if trial is not None:
            trial.set_user_attr(TUNE_ID_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._closed_before_restore:
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._closed_before_restore:
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._closed_before_restore = set()
        state = {t.number: t.state for t in self._ot_study.get_trials(deepcopy=False)}
        known = set()
        for tune_id, trial in self._ot_trials.items():
            known.add(trial.number)
            if state.get(trial.number, optuna.trial.TrialState.RUNNING).is_finished():
                self._closed_before_restore.add(tune_id)
        for number, st in state.items():
            if st == optuna.trial.TrialState.RUNNING and number not in known:
                self._ot_study.tell(number, state=optuna.trial.TrialState.FAIL)
