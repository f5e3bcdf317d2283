"""gs-tune: hyperparameter search for meta-learning with a gradient similarity loss."""

from __future__ import annotations

from gs_tune.config import AlgoHParams, TrainConfig, train_config
from gs_tune.data.tasks import TaskBatch
from gs_tune.meta import meta_gradient

__version__ = "0.1.0"

__all__ = ["AlgoHParams", "TaskBatch", "TrainConfig", "__version__", "meta_gradient", "train", "train_config"]


def __getattr__(name: str):
    # train pulls in the data and results stack; import it on first use only
    if name == "train":
        from gs_tune.trainer import train

        return train
    raise AttributeError(name)
