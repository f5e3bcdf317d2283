"""Pieces every algorithm shares: parameter-dict arithmetic, the inner loop, HVPs.

Parameters are plain ``dict[str, Tensor]`` so that ``torch.func`` transforms
(grad, jvp, vmap) apply to whole algorithms. A task's loss function has the
signature ``loss_fn(params, x, y) -> (loss, accuracy)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import grad as func_grad
from torch.func import vjp

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

GradTransform = Callable[..., Callable[..., Any]]
HvpFn = Callable[[Params], Params]

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


def autograd_grad(f: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
    """``torch.func.grad``'s contract on plain ``torch.autograd``.

    On a CPU, looping over tasks, this runs measurably faster than
    ``torch.func.grad``, whose per-operator wrapping costs more than the small
    convolutions of Conv-4. Nesting works like ``torch.func.grad``: when the
    parameters already carry a graph (an outer differentiation, as in MAML),
    the gradient keeps its own graph (create_graph) so the outer one can
    differentiate through it; otherwise the result is detached.
    """

    def wrapped(params: Params, *args: Any):
        nested = any(v.requires_grad for v in params.values())
        with torch.enable_grad():
            leaves = params if nested else {k: v.detach().requires_grad_() for k, v in params.items()}
            out = f(leaves, *args)
            loss, aux = out if has_aux else (out, None)
            grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=nested)
        result = dict(zip(leaves, grads))
        if not has_aux:
            return result
        if not nested:
            aux = torch.utils._pytree.tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, aux)
        return result, aux

    return wrapped


def grad_transform(batching: str) -> GradTransform:
    """torch.func.grad where tasks are vmapped (vmap needs it); plain autograd in a loop."""
    return func_grad if batching == "vmap" else autograd_grad


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
    loss_fn: LossFn, params: Params, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int,
    grad: GradTransform = func_grad, keep_start_graph: bool = False,
) -> tuple[list[Params], list[Params], HvpFn | None]:
    """K inner SGD steps with no graph kept between them.

    Returns the iterates θ_0..θ_K, the support gradients g_S(θ_0)..g_S(θ_{K-1})
    (AHE's correction needs both, so nothing is recomputed) and, with
    ``keep_start_graph``, u ↦ H_S(θ_0)·u built on the first gradient's own graph
    (see :func:`grad_and_hvp`), else None.
    """
    support_grad = grad(loss_only(loss_fn))
    hvp_at_start = None
    iterates, grads = [params], []
    for step in range(steps):
        if step == 0 and keep_start_graph:
            g, hvp_at_start = grad_and_hvp(loss_fn, params, x, y, grad)
        else:
            g = support_grad(iterates[-1], x, y)
        grads.append(g)
        iterates.append(sgd_step(iterates[-1], g, lr))
    return iterates, grads, hvp_at_start


def grad_and_hvp(
    loss_fn: LossFn, params: Params, x: torch.Tensor, y: torch.Tensor, grad: GradTransform = func_grad,
) -> tuple[Params, HvpFn]:
    """∇L(θ), and u ↦ H(θ)·u by reverse-over-reverse differentiation of that same gradient.

    The product is one backward pass through the gradient's graph, which the
    gradient itself needed anyway, so taken at a point whose gradient is wanted
    too (θ_0 of the inner loop) it costs about what a central difference's two
    extra gradients cost, and is exact to rounding (no step, no kinks). The
    closure may be called once: it frees the graph.
    """
    if grad is func_grad:  # torch.func (under vmap): a vjp of the gradient function
        g, vjp_fn = vjp(lambda p: func_grad(loss_only(loss_fn))(p, x, y), params)
        return g, lambda u: vjp_fn(u)[0]
    with torch.enable_grad():
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        grads = dict(zip(leaves, torch.autograd.grad(loss_only(loss_fn)(leaves, x, y), list(leaves.values()),
                                                     create_graph=True)))

    def hvp(u: Params) -> Params:
        # a gradient that does not depend on θ (none does in Conv-4 or the MLP) contributes nothing
        live = [k for k in grads if grads[k].requires_grad]
        out = torch.autograd.grad([grads[k] for k in live], list(leaves.values()), [u[k] for k in live],
                                  allow_unused=True, materialize_grads=True)
        return dict(zip(leaves, out))

    return {k: g.detach() for k, g in grads.items()}, hvp


def hvp_exact(
    loss_fn: LossFn, params: Params, x: torch.Tensor, y: torch.Tensor, u: Params, grad: GradTransform = func_grad,
) -> Params:
    """H(θ)·u, exact to rounding, at a point whose gradient is not otherwise needed."""
    return grad_and_hvp(loss_fn, params, x, y, grad)[1](u)


def hvp_finite_difference(
    loss_fn: LossFn, params: Params, x: torch.Tensor, y: torch.Tensor, u: Params, eps: float,
    grad: GradTransform = func_grad, dtype: torch.dtype | None = None,
) -> Params:
    """H(θ)·u ≈ ‖u‖·(∇L(θ + εû) − ∇L(θ − εû)) / 2ε with û = u/‖u‖, two gradients computed in ``dtype``.

    Two first-order gradients and no second-order graph. Stepping along the
    unit vector keeps the probe ε-sized whatever ‖u‖ is, so one ε suits every
    similarity weight. ``dtype`` (default: the parameters') is where the
    difference is taken: in float32 a step of ε spread over ~10⁵ weights falls
    below the spacing of many of them and the two gradients share few
    significant bits, so float32 training gets an accurate product only by
    taking the difference in float64; the result comes back in the parameters' dtype.
    """
    out_dtypes = {k: v.dtype for k, v in params.items()}
    if dtype is not None:
        params, u, x = {k: v.to(dtype) for k, v in params.items()}, {k: v.to(dtype) for k, v in u.items()}, x.to(dtype)
    norm = tree_norm(u)
    unit = tree_scale(u, 1.0 / norm.clamp_min(TINY))
    support_grad = grad(loss_only(loss_fn))
    plus = support_grad(tree_add(params, unit, eps), x, y)
    minus = support_grad(tree_add(params, unit, -eps), x, y)
    return {k: ((plus[k] - minus[k]) * (norm / (2 * eps))).to(out_dtypes[k]) for k in plus}
