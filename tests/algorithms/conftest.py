"""Shared fixtures of the algorithm tests: small models and random tasks, float64 by default."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from gs_tune.data import TaskBatch
from gs_tune.models import build_model

IMAGE_SHAPE = (1, 16, 16)  # the smallest image Conv-4's four 2×2 pools accept: keeps the tests fast
WAYS = 5


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread while a test runs, restored after.

    The tensors here are tiny, so per-op overhead dominates and a second thread
    only adds synchronisation; on a loaded 2-core machine OpenMP's spinning
    barrier made the same calls 10-50× slower and their timings erratic.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def make_tasks() -> Callable[..., TaskBatch]:
    """``make_tasks(num_tasks, seed=0, dtype=float64, shots=1, query=3, image_shape=IMAGE_SHAPE)``."""

    def make(
        num_tasks: int, seed: int = 0, dtype: torch.dtype = torch.float64, shots: int = 1, query: int = 3,
        image_shape: tuple[int, ...] = IMAGE_SHAPE, ways: int = WAYS,
    ) -> TaskBatch:
        gen = torch.Generator().manual_seed(seed)
        xs = torch.randn(num_tasks, ways * shots, *image_shape, generator=gen, dtype=dtype)
        xq = torch.randn(num_tasks, ways * query, *image_shape, generator=gen, dtype=dtype)
        ys = torch.arange(ways).repeat_interleave(shots).expand(num_tasks, -1).contiguous()
        yq = torch.arange(ways).repeat_interleave(query).expand(num_tasks, -1).contiguous()
        return TaskBatch(xs, ys, xq, yq)

    return make


@pytest.fixture(scope="session")
def make_model() -> Callable[..., nn.Module]:
    """``make_model("conv4" | "mlp", seed=0, dtype=float64, channels_last=False)``: Conv-4 with 8
    filters, MLP 32-16 hidden."""

    def make(name: str, seed: int = 0, dtype: torch.dtype = torch.float64, channels_last: bool = False) -> nn.Module:
        filters = 8 if name == "conv4" else 4  # the MLP's hidden width is 8·filters
        model = build_model(name, IMAGE_SHAPE, WAYS, filters, torch.Generator().manual_seed(seed), channels_last)
        return model.to(dtype)

    return make

