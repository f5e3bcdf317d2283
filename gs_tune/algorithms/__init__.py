"""Meta-gradient algorithms: pure functions (loss_fn, params, one task, hparams) -> (grads, stats).

Each takes a single task's tensors (no task axis); :func:`gs_tune.meta_gradient`
batches them over tasks with vmap or a loop and averages.
"""

from __future__ import annotations

from gs_tune.algorithms.ahe import ahe
from gs_tune.algorithms.fomaml import fomaml
from gs_tune.algorithms.maml import maml
from gs_tune.algorithms.reptile import reptile

ALGORITHMS = {"maml": maml, "fomaml": fomaml, "reptile": reptile, "ahe": ahe}
STAT_NAMES = ("query_loss", "query_accuracy", "grad_norm", "correction_norm", "grad_cosine")

__all__ = ["ALGORITHMS", "STAT_NAMES", "ahe", "fomaml", "maml", "reptile"]
