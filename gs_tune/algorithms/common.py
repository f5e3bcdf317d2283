"""Pieces every algorithm shares: parameter-dict arithmetic, the inner loop, HVPs.

Parameters are plain ``dict[str, Tensor]`` so that ``torch.func`` transforms
(grad, jvp, vmap) apply to whole algorithms. A task's loss function has the
signature ``loss_fn(params, x, y) -> (loss, accuracy)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import grad, jvp

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# Guards a division by a norm that may be exactly zero (e.g. a zero correction);
# tiny enough to change nothing else, representable in float32.
TINY = 1e-30


def tree_add(a: Params, b: Params, scale: float | torch.Tensor = 1.0) -> Params:
    """a + scale·b."""
    return {k: a[k] + scale * b[k] for k in a}


def tree_scale(a: Params, scale: float | torch.Tensor) -> Params:
    return {k: scale * v for k, v in a.items()}


def tree_dot(a: Params, b: Params) -> torch.Tensor:
    return sum((a[k] * b[k]).sum() for k in a)  # type: ignore[return-value]


def tree_norm(a: Params) -> torch.Tensor:
    return torch.sqrt(tree_dot(a, a))


def tree_zeros(a: Params) -> Params:
    return {k: torch.zeros_like(v) for k, v in a.items()}


def tree_cosine(a: Params, b: Params) -> torch.Tensor:
    return tree_dot(a, b) / (tree_norm(a) * tree_norm(b)).clamp_min(TINY)


def loss_only(loss_fn: LossFn) -> Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda p, x, y: loss_fn(p, x, y)[0]


def loss_with_aux(loss_fn: LossFn):
    """(loss, (loss, accuracy)): the shape ``grad(..., has_aux=True)`` wants."""

    def wrapped(p: Params, x: torch.Tensor, y: torch.Tensor):
        loss, acc = loss_fn(p, x, y)
        return loss, (loss, acc)

    return wrapped


def sgd_step(params: Params, grads: Params, lr: float) -> Params:
    return {k: params[k] - lr * grads[k] for k in params}


def first_order_adapt(
    loss_fn: LossFn, params: Params, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int
) -> tuple[list[Params], list[Params]]:
    """K inner SGD steps with no graph kept between them.

    Returns the iterates θ_0..θ_K and the support gradients g_S(θ_0)..g_S(θ_{K-1});
    the correction of AHE needs both, so nothing is recomputed.
    """
    support_grad = grad(loss_only(loss_fn))
    iterates, grads = [params], []
    for _ in range(steps):
        g = support_grad(iterates[-1], x, y)
        grads.append(g)
        iterates.append(sgd_step(iterates[-1], g, lr))
    return iterates, grads


def hvp_exact(loss_fn: LossFn, params: Params, x: torch.Tensor, y: torch.Tensor, u: Params) -> Params:
    """H(θ)·u by forward-over-reverse differentiation: one jvp of the gradient."""
    return jvp(lambda p: grad(loss_only(loss_fn))(p, x, y), (params,), (u,))[1]


def hvp_finite_difference(
    loss_fn: LossFn, params: Params, x: torch.Tensor, y: torch.Tensor, u: Params, eps: float
) -> Params:
    """H(θ)·u ≈ ‖u‖·(∇L(θ + εû) − ∇L(θ − εû)) / 2ε with û = u/‖u‖.

    Two first-order gradients and no second-order graph. Stepping along the
    unit vector keeps the probe ε-sized whatever ‖u‖ is, so one ε suits every
    similarity weight.
    """
    norm = tree_norm(u)
    unit = tree_scale(u, 1.0 / norm.clamp_min(TINY))
    support_grad = grad(loss_only(loss_fn))
    plus = support_grad(tree_add(params, unit, eps), x, y)
    minus = support_grad(tree_add(params, unit, -eps), x, y)
    return {k: (plus[k] - minus[k]) * (norm / (2 * eps)) for k in plus}
