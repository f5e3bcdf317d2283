"""Results of a search: Parquet tables, TensorBoard logs, terminal summary and static report.

Nothing here imports Ray: every function works on a run directory alone, finished
or interrupted. Heavy modules are imported only by the submodules that need them
(``tensorboard`` pulls in the TensorBoard protobufs, ``report`` matplotlib, ``summary`` optuna), so
``import gs_tune.results`` stays cheap for the Tune callback.
"""

from gs_tune.results.schema import EVALUATION_SCHEMA, METRICS_SCHEMA, trials_schema
from gs_tune.results.tables import (
    ResultsWriter,
    read_evaluation,
    read_metrics,
    read_trials,
    write_evaluation,
    write_table_atomic,
)

__all__ = [
    "EVALUATION_SCHEMA", "METRICS_SCHEMA", "ResultsWriter", "read_evaluation", "read_metrics", "read_trials",
    "trials_schema", "write_evaluation", "write_table_atomic",
]
