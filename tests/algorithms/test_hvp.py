"""Each Hessian-vector product mode against the exact product in float64, in float32 training.

The setting is the one AHE trains in: Conv-4 with 32 filters on real digits
tasks (28×28, 5-way 1-shot), a float32 model in either memory layout, u = ∂ℓ/∂g_S
from the cosine and L2 terms. The reference is H_S·u by forward-over-reverse differentiation
(``torch.func.jvp`` of the gradient) of a float64 copy of the same model,
written here rather than taken from the package. Errors are measured at the
initialisation and after a few meta-iterations, where the loss surface (and the
kinks a finite difference can cross) differ.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.func import grad, jvp

from gs_tune.algorithms.ahe import similarity_direction, support_hvp
from gs_tune.algorithms.common import autograd_grad, loss_only
from gs_tune.config import HVP_MODES, AlgoHParams
from gs_tune.data import TaskSampler, load_dataset
from gs_tune.meta import make_loss_fn, meta_gradient
from gs_tune.models import build_model

NUM_TASKS = 6
WEIGHTS = {"w_cos": 1.0, "w_l2": 0.1}


def flat(tree: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tree.values()])


def reference_hvp(model64, x, y, u) -> torch.Tensor:
    loss_fn = make_loss_fn(model64)
    theta = {k: p.detach() for k, p in model64.named_parameters()}
    u64 = {k: v.double() for k, v in u.items()}
    return flat(jvp(lambda p: grad(lambda q: loss_fn(q, x.double(), y)[0])(p), (theta,), (u64,))[1])


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    tasks = TaskSampler(data.train, 5, 1, 15, "train").sample(NUM_TASKS, np.random.default_rng(0))
    return data, tasks


def trained(data, iterations: int, layout: str) -> torch.nn.Module:
    """Conv-4 (float32) after ``iterations`` meta-iterations of AHE with Adam."""
    model = build_model("conv4", data.image_shape, 5, 32, torch.Generator().manual_seed(0),
                        channels_last=layout == "channels_last")
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler, rng = TaskSampler(data.train, 5, 1, 15, "train"), np.random.default_rng(1)
    for _ in range(iterations):
        grads, _ = meta_gradient(model, sampler.sample(4, rng), "ahe", inner_lr=0.4, **WEIGHTS)
        for name, p in model.named_parameters():
            p.grad = grads[name]
        optimiser.step()
    return model


STATES = [(layout, n) for layout in ("contiguous", "channels_last") for n in (0, 10)]


@pytest.fixture(scope="module", params=STATES, ids=[f"{layout}-{n}-iterations" for layout, n in STATES])
def errors(request, digits) -> dict[str, np.ndarray]:
    """Relative error ‖H·u − (H·u)_ref‖/‖(H·u)_ref‖ per task for every mode, and (key "layout")
    which layout it was."""
    data, tasks = digits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: the per-test one-thread fixture has not run yet
    try:
        return {**_errors(data, tasks, *reversed(request.param)), "layout": request.param[0]}
    finally:
        torch.set_num_threads(threads)


def _errors(data, tasks, iterations: int, layout: str) -> dict[str, np.ndarray]:
    model = trained(data, iterations, layout)
    model64 = copy.deepcopy(model).double()
    loss_fn = make_loss_fn(model)
    theta = {k: p.detach() for k, p in model.named_parameters()}
    out: dict[str, list[float]] = {mode: [] for mode in (*HVP_MODES, "gradient")}
    for t in range(NUM_TASKS):
        xs, ys, xq, yq = (tensor[t] for tensor in tasks)
        g_s = autograd_grad(loss_only(loss_fn))(theta, xs, ys)
        g_ref = flat(autograd_grad(loss_only(make_loss_fn(model64)))(
            {k: p.detach() for k, p in model64.named_parameters()}, xs.double(), ys))
        out["gradient"].append(float((flat(g_s) - g_ref).norm() / g_ref.norm()))
        adapted = {k: theta[k] - 0.4 * g_s[k] for k in theta}
        g_q = autograd_grad(loss_only(loss_fn))(adapted, xq, yq)
        u = similarity_direction(g_s, g_q, AlgoHParams(**WEIGHTS))
        ref = reference_hvp(model64, xs, ys, u)
        for mode in HVP_MODES:
            hu = support_hvp(loss_fn, theta, xs, ys, u, AlgoHParams(hvp=mode, batching="loop"))
            assert all(v.dtype == torch.float32 for v in hu.values()), mode
            out[mode].append(float((flat(hu) - ref).norm() / ref.norm()))
    return {mode: np.array(e) for mode, e in out.items()}


@pytest.mark.parametrize("mode", ["exact", "finite_difference"])
def test_accurate_modes_meet_the_target(errors, mode):
    """The target a reviewer asked for: median ≤ 1e-5 and max ≤ 1e-4 in float32 training, in
    the default (contiguous) layout.

    Channels-last kernels compute batch norm's statistics with less care, so there the float32
    support gradient itself is off by up to ~1e-4 (measured 1.5e-4 on one task after 10
    iterations, 1e-6 in the contiguous layout); there each task's product is held to three
    times its own gradient's error: the product adds nothing beyond the kernels' rounding.
    """
    e = errors[mode]
    if errors["layout"] == "contiguous":
        assert np.median(e) <= 1e-5, e
        assert e.max() <= 1e-4, e
    else:
        assert (e <= np.maximum(1e-5, 3 * errors["gradient"])).all(), (e, errors["gradient"])


def test_float32_difference_is_the_inaccurate_one(errors):
    """The earlier default, kept for the record: tens of percent off (float32 rounding), yet not noise."""
    e = errors["finite_difference_f32"]
    assert 0.03 < np.median(e) < 1.0, e
    assert np.median(e) > 1000 * np.median(errors["finite_difference"])


def test_identity_is_not_an_approximation_of_h(errors):
    """H ≈ I is an ablation: it keeps u, whose distance from H·u is of order one."""
    assert np.median(errors["identity"]) > 0.5, errors["identity"]


def test_identity_mode_applies_u_as_is(make_model, make_tasks):
    """hvp: identity ⇒ G = g_Q + λ·u exactly, with no extra gradient."""
    model, tasks = make_model("conv4"), make_tasks(1)
    kw = {"inner_lr": 0.1, "inner_steps": 1, "batching": "loop"}
    ahe, _ = meta_gradient(model, tasks, "ahe", hvp="identity", ahe_scale=0.5, **WEIGHTS, **kw)
    fomaml, _ = meta_gradient(model, tasks, "fomaml", **kw)
    loss_fn = make_loss_fn(model)
    theta = {k: p.detach() for k, p in model.named_parameters()}
    xs, ys, xq, yq = (tensor[0] for tensor in tasks)
    g_s = autograd_grad(loss_only(loss_fn))(theta, xs, ys)
    g_q = autograd_grad(loss_only(loss_fn))({k: theta[k] - 0.1 * g_s[k] for k in theta}, xq, yq)
    u = similarity_direction(g_s, g_q, AlgoHParams(**WEIGHTS))
    expected = {k: fomaml[k] + 0.5 * u[k] for k in u}
    assert float((flat(ahe) - flat(expected)).norm() / flat(expected).norm()) < 1e-12
    assert float((flat(ahe) - flat(fomaml)).norm()) > 1e-3  # the correction is there


@pytest.mark.parametrize("mode", ["exact", "finite_difference"])
def test_meta_gradient_correction_in_float32_is_accurate(mode, digits):
    """Through meta_gradient (the exact mode reuses the first support gradient's graph): the
    float32 correction G − g_Q is within 1e-4 of the float64 exact one."""
    data, tasks = digits
    model = build_model("conv4", data.image_shape, 5, 32, torch.Generator().manual_seed(0))
    model64 = copy.deepcopy(model).double()
    kw = {"inner_lr": 0.4, "inner_steps": 2, "batching": "loop", **WEIGHTS}
    task = tasks.task(0)
    ahe, _ = meta_gradient(model, task, "ahe", hvp=mode, **kw)
    fomaml, _ = meta_gradient(model, task, "fomaml", **kw)
    ref_ahe, _ = meta_gradient(model64, task.to("cpu", torch.float64), "ahe", hvp="exact", **kw)
    ref_fomaml, _ = meta_gradient(model64, task.to("cpu", torch.float64), "fomaml", **kw)
    correction = flat(ahe) - flat(fomaml)
    ref = flat(ref_ahe) - flat(ref_fomaml)
    assert float(ref.norm()) > 0.1 * float(flat(ref_fomaml).norm())  # a correction big enough to matter
    assert float((correction - ref).norm() / ref.norm()) < 1e-4
