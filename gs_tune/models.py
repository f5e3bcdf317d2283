"""Models: Conv-4 (MAML's few-shot network) and a small MLP. Plain nn.Modules.

Batch norm always normalises with the statistics of the batch it sees and keeps
no running averages, as in MAML: adaptation and evaluation then see the same
normalisation, and the network stays a pure function of its parameters, which
``torch.func`` (functional_call, grad, vmap) needs. Scoring a whole query set
in one batch is therefore transductive (each prediction depends on the other
queries), as in MAML's code; :class:`SupportStatistics` gives the alternative
where the query is normalised with the support set's statistics.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from gs_tune.errors import ConfigError


class Conv4(nn.Module):
    """4 × [3×3 conv, batch norm (batch statistics), ReLU, 2×2 max-pool], then a linear head."""

    def __init__(self, in_channels: int, ways: int, image_size: int, filters: int = 32):
        super().__init__()
        blocks = []
        channels = in_channels
        for _ in range(4):
            # max-pool before ReLU: both are monotone, so relu(pool(x)) == pool(relu(x)),
            # but the ReLU (and its backward) then touches a quarter of the activations,
            # about 12% of a Conv-4 gradient's time on a CPU
            blocks += [
                nn.Conv2d(channels, filters, kernel_size=3, padding=1),
                nn.BatchNorm2d(filters, track_running_stats=False),
                nn.MaxPool2d(2),
                nn.ReLU(),
            ]
            channels = filters
        self.features = nn.Sequential(*blocks)
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ConfigError("model", f"conv4 needs images of at least 16×16, got {image_size}×{image_size}")
        self.head = nn.Linear(filters * side * side, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class MLP(nn.Module):
    """Two hidden ReLU layers with batch norm; the cheap model for quick checks."""

    def __init__(self, in_features: int, ways: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden, track_running_stats=False),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.BatchNorm1d(hidden // 2, track_running_stats=False),
            nn.ReLU(),
            nn.Linear(hidden // 2, ways),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_model(
    name: str, image_shape: tuple[int, int, int], ways: int, filters: int = 32,
    generator: torch.Generator | None = None, channels_last: bool = False,
) -> nn.Module:
    """A freshly initialised model; ``generator`` seeds the initialisation without global state.

    ``channels_last`` stores convolution weights channels-last (NHWC), and
    :func:`gs_tune.meta.meta_gradient` and :func:`gs_tune.meta.adapt_and_evaluate`
    then lay images out the same way (a loop over tasks; vmap keeps the standard
    layout). On a CPU that takes oneDNN's NHWC kernels, faster for the
    first-order algorithms on Conv-4 (BENCHMARKS.md §1), but PyTorch's channels-last
    batch norm computes its statistics with less care: float32 gradients drift from
    float64 by up to ~1e-4 to 3e-2 instead of ~1e-6 (BENCHMARKS.md §2), hence off by default. Same values
    in exact arithmetic; the MLP has no convolution and is unaffected.
    """
    channels, height, width = image_shape
    if name == "conv4":
        model: nn.Module = Conv4(channels, ways, min(height, width), filters)
    elif name == "mlp":
        model = MLP(channels * height * width, ways, hidden=8 * filters)
    else:
        raise ConfigError("model", f"got {name!r}, allowed: conv4, mlp")
    if generator is not None:
        _reinitialise(model, generator)  # before the layout change: in-place draws fill memory order
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def input_memory_format(model: nn.Module) -> torch.memory_format | None:
    """channels_last when the model's convolution weights are stored so, else None (leave inputs)."""
    for p in model.parameters():
        if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous():
            return torch.channels_last
    return None


def _reinitialise(model: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default init, but drawn from ``generator`` instead of the global RNG."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                bound = 1.0 / fan_in**0.5
                # kaiming_uniform(a=√5) as nn.Linear/Conv2d use reduces to U(-1/√fan_in, 1/√fan_in)
                module.weight.uniform_(-bound, bound, generator=generator)
                if module.bias is not None:
                    module.bias.uniform_(-bound, bound, generator=generator)


class SupportStatistics:
    """Batch-norm statistics recorded on one batch and used to normalise later ones.

    ``with SupportStatistics(model).recording(): model(x_support)`` records, per
    batch-norm layer, the mean and (biased) variance of its input, as that layer
    computed them; inside ``.applied()`` every batch-norm layer normalises its
    input with them instead of the batch's own, so each example is scored on its
    own (non-transductive). Works for any module and under ``functional_call``:
    forward hooks read the layer's weight and bias as the call sees them.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    @contextmanager
    def _hooked(self, hook) -> Iterator[None]:
        handles = [layer.register_forward_hook(hook) for layer in self.layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def recording(self):
        self.stats.clear()

        def record(layer: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            x = inputs[0]
            dims = [d for d in range(x.dim()) if d != 1]  # every axis but the channels
            self.stats[layer] = (x.mean(dims), x.var(dims, unbiased=False))

        return self._hooked(record)

    def applied(self):
        def apply(layer: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> torch.Tensor:
            mean, var = self.stats[layer]
            return F.batch_norm(inputs[0], mean, var, layer.weight, layer.bias, False, 0.0, layer.eps)

        return self._hooked(apply)
