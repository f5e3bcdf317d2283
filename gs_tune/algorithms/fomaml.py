"""First-order MAML: the query gradient at the adapted parameters, no Hessian."""

from __future__ import annotations

import torch

from gs_tune.algorithms.common import (
    HvpFn,
    LossFn,
    Params,
    first_order_adapt,
    grad_transform,
    loss_with_aux,
    tree_cosine,
    tree_norm,
)
from gs_tune.config import AlgoHParams


def first_order_parts(
    loss_fn: LossFn, params: Params, xs: torch.Tensor, ys: torch.Tensor,
    xq: torch.Tensor, yq: torch.Tensor, hp: AlgoHParams, keep_start_graph: bool = False,
) -> tuple[list[Params], list[Params], Params, torch.Tensor, torch.Tensor, HvpFn | None]:
    """Inner iterates, support gradients, g_Q = ∇L_Q(θ′), query loss and accuracy, and
    u ↦ H_S(θ)·u when ``keep_start_graph`` (see :func:`first_order_adapt`)."""
    grad = grad_transform(hp.batching)
    iterates, support_grads, hvp_at_start = first_order_adapt(
        loss_fn, params, xs, ys, hp.inner_lr, hp.inner_steps, grad, keep_start_graph
    )
    query_grad, (loss, acc) = grad(loss_with_aux(loss_fn), has_aux=True)(iterates[-1], xq, yq)
    return iterates, support_grads, query_grad, loss, acc, hvp_at_start


def fomaml(
    loss_fn: LossFn, params: Params, xs: torch.Tensor, ys: torch.Tensor,
    xq: torch.Tensor, yq: torch.Tensor, hp: AlgoHParams,
) -> tuple[Params, dict[str, torch.Tensor]]:
    _, support_grads, query_grad, loss, acc, _ = first_order_parts(loss_fn, params, xs, ys, xq, yq, hp)
    stats = {
        "query_loss": loss.detach(), "query_accuracy": acc.detach(),
        "grad_norm": tree_norm(query_grad), "correction_norm": torch.zeros_like(loss),
        "grad_cosine": tree_cosine(support_grads[0], query_grad),
    }
    return query_grad, stats
