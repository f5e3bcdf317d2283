"""The engine on a CUDA device: the same meta-gradients as on the CPU, in every batching and layout.

Skipped where torch sees no CUDA device (this repository's CI is CPU-only);
``benchmarks/gpu_check.sh`` runs them on a GPU machine. float64 throughout, so
that "the same" means to 1e-9 whatever kernels the device picks; float32
accuracy on the device is hvp_accuracy.py's business (``--device cuda``).
"""

from __future__ import annotations

import pytest
import torch

from gs_tune.algorithms import ALGORITHMS
from gs_tune.config import HVP_MODES
from gs_tune.meta import adapt_and_evaluate, meta_gradient

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

CASES = [(algo, {}) for algo in ALGORITHMS if algo != "ahe"] + [
    ("ahe", {"w_cos": 0.3, "w_l2": 0.05, "hvp": mode, "fd_eps": 1e-6}) for mode in HVP_MODES
]
IDS = [f"{algo}-{hp.get('hvp', '')}".rstrip("-") for algo, hp in CASES]


def rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    fa = torch.cat([v.reshape(-1).cpu() for v in a.values()])
    fb = torch.cat([v.reshape(-1).cpu() for v in b.values()])
    return float((fa - fb).norm() / fb.norm())


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("algo, hp", CASES, ids=IDS)
def test_cuda_matches_cpu(algo, hp, batching, channels_last, make_model, make_tasks):
    model, tasks = make_model("conv4", channels_last=channels_last), make_tasks(3)
    kw = {"inner_lr": 0.1, "inner_steps": 2, **hp}
    cpu, _ = meta_gradient(model, tasks, algo, batching="loop", **kw)
    device = torch.device("cuda")
    on_device, stats = meta_gradient(model.to(device), tasks.to(device), algo, batching=batching, **kw)
    assert all(g.device.type == "cuda" for g in on_device.values())
    assert all(s.device.type == "cuda" for s in stats.values())
    assert rel(on_device, cpu) < 1e-9


@pytest.mark.parametrize("batch_norm", ["transductive", "support"])
def test_cuda_evaluation_matches_cpu(batch_norm, make_model, make_tasks):
    model, tasks = make_model("conv4"), make_tasks(3)
    cpu_loss, cpu_acc = adapt_and_evaluate(model, tasks, 0.1, 2, batch_norm=batch_norm)
    device = torch.device("cuda")
    loss, acc = adapt_and_evaluate(model.to(device), tasks.to(device), 0.1, 2, batch_norm=batch_norm)
    torch.testing.assert_close(loss.cpu(), cpu_loss, rtol=1e-9, atol=1e-12)
    assert torch.equal(acc.cpu(), cpu_acc)
