"""MAML: the exact second-order meta-gradient through K inner SGD steps."""

from __future__ import annotations

import torch

from gs_tune.algorithms.common import LossFn, Params, grad_transform, loss_only, sgd_step, tree_norm
from gs_tune.config import AlgoHParams


def maml(
    loss_fn: LossFn, params: Params, xs: torch.Tensor, ys: torch.Tensor,
    xq: torch.Tensor, yq: torch.Tensor, hp: AlgoHParams,
) -> tuple[Params, dict[str, torch.Tensor]]:
    """∇_θ L_Q(θ′) with θ′ = K differentiable SGD steps from θ.

    ``grad`` of a function that itself calls ``grad`` keeps the inner graph,
    so the Hessian products Π(I − αH_S(θ_k)) come out of autodiff exactly;
    memory grows with K because every inner step's graph is kept.
    """
    grad = grad_transform(hp.batching)
    support_grad = grad(loss_only(loss_fn))

    def query_loss_after_adaptation(p: Params):
        for _ in range(hp.inner_steps):
            p = sgd_step(p, support_grad(p, xs, ys), hp.inner_lr)
        loss, acc = loss_fn(p, xq, yq)
        return loss, (loss, acc)

    grads, (loss, acc) = grad(query_loss_after_adaptation, has_aux=True)(params)
    nan = torch.full_like(loss, float("nan"))
    # The first-order gradient and the support–query cosine would cost an extra
    # query gradient that MAML itself does not need, so they are not measured.
    stats = {
        "query_loss": loss.detach(), "query_accuracy": acc.detach(),
        "grad_norm": tree_norm(grads).detach(), "correction_norm": nan, "grad_cosine": nan,
    }
    return grads, stats
