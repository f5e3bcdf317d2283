"""``gs-tune data prepare``: counts per split, one-line errors with exit code 2, --allow-pickle."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dataset_files import (
    OMNIGLOT_TREE,
    write_mini,
    write_mini_pickles,
    write_mnist,
    write_omniglot,
    zip_omniglot,
)

from gs_tune.cli import main
from gs_tune.data.omniglot import split_sizes


def prepare_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["data", "prepare", *args])
    out, err = capsys.readouterr()
    return code, out, err


def counts(out: str) -> dict[str, tuple[int, int]]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("train", "val", "test"):
            rows[parts[0]] = (int(parts[1]), int(parts[2]))
    return rows


def test_prepare_omniglot_zips_prints_counts_then_up_to_date(tmp_path: Path, capsys) -> None:
    n = write_omniglot(tmp_path / "tree", OMNIGLOT_TREE)
    zip_omniglot(tmp_path / "tree", tmp_path / "zips")
    code, out, err = prepare_cli(capsys, "--dataset", "omniglot", "--data-root", str(tmp_path / "zips"))
    assert code == 0 and err == ""
    train, val, test = split_sizes(n)
    drawers = 5
    assert counts(out) == {"train": (4 * train, 4 * train * drawers), "val": (4 * val, 4 * val * drawers),
                           "test": (4 * test, 4 * test * drawers)}
    assert "zip layout" in out and "built in" in out and str(tmp_path / "zips" / "gs_tune_cache") in out
    code, out, _ = prepare_cli(capsys, "--dataset", "omniglot", "--data-root", str(tmp_path / "zips"))
    assert code == 0 and "up to date, verified" in out


@pytest.mark.parametrize("dataset, damage, expected", [
    ("mnist", "truncate-idx", "train-images-idx3-ubyte.*truncated"),
    ("miniimagenet", "corrupt-jpeg", "cannot read image .*n0200000001.jpg"),
    ("miniimagenet", "missing-csv", "split file .*val.csv not found"),
    ("omniglot", "empty-root", "images_background"),
])
def test_prepare_errors_are_one_line_with_exit_2(tmp_path: Path, capsys, dataset, damage, expected) -> None:
    if damage == "truncate-idx":
        write_mnist(tmp_path, gz=False)
        path = tmp_path / "train-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "corrupt-jpeg":
        write_mini(tmp_path)
        (tmp_path / "images" / "n0200000001.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    elif damage == "missing-csv":
        write_mini(tmp_path)
        (tmp_path / "val.csv").unlink()
    code, out, err = prepare_cli(capsys, "--dataset", dataset, "--data-root", str(tmp_path))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("gs-tune data: error: ")
    assert re.search(expected, err), err
    assert not list(tmp_path.rglob("*.npy")) and not list(tmp_path.rglob("manifest.json"))


def test_prepare_pickles_need_the_flag(tmp_path: Path, capsys) -> None:
    write_mini_pickles(tmp_path)
    code, _, err = prepare_cli(capsys, "--dataset", "miniimagenet", "--data-root", str(tmp_path))
    assert code == 2 and "--allow-pickle" in err and err.count("\n") == 1
    code, out, _ = prepare_cli(capsys, "--dataset", "miniimagenet", "--data-root", str(tmp_path), "--allow-pickle")
    assert code == 0 and "pickle layout" in out
    assert counts(out) == {"train": (5, 15), "val": (2, 6), "test": (3, 9)}


def test_prepare_bad_root_and_digits(tmp_path: Path, capsys) -> None:
    code, _, err = prepare_cli(capsys, "--dataset", "mnist", "--data-root", str(tmp_path / "nowhere"))
    assert code == 2 and "is not a directory" in err
    code, _, err = prepare_cli(capsys, "--dataset", "mnist")
    assert code == 2 and "needs the directory of its files (--data-root DIR" in err
    code, out, _ = prepare_cli(capsys, "--dataset", "digits")
    assert code == 0 and [counts(out)[s][0] for s in ("train", "val", "test")] == [24, 20, 20]
