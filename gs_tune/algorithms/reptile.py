"""Reptile (Nichol et al. 2018) as a meta-gradient: (θ − θ′)/(α·K).

Reptile has no support/query distinction: it adapts on all of a task's data,
so here the inner loop runs on support ∪ query, giving every algorithm the
same examples per task. Dividing the parameter difference by α·K makes the
meta-gradient the mean of the inner gradients along the trajectory, so it has
the scale of a gradient and one outer learning rate suits every algorithm
(Reptile's own "outer step size ε" is outer_lr·α·K with plain SGD).
Its query loss/accuracy are measured on data it has adapted on.
"""

from __future__ import annotations

import torch

from gs_tune.algorithms.common import LossFn, Params, first_order_adapt, grad_transform, tree_norm
from gs_tune.config import AlgoHParams


def reptile(
    loss_fn: LossFn, params: Params, xs: torch.Tensor, ys: torch.Tensor,
    xq: torch.Tensor, yq: torch.Tensor, hp: AlgoHParams,
) -> tuple[Params, dict[str, torch.Tensor]]:
    x, y = torch.cat([xs, xq]), torch.cat([ys, yq])
    iterates, _, _ = first_order_adapt(loss_fn, params, x, y, hp.inner_lr, hp.inner_steps, grad_transform(hp.batching))
    adapted = iterates[-1]
    scale = 1.0 / (hp.inner_lr * hp.inner_steps)
    grads = {k: (params[k] - adapted[k]) * scale for k in params}
    loss, acc = loss_fn(adapted, xq, yq)
    nan = torch.full_like(loss, float("nan"))
    stats = {
        "query_loss": loss.detach(), "query_accuracy": acc.detach(),
        "grad_norm": tree_norm(grads), "correction_norm": nan, "grad_cosine": nan,
    }
    return grads, stats
