"""Conv-4 and MLP: shapes, no batch-norm state, seeded initialisation, size checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gs_tune.errors import ConfigError
from gs_tune.models import Conv4, build_model, input_memory_format


@pytest.mark.parametrize(
    "image_shape, filters, head_in",
    [((1, 28, 28), 32, 32 * 1 * 1), ((3, 84, 84), 32, 32 * 5 * 5), ((3, 84, 84), 8, 8 * 5 * 5)],
)
def test_conv4_shapes(image_shape, filters, head_in):
    model = build_model("conv4", image_shape, ways=5, filters=filters, generator=torch.Generator().manual_seed(0))
    assert isinstance(model, Conv4)
    assert model.head.in_features == head_in  # 28→14→7→3→1 and 84→42→21→10→5 after four 2×2 pools
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [filters] * 4
    assert convs[0].in_channels == image_shape[0]
    out = model(torch.rand(3, *image_shape))
    assert out.shape == (3, 5)


def test_mlp_shapes():
    model = build_model("mlp", (1, 28, 28), ways=5, filters=8)
    assert model(torch.rand(4, 1, 28, 28)).shape == (4, 5)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 64), (64, 32), (32, 5)]


@pytest.mark.parametrize("name", ["conv4", "mlp"])
def test_no_batch_norm_buffers_or_running_stats(name):
    model = build_model(name, (1, 28, 28), ways=5, filters=8)
    assert list(model.buffers()) == []
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms, "both models use batch norm"
    for bn in norms:
        assert not bn.track_running_stats
        assert bn.running_mean is None and bn.running_var is None
    # batch statistics in eval mode too: train and eval give the same outputs, and nothing changes
    x = torch.rand(6, 1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out_train = model.train()(x)
    out_eval = model.eval()(x)
    assert torch.equal(out_train, out_eval)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("name", ["conv4", "mlp"])
def test_generator_seeds_the_initialisation(name):
    def params(seed: int) -> dict[str, torch.Tensor]:
        model = build_model(name, (1, 28, 28), 5, 8, generator=torch.Generator().manual_seed(seed))
        return dict(model.named_parameters())

    a, b, c = params(7), params(7), params(8)
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    weights = [k for k in a if k.endswith("weight") and a[k].dim() > 1]
    assert weights
    for k in weights:  # every conv/linear weight is drawn from the generator
        assert not torch.equal(a[k], c[k]), k


def test_seeded_initialisation_ignores_the_global_rng():
    with torch.random.fork_rng():
        torch.manual_seed(123)
        a = build_model("conv4", (1, 28, 28), 5, 8, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(456)
        b = build_model("conv4", (1, 28, 28), 5, 8, generator=torch.Generator().manual_seed(0))
    for (k, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), k


def test_init_bounds():
    model = build_model("conv4", (1, 28, 28), 5, 8, generator=torch.Generator().manual_seed(0))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            bound = 1.0 / m.weight[0].numel() ** 0.5
            assert float(m.weight.detach().abs().max()) <= bound
            assert float(m.bias.detach().abs().max()) <= bound


@pytest.mark.parametrize("size", [8, 15])
def test_too_small_image_raises(size):
    with pytest.raises(ConfigError) as info:
        build_model("conv4", (1, size, size), 5)
    assert info.value.field == "model"
    assert "16" in str(info.value)


def test_smallest_image_works():
    model = build_model("conv4", (1, 16, 16), 5, filters=4)
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 5)


def test_unknown_model_raises():
    with pytest.raises(ConfigError) as info:
        build_model("resnet", (1, 28, 28), 5)
    assert info.value.field == "model"


def test_channels_last_is_a_layout_not_other_values():
    """Same seed, same values; the convolution weights (not the rest) are stored NHWC, and the
    input layout the engine should use follows from the weights."""
    gen = torch.Generator
    plain = build_model("conv4", (3, 32, 32), 5, 8, generator=gen().manual_seed(2))
    nhwc = build_model("conv4", (3, 32, 32), 5, 8, generator=gen().manual_seed(2), channels_last=True)
    for (k, a), (_, b) in zip(plain.named_parameters(), nhwc.named_parameters()):
        assert torch.equal(a, b), k
        assert b.is_contiguous(memory_format=torch.channels_last) if b.dim() == 4 else b.is_contiguous(), k
    assert not any(p.dim() == 4 and not p.is_contiguous() for p in plain.parameters())
    assert input_memory_format(nhwc) is torch.channels_last
    assert input_memory_format(plain) is None
    assert input_memory_format(build_model("mlp", (1, 28, 28), 5, channels_last=True)) is None
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(nhwc.double()(x.contiguous(memory_format=torch.channels_last)), plain.double()(x))
