"""The MAML-protocol presets: each search space loads, its train config holds the same values, both
hold MAML's published protocol (Finn et al. 2017) and quote its published figures."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from dataset_files import write_mini

from gs_tune.config import train_config
from gs_tune.search.space import SPACES_DIR, load_space

# MAML's protocol as published (paper appendix A.1; Omniglot's iterations from the authors' command)
PROTOCOL = {
    "omniglot_20w1s": {"dataset": "omniglot", "model": "conv4", "filters": 64, "ways": 20, "shots": 1,
                       "inner_lr": 0.1, "inner_steps": 5, "eval_inner_steps": 5, "meta_batch": 16,
                       "iterations": 40000, "outer_lr": 0.001, "test_tasks": 600},
    "miniimagenet_5w1s": {"dataset": "miniimagenet", "model": "conv4", "filters": 32, "ways": 5, "shots": 1,
                          "query": 15, "inner_lr": 0.01, "inner_steps": 5, "eval_inner_steps": 10,
                          "meta_batch": 4, "iterations": 60000, "outer_lr": 0.001, "test_tasks": 600},
    "miniimagenet_5w5s": {"dataset": "miniimagenet", "model": "conv4", "filters": 32, "ways": 5, "shots": 5,
                          "query": 15, "inner_lr": 0.01, "inner_steps": 5, "eval_inner_steps": 10,
                          "meta_batch": 2, "iterations": 60000, "outer_lr": 0.001, "test_tasks": 600},
}
FIGURES = {
    "omniglot_20w1s": ["95.8 ± 0.3"],
    "miniimagenet_5w1s": ["48.70 ± 1.84", "48.07"],
    "miniimagenet_5w5s": ["63.11 ± 0.92", "63.15"],
}


def train_file(name: str) -> Path:
    return SPACES_DIR / "train" / f"{name}.yaml"


@pytest.mark.parametrize("name", PROTOCOL)
def test_preset_space_holds_the_published_protocol(name: str) -> None:
    space = load_space(name)
    assert space.name == name and space.scheduler is None  # every trial runs the whole protocol
    training = {k: v for k, v in PROTOCOL[name].items() if k != "test_tasks"}  # a search never tests
    assert {k: space.fixed[k] for k in training} == training and "test_tasks" not in space.fixed
    assert [p.name for p in space.params] == ["algorithm", "w_cos", "w_l2"]
    assert space.params[0].choices == ("maml", "fomaml", "ahe")
    # the data root is the one value a user must give
    assert space.fixed["data_root"] is None
    assert load_space(name).with_overrides(fix={"data_root": "/data"}).fixed["data_root"] == "/data"


@pytest.mark.parametrize("name", PROTOCOL)
def test_train_config_has_the_space_values(name: str) -> None:
    values = yaml.safe_load(train_file(name).read_text())
    assert values.pop("algorithm") == "maml" and values.pop("test_tasks") == 600
    assert values == load_space(name).fixed
    cfg = train_config({**values, "algorithm": "maml"})
    assert {k: getattr(cfg, k) for k in PROTOCOL[name]} == PROTOCOL[name]


@pytest.mark.parametrize("name", PROTOCOL)
def test_presets_quote_the_published_figures(name: str) -> None:
    for path in (SPACES_DIR / f"{name}.yaml", train_file(name)):
        text = path.read_text(encoding="utf-8")
        assert all(figure in text for figure in FIGURES[name]), path
        assert "Not reproduced in this repository" in text


def test_miniimagenet_preset_runs_end_to_end_on_tiny_files(tmp_path: Path) -> None:
    """The preset's data path and network (84×84 RGB, Conv-4 with 32 filters) for two cheap
    iterations (first-order, one step: MAML's 5 second-order steps cost ~16 s a task on a CPU), on 16
    JPEGs per class: through the cache, the uint8 sampler and TaskBatch.to into the trainer."""
    from gs_tune.trainer import train

    five_each = {s: [f"n{s}{c}" for c in range(5)] for s in ("train", "val", "test")}
    write_mini(tmp_path, per_class=16, classes_of=five_each)
    values = yaml.safe_load(train_file("miniimagenet_5w1s").read_text())
    cfg = train_config({**values, "data_root": str(tmp_path), "iterations": 2, "val_every": 2,
                        "val_tasks": 2, "test_tasks": 2, "meta_batch": 2, "algorithm": "fomaml",
                        "inner_steps": 1, "eval_inner_steps": 1, "query": 3})
    records = list(train(cfg))
    assert records[-1]["kind"] == "test" and 0.0 <= records[-1]["test_accuracy"] <= 1.0
    assert (tmp_path / "gs_tune_cache" / "miniimagenet-size84" / "manifest.json").is_file()
