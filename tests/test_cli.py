"""gs_tune/cli.py: flags, help, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest

from gs_tune.cli import _fixes, build_parser, main
from gs_tune.errors import ConfigError


def test_train_help_shows_each_fields_docstring_and_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "K: inner SGD steps on the support set. (default: 1)" in out
    assert "--device DEVICE" in out and "--out OUT" in out


@pytest.mark.parametrize("argv, message", [
    (["train", "--algorithm", "sgd"], "gs-tune train: error: algorithm: got 'sgd', allowed: "),
    (["train", "--ways", "30"], "gs-tune train: error: ways: 30-way tasks need 30 classes"),
    (["train", "--device", "tpu"], "gs-tune train: error: device: got 'tpu', allowed: auto, cpu, cuda"),
    (["train", "--config", "/nonexistent.yaml"], "gs-tune train: error: config: cannot read /nonexistent.yaml"),
])
def test_bad_train_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "out"), "--iterations", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message), err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_config_file_holding_a_list_is_refused(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("- 1\n- 2\n")
    assert main(["train", "--config", str(path)]) == 2
    assert "must hold a mapping of config fields" in capsys.readouterr().err


def test_train_runs_and_writes_result_json(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "mlp", "--filters", "4", "--iterations", "4", "--val-every", "2",
            "--val-tasks", "5", "--test-tasks", "10", "--out", str(out), "--no-progress", "--tensorboard"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "test accuracy" in text and "95% t-interval over 10 test tasks" in text
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["iterations"] == 4 and 0.0 <= result["test_accuracy"] <= 1.0
    assert any((out / "tensorboard").iterdir())


def test_config_file_values_and_flags_combine(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ways: 3\ninner_lr: 0.2\n")
    args = build_parser().parse_args(["train", "--config", str(path), "--inner-lr", "0.1"])
    from gs_tune.cli import _config_from_args

    cfg = _config_from_args(args)
    assert (cfg.ways, cfg.inner_lr) == (3, 0.1)


def test_fix_values_are_yaml():
    assert _fixes(["algorithm=maml", "w_cos=0.1", "ahe-clip=null"]) == {
        "algorithm": "maml", "w_cos": 0.1, "ahe_clip": None}
    with pytest.raises(ConfigError, match="^fix: expects KEY=VALUE"):
        _fixes(["algorithm"])


@pytest.mark.parametrize("command", ["results", "report", "evaluate", "tensorboard"])
def test_result_commands_on_missing_run_dir_exit_2(tmp_path, command, capsys):
    assert main([command, str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("fix, message", [
    ("test_tasks=200", "gs-tune launch: error: fixed.test_tasks: got 200, allowed: 0"),
    ("ways=30", "gs-tune launch: error: ways: 30-way tasks need 30 classes but the train split has 24"),
    ("data_root=/nonexistent", "gs-tune launch: error: data_root: /nonexistent is not a directory"),
])
def test_launch_refuses_what_it_can_know_before_the_search_and_writes_nothing(fix, message, tmp_path, capsys):
    assert main(["launch", "--space", "cosine_l2", "--fix", fix, "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_launch_refuses_an_unknown_trial_device(tmp_path, capsys):
    assert main(["launch", "--space", "cosine_l2", "--trial-device", "tpu", "--runs-dir", str(tmp_path)]) == 2
    assert "trial_device: got 'tpu', allowed: auto, cpu, cuda" in capsys.readouterr().err
