"""meta_gradient() as an entry point: argument handling, batching resolution, evaluation.

The per-algorithm contract (shapes, vmap = loop, batch = mean of tasks, ...) is
in tests/algorithms/test_contract.py.
"""

from __future__ import annotations

import pytest
import torch

from gs_tune.config import EVAL_BATCH_NORM, AlgoHParams
from gs_tune.data import TaskBatch
from gs_tune.errors import ConfigError
from gs_tune.meta import adapt_and_evaluate, make_loss_fn, meta_gradient, resolve_batching
from gs_tune.models import build_model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (see tests/algorithms/conftest.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_tasks(num_tasks: int, seed: int = 0, query: int = 3) -> TaskBatch:
    gen = torch.Generator().manual_seed(seed)
    xs = torch.randn(num_tasks, 5, 1, 16, 16, generator=gen, dtype=torch.float64)
    xq = torch.randn(num_tasks, 5 * query, 1, 16, 16, generator=gen, dtype=torch.float64)
    ys = torch.arange(5).expand(num_tasks, -1).contiguous()
    yq = torch.arange(5).repeat_interleave(query).expand(num_tasks, -1).contiguous()
    return TaskBatch(xs, ys, xq, yq)


@pytest.fixture(scope="module")
def model():
    return build_model("mlp", (1, 16, 16), 5, filters=4, generator=torch.Generator().manual_seed(0)).double()


def test_resolve_batching():
    assert resolve_batching("auto", torch.device("cpu")) == "loop"
    assert resolve_batching("auto", torch.device("cuda")) == "vmap"
    for explicit in ("loop", "vmap"):
        assert resolve_batching(explicit, torch.device("cpu")) == explicit
        assert resolve_batching(explicit, torch.device("cuda")) == explicit


def test_auto_batching_on_cpu_is_the_loop(model):
    tasks = random_tasks(2)
    kw = {"inner_lr": 0.1, "inner_steps": 2, "w_cos": 0.2, "hvp": "finite_difference"}
    auto, _ = meta_gradient(model, tasks, "ahe", batching="auto", **kw)
    loop, _ = meta_gradient(model, tasks, "ahe", batching="loop", **kw)
    for k in auto:
        assert torch.equal(auto[k], loop[k]), k


def test_unknown_algorithm_raises(model):
    with pytest.raises(ConfigError) as info:
        meta_gradient(model, random_tasks(1), "imaml")
    assert info.value.field == "algorithm"


@pytest.mark.parametrize(
    "bad, field",
    [({"inner_lr": -0.1}, "inner_lr"), ({"hvp": "lanczos"}, "hvp"), ({"ahe_at": "middle"}, "ahe_at"),
     ({"batching": "threads"}, "batching"), ({"w_cos": -1.0}, "w_cos"), ({"inner_lr_typo": 0.1}, "inner_lr_typo")],
)
def test_invalid_hyperparameters_name_the_field(model, bad, field):
    with pytest.raises(ConfigError) as info:
        meta_gradient(model, random_tasks(1), "ahe", **bad)
    assert info.value.field == field


def test_keywords_override_an_hparams_object(model):
    tasks = random_tasks(2)
    hp = AlgoHParams(inner_lr=0.3, inner_steps=1, w_dot=0.3, hvp="exact")
    via_object, _ = meta_gradient(model, tasks, "ahe", hp, inner_steps=2, batching="loop")
    via_keywords, _ = meta_gradient(
        model, tasks, "ahe", inner_lr=0.3, inner_steps=2, w_dot=0.3, hvp="exact", batching="loop"
    )
    for k in via_object:
        assert torch.equal(via_object[k], via_keywords[k]), k
    plain, _ = meta_gradient(model, tasks, "ahe", hp, batching="loop")
    assert not torch.equal(plain["net.1.weight"], via_object["net.1.weight"])


def test_loss_fn_is_cross_entropy_and_accuracy(model):
    tasks = random_tasks(1)
    params = dict(model.named_parameters())
    loss, acc = make_loss_fn(model)(params, tasks.x_query[0], tasks.y_query[0])
    logits = model(tasks.x_query[0])
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(logits, tasks.y_query[0]))
    assert float(acc) == float((logits.argmax(-1) == tasks.y_query[0]).double().mean())


@pytest.mark.parametrize("steps", [1, 3])
def test_adapt_and_evaluate_scores_what_fomaml_adapts(model, steps):
    """Validation and training adapt the same way: per-task query loss/accuracy agree with fomaml's."""
    tasks = random_tasks(3)
    losses, accs = adapt_and_evaluate(model, tasks, inner_lr=0.2, inner_steps=steps)
    assert losses.shape == accs.shape == (3,)
    assert not losses.requires_grad
    for t in range(3):
        _, stats = meta_gradient(model, tasks.task(t), "fomaml", inner_lr=0.2, inner_steps=steps)
        assert float(losses[t]) == pytest.approx(float(stats["query_loss"]), rel=1e-12)
        assert float(accs[t]) == float(stats["query_accuracy"])
    before, _ = adapt_and_evaluate(model, tasks, inner_lr=0.2, inner_steps=0)  # no adaptation: loss at θ
    assert not torch.allclose(before, losses)


def _query_part(tasks: TaskBatch, part: slice) -> TaskBatch:
    return TaskBatch(tasks.x_support, tasks.y_support, tasks.x_query[:, part], tasks.y_query[:, part])


@pytest.mark.parametrize("name", ["mlp", "conv4"])
def test_support_statistics_score_each_query_example_on_its_own(name):
    """batch_norm="support": the query loss over a set is the mean over any split of it; with
    the query set's own statistics (transductive) it is not."""
    model = build_model(name, (1, 16, 16), 5, filters=4, generator=torch.Generator().manual_seed(1)).double()
    tasks = random_tasks(2, seed=3, query=4)
    halves = [_query_part(tasks, slice(0, None, 2)), _query_part(tasks, slice(1, None, 2))]
    for mode, independent in (("support", True), ("transductive", False)):
        whole, _ = adapt_and_evaluate(model, tasks, 0.2, 2, batch_norm=mode)
        parts = [adapt_and_evaluate(model, half, 0.2, 2, batch_norm=mode)[0] for half in halves]
        assert torch.allclose(whole, (parts[0] + parts[1]) / 2, rtol=1e-12) == independent, mode


def test_support_statistics_on_the_support_set_are_its_batch_statistics(model):
    """Scoring the support set itself, both modes normalise with the same statistics."""
    tasks = random_tasks(2, seed=4)
    on_support = TaskBatch(tasks.x_support, tasks.y_support, tasks.x_support, tasks.y_support)
    support, _ = adapt_and_evaluate(model, on_support, 0.2, 1, batch_norm="support")
    transductive, _ = adapt_and_evaluate(model, on_support, 0.2, 1, batch_norm="transductive")
    torch.testing.assert_close(support, transductive, rtol=1e-12, atol=1e-12)
    plain, _ = adapt_and_evaluate(model, tasks, 0.2, 1)
    assert not torch.allclose(adapt_and_evaluate(model, tasks, 0.2, 1, batch_norm="support")[0], plain)
    for layer in model.modules():  # no hook left behind
        assert not layer._forward_hooks


def test_unknown_batch_norm_mode_names_the_field(model):
    with pytest.raises(ConfigError) as info:
        adapt_and_evaluate(model, random_tasks(1), 0.2, 1, batch_norm="running")
    assert info.value.field == "eval_batch_norm"


@pytest.mark.parametrize("batch_norm", EVAL_BATCH_NORM)
def test_evaluation_is_the_same_in_either_layout(batch_norm):
    """A channels-last Conv-4 (its images laid out to match) scores tasks as the standard one does."""
    gen = torch.Generator
    plain = build_model("conv4", (1, 16, 16), 5, 4, gen().manual_seed(5)).double()
    nhwc = build_model("conv4", (1, 16, 16), 5, 4, gen().manual_seed(5), channels_last=True).double()
    tasks = random_tasks(2, seed=6)
    a_loss, a_acc = adapt_and_evaluate(plain, tasks, 0.2, 2, batch_norm=batch_norm)
    b_loss, b_acc = adapt_and_evaluate(nhwc, tasks, 0.2, 2, batch_norm=batch_norm)
    torch.testing.assert_close(b_loss, a_loss, rtol=1e-10, atol=1e-12)
    assert torch.equal(b_acc, a_acc)


def test_default_ahe_hparams_give_a_nonzero_correction():
    """The engine side of the default: with no weights given the correction is there (not FOMAML)."""
    from gs_tune.config import train_config

    hp = train_config({"algorithm": "ahe"}).algo_hparams()
    assert hp.w_cos > 0 and hp.has_correction
    conv = build_model("conv4", (1, 16, 16), 5, 4, torch.Generator().manual_seed(0)).double()
    tasks = random_tasks(2)
    grads, stats = meta_gradient(conv, tasks, "ahe", hp)
    fomaml, _ = meta_gradient(conv, tasks, "fomaml", hp)
    assert float(stats["correction_norm"]) > 0.01 * float(stats["grad_norm"])
    assert not torch.allclose(grads["head.weight"], fomaml["head.weight"])
