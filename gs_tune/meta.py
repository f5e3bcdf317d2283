"""meta_gradient(): the one entry point over every algorithm, for any nn.Module."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from gs_tune.algorithms import ALGORITHMS, STAT_NAMES
from gs_tune.algorithms.common import LossFn, Params, autograd_grad, first_order_adapt
from gs_tune.config import EVAL_BATCH_NORM, AlgoHParams, algo_hparams
from gs_tune.data.tasks import TaskBatch
from gs_tune.errors import ConfigError
from gs_tune.models import SupportStatistics, input_memory_format


def make_loss_fn(model: nn.Module) -> LossFn:
    """Cross-entropy and accuracy of ``model`` evaluated at a parameter dict."""
    buffers = dict(model.named_buffers())

    def loss_fn(params: Params, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the float64 finite difference evaluates a float32 model in float64: buffers follow
        bufs = {k: b.to(x.dtype) if b.is_floating_point() else b for k, b in buffers.items()}
        logits = functional_call(model, (params, bufs), (x,))
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).to(logits.dtype).mean()
        return loss, acc

    return loss_fn


def in_model_layout(model: nn.Module, tasks: TaskBatch) -> TaskBatch:
    """The tasks with each image set (N, C, H, W) stored like the model's convolution weights.

    A channels-last model (``build_model(channels_last=True)``) then gets
    channels-last images whether a task is sliced out (loop) or vmapped over;
    the layout cannot be changed inside vmap, hence here, once per call.
    Already laid out (or a contiguous model): no copy.
    """
    if input_memory_format(model) is None:
        return tasks

    def nhwc(x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3) if x.dim() == 5 else x

    return TaskBatch(nhwc(tasks.x_support), tasks.y_support, nhwc(tasks.x_query), tasks.y_query)


def resolve_batching(batching: str, device: torch.device) -> str:
    """vmap removes per-task launch overhead on a GPU; on a CPU a loop measured as fast or faster."""
    if batching != "auto":
        return batching
    return "vmap" if device.type == "cuda" else "loop"


def meta_gradient(
    model: nn.Module, tasks: TaskBatch, algorithm: str, hparams: AlgoHParams | None = None, **kwargs: Any
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Meta-gradient of ``model`` on a batch of tasks, averaged over tasks.

    ``algorithm`` is maml, fomaml, reptile or ahe; hyperparameters come as an
    :class:`AlgoHParams` or as keywords (``inner_lr=0.4, w_cos=0.1, ...``).
    Returns ``grads`` keyed like ``model.named_parameters()`` and ``stats``
    (0-d tensors, means over tasks): query_loss, query_accuracy, grad_norm
    (first-order ‖g_Q‖), correction_norm, grad_cosine (support vs query
    gradient); NaN where an algorithm does not compute one.
    """
    if algorithm not in ALGORITHMS:
        raise ConfigError("algorithm", f"got {algorithm!r}, allowed: {', '.join(ALGORITHMS)}")
    hp = algo_hparams({**(dataclasses.asdict(hparams) if hparams else {}), **kwargs})
    batching = resolve_batching(hp.batching, tasks.x_support.device)
    hp = dataclasses.replace(hp, batching=batching)  # the algorithms pick their autodiff by it
    step = ALGORITHMS[algorithm]
    loss_fn = make_loss_fn(model)
    params = {name: p.detach() for name, p in model.named_parameters()}
    if batching != "vmap":
        tasks = in_model_layout(model, tasks)
    elif input_memory_format(model) is not None:
        # vmap cannot lay tensors out channels-last, so it gets the standard layout; a clone,
        # because .contiguous() keeps strides that merely pass as contiguous (one input channel)
        params = {name: p.clone(memory_format=torch.contiguous_format) for name, p in params.items()}

    def per_task(p: Params, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor):
        return step(loss_fn, p, xs, ys, xq, yq, hp)

    if batching == "vmap":
        grads, stats = vmap(per_task, in_dims=(None, 0, 0, 0, 0))(params, *tasks)
        grads = {k: g.mean(0) for k, g in grads.items()}
        stats = {k: s.mean(0).detach() for k, s in stats.items()}
    else:
        grads, stats = {}, {}
        for t in range(tasks.num_tasks):
            g, s = per_task(params, *(tensor[t] for tensor in tasks))
            for k in g:
                grads[k] = grads[k] + g[k] if k in grads else g[k]
            for k in s:
                stats[k] = stats[k] + s[k] if k in stats else s[k]
        grads = {k: g / tasks.num_tasks for k, g in grads.items()}
        stats = {k: (s / tasks.num_tasks).detach() for k, s in stats.items()}
    return grads, {k: stats[k] for k in STAT_NAMES}


def adapt_and_evaluate(
    model: nn.Module, tasks: TaskBatch, inner_lr: float, inner_steps: int, batch_norm: str = "transductive",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task query loss and accuracy after ``inner_steps`` SGD steps on the support set.

    The same procedure scores every algorithm at validation and test time, so
    accuracies are comparable whichever meta-gradient trained the model.
    ``batch_norm`` says how the query set is normalised: ``transductive`` with
    its own batch statistics, the whole query set in one batch (MAML's code
    does this), or ``support`` with the support set's statistics at the adapted
    parameters, so that each query example is scored on its own.
    """
    if batch_norm not in EVAL_BATCH_NORM:
        raise ConfigError("eval_batch_norm", f"got {batch_norm!r}, allowed: {', '.join(EVAL_BATCH_NORM)}")
    tasks = in_model_layout(model, tasks)
    loss_fn = make_loss_fn(model)
    reference = SupportStatistics(model)
    params = {name: p.detach() for name, p in model.named_parameters()}
    losses, accs = [], []
    for t in range(tasks.num_tasks):
        xs, ys, xq, yq = (tensor[t] for tensor in tasks)
        iterates, _, _ = first_order_adapt(loss_fn, params, xs, ys, inner_lr, inner_steps, autograd_grad)
        with torch.no_grad():
            if batch_norm == "support":
                with reference.recording():
                    loss_fn(iterates[-1], xs, ys)
                with reference.applied():
                    loss, acc = loss_fn(iterates[-1], xq, yq)
            else:
                loss, acc = loss_fn(iterates[-1], xq, yq)
        losses.append(loss)
        accs.append(acc)
    return torch.stack(losses), torch.stack(accs)
