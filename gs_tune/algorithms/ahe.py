"""AHE: first-order MAML plus the gradient-similarity correction (docs/method.md).

For a support gradient g = g_S(θ) and the frozen query gradient v = sg(g_Q),
the similarity loss is

    ℓ(g) = w_cos·(1 − cos(g, v)) + w_l2·‖g − v‖² − w_dot·⟨g, v⟩,

and its gradient with respect to θ is the Hessian-vector product H_S(θ)·u with
u = ∂ℓ/∂g in closed form. With K = 1 and w_dot = α this is exactly MAML's
second-order term, so MAML = FOMAML + ∇ℓ; cosine and L2 are the paper's
replacements for the dot product. The meta-gradient of a task is
G = g_Q + λ·H_S·u, with ‖λ·H_S·u‖ optionally clipped to ρ·‖g_Q‖.
"""

from __future__ import annotations

import torch

from gs_tune.algorithms.common import (
    TINY,
    HvpFn,
    LossFn,
    Params,
    grad_transform,
    hvp_exact,
    hvp_finite_difference,
    tree_add,
    tree_cosine,
    tree_dot,
    tree_norm,
    tree_scale,
    tree_zeros,
)
from gs_tune.algorithms.fomaml import first_order_parts
from gs_tune.config import AlgoHParams


def similarity_direction(g: Params, v: Params, hp: AlgoHParams) -> Params:
    """u = ∂ℓ/∂g: the vector the support Hessian is multiplied by."""
    u = tree_zeros(g)
    if hp.w_cos:
        g_norm, v_norm = tree_norm(g).clamp_min(TINY), tree_norm(v).clamp_min(TINY)
        cos = tree_dot(g, v) / (g_norm * v_norm)
        u = {k: u[k] - hp.w_cos * (v[k] / (g_norm * v_norm) - cos * g[k] / g_norm**2) for k in u}
    if hp.w_l2:
        u = {k: u[k] + 2.0 * hp.w_l2 * (g[k] - v[k]) for k in u}
    if hp.w_dot:
        u = tree_add(u, v, -hp.w_dot)
    return u


def support_hvp(
    loss_fn: LossFn, params: Params, xs: torch.Tensor, ys: torch.Tensor, u: Params, hp: AlgoHParams,
    hvp_here: HvpFn | None = None,
) -> Params:
    """H_S(params)·u by ``hp.hvp``; ``hvp_here`` is the exact product already built at params, if any."""
    if hp.hvp == "identity":
        return u
    grad = grad_transform(hp.batching)
    if hp.hvp == "exact":
        return hvp_here(u) if hvp_here is not None else hvp_exact(loss_fn, params, xs, ys, u, grad)
    dtype = torch.float64 if hp.hvp == "finite_difference" else None
    return hvp_finite_difference(loss_fn, params, xs, ys, u, hp.fd_step, grad, dtype)


def ahe(
    loss_fn: LossFn, params: Params, xs: torch.Tensor, ys: torch.Tensor,
    xq: torch.Tensor, yq: torch.Tensor, hp: AlgoHParams,
) -> tuple[Params, dict[str, torch.Tensor]]:
    # The exact product at θ reuses the graph of the first support gradient, which the inner
    # loop computes anyway: one backward pass instead of a fresh forward and two backwards.
    keep = hp.has_correction and hp.hvp == "exact"
    iterates, support_grads, query_grad, loss, acc, hvp_at_start = first_order_parts(
        loss_fn, params, xs, ys, xq, yq, hp, keep_start_graph=keep
    )
    correction = tree_zeros(query_grad)
    if hp.has_correction:
        points = range(hp.inner_steps) if hp.ahe_at == "all_steps" else range(1)
        for k in points:
            u = similarity_direction(support_grads[k], query_grad, hp)
            hu = support_hvp(loss_fn, iterates[k], xs, ys, u, hp, hvp_at_start if k == 0 else None)
            correction = tree_add(correction, hu)
        correction = tree_scale(correction, hp.ahe_scale)
        if hp.ahe_clip is not None:
            # min(1, ρ‖g_Q‖/‖c‖) without data-dependent control flow, so vmap can batch it
            limit = hp.ahe_clip * tree_norm(query_grad)
            correction = tree_scale(correction, (limit / tree_norm(correction).clamp_min(TINY)).clamp(max=1.0))
    grads = tree_add(query_grad, correction)
    stats = {
        "query_loss": loss.detach(), "query_accuracy": acc.detach(),
        "grad_norm": tree_norm(query_grad), "correction_norm": tree_norm(correction),
        "grad_cosine": tree_cosine(support_grads[0], query_grad),
    }
    return grads, stats
