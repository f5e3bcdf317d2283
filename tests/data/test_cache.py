"""The prepared-dataset cache: round trip, what makes it rebuilt, and one copy for many processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from dataset_files import OMNIGLOT_TREE, SPLIT_NAMES, write_mini, write_omniglot

from gs_tune.data import ClassSplit, FewShotDataset, load_dataset
from gs_tune.data.cache import (
    CACHE_ENV,
    CACHE_VERSION,
    MANIFEST,
    Source,
    cache_dir,
    load_or_build,
    open_cache,
    write_cache,
)
from gs_tune.data.miniimagenet import miniimagenet_source
from gs_tune.data.omniglot import omniglot_source
from gs_tune.data.prepare import prepare

REPO = Path(__file__).resolve().parents[2]


def synthetic(seed: int = 0, per_split: int = 40, shape=(3, 8, 8)) -> FewShotDataset:
    rng = np.random.default_rng(seed)
    splits = []
    for s in SPLIT_NAMES:
        labels = np.repeat(np.arange(4), per_split // 4).astype(np.int64)
        images = rng.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8)
        splits.append(ClassSplit(images, labels, tuple(f"{s}-{c}" for c in range(4))))
    return FewShotDataset("synthetic", *splits)


def synthetic_source(root: Path, data: FewShotDataset, calls: list[int] | None = None) -> Source:
    def decode() -> FewShotDataset:
        if calls is not None:
            calls.append(1)
            time.sleep(0.3)  # long enough for a second builder to arrive while the first decodes
        return data

    return Source("synthetic", root, "generated", "fp-1", decode, params={"size": data.image_shape[-1]})


def test_round_trip(tmp_path: Path) -> None:
    data = synthetic()
    directory = tmp_path / "cache"
    write_cache(directory, data, synthetic_source(tmp_path, data))
    back = open_cache(directory, synthetic_source(tmp_path, data))
    assert back is not None and back.name == "synthetic"
    for s in SPLIT_NAMES:
        assert isinstance(back.split(s).images, np.memmap) and not back.split(s).images.flags.writeable
        np.testing.assert_array_equal(back.split(s).images, data.split(s).images)
        np.testing.assert_array_equal(back.split(s).labels, data.split(s).labels)
        assert back.split(s).class_names == data.split(s).class_names
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["version"] == CACHE_VERSION and manifest["params"] == {"size": 8}
    assert manifest["source"] == {"kind": "generated", "fingerprint": "fp-1", "items": 0}
    assert manifest["splits"]["val"]["images"]["shape"] == [40, 3, 8, 8]
    assert manifest["splits"]["val"]["class_names"] == ["val-0", "val-1", "val-2", "val-3"]
    assert len(manifest["content_hash"]) == 32
    # no temporary file is left, and only the listed arrays are there
    listed = {e[k]["file"] for e in manifest["splits"].values() for k in ("images", "labels")}
    assert {p.name for p in directory.iterdir()} == listed | {MANIFEST}


def test_float_images_are_not_cached(tmp_path: Path) -> None:
    data = synthetic()
    floats = FewShotDataset("f", *(ClassSplit(data.split(s).images / 255.0, data.split(s).labels,
                                              data.split(s).class_names) for s in SPLIT_NAMES))
    with pytest.raises(Exception, match="only uint8 images are cached"):
        write_cache(tmp_path, floats, synthetic_source(tmp_path, floats))


def test_stale_cache_is_rebuilt_when_a_source_file_changes(tmp_path: Path) -> None:
    write_omniglot(tmp_path, OMNIGLOT_TREE)
    first = load_or_build(omniglot_source(str(tmp_path)))
    assert first.built
    assert not load_or_build(omniglot_source(str(tmp_path))).built
    # redraw one character's images: same names, new contents and dates
    folder = tmp_path / "images_evaluation" / "Tengwar" / "character01"
    for png in folder.glob("*.png"):
        shutil.copy(next((tmp_path / "images_background" / "Latin" / "character01").glob("*.png")), png)
        os.utime(png, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = load_or_build(omniglot_source(str(tmp_path)))
    assert again.built and again.directory == first.directory
    changed = [s for s in SPLIT_NAMES
               if not np.array_equal(again.dataset.split(s).images, first.dataset.split(s).images)]
    assert len(changed) == 1
    assert len(list(again.directory.glob("*.npy"))) == 6  # the old arrays were removed


def test_other_version_or_foreign_cache_is_rebuilt(tmp_path: Path) -> None:
    write_mini(tmp_path / "a")
    write_mini(tmp_path / "b", per_class=5)
    built = load_or_build(miniimagenet_source(str(tmp_path / "a"), size=8))
    manifest_path = built.directory / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = CACHE_VERSION + 1  # as a newer gs-tune would write it
    manifest_path.write_text(json.dumps(manifest))
    assert load_or_build(miniimagenet_source(str(tmp_path / "a"), size=8)).built
    # a cache copied in from another data root describes other files
    shutil.copytree(tmp_path / "a" / "gs_tune_cache", tmp_path / "b" / "gs_tune_cache")
    foreign = load_or_build(miniimagenet_source(str(tmp_path / "b"), size=8))
    assert foreign.built and len(foreign.dataset.train.labels) == 25


def test_damaged_array_is_caught_by_prepare(tmp_path: Path) -> None:
    write_mini(tmp_path)
    first = prepare("miniimagenet", str(tmp_path))
    assert first.opened.built
    expected = np.array(first.opened.dataset.test.images)  # a copy: the map would show the damage
    spec = json.loads((first.opened.directory / MANIFEST).read_text())["splits"]["test"]["images"]
    path = first.opened.directory / spec["file"]
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # same size, one pixel flipped: only the hash can tell
    path.write_bytes(bytes(raw))
    assert not load_or_build(miniimagenet_source(str(tmp_path))).built  # opening does not re-hash
    again = prepare("miniimagenet", str(tmp_path))
    assert again.opened.built
    np.testing.assert_array_equal(again.opened.dataset.test.images, expected)


def test_concurrent_first_use_decodes_once(tmp_path: Path) -> None:
    data, calls = synthetic(), []
    results = []
    workers = [threading.Thread(target=lambda: results.append(load_or_build(synthetic_source(tmp_path, data, calls))))
               for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(calls) == 1 and sum(r.built for r in results) == 1
    for r in results:
        np.testing.assert_array_equal(r.dataset.test.images, data.test.images)


def test_cache_dir_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = synthetic()
    source = synthetic_source(tmp_path / "root", data)
    (tmp_path / "root").mkdir()
    assert cache_dir(source) == (tmp_path / "root").resolve() / "gs_tune_cache" / "synthetic-size8"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "shared"))
    opened = load_or_build(source)
    assert opened.directory.parent == tmp_path / "shared" and opened.directory.name.startswith("synthetic-size8-")
    assert not (tmp_path / "root" / "gs_tune_cache").exists()


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from pathlib import Path
    from gs_tune.data.cache import open_cache

    def smaps_of(name):
        fields, inside = {}, False
        for line in Path("/proc/self/smaps").read_text().splitlines():
            head = line.split()
            if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
                inside = line.endswith(name)
            elif inside and head[0].endswith(":") and len(head) == 3:
                fields[head[0][:-1]] = fields.get(head[0][:-1], 0) + int(head[1]) * 1024
        return fields

    def anon():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

    before = anon()
    data = open_cache(Path(sys.argv[1]))
    images = data.train.images
    total = int(images.sum(dtype=np.uint64))  # touches every page
    print("touched", flush=True)
    sys.stdin.readline()  # until the other process has touched them too
    print(json.dumps({"memmap": isinstance(images, np.memmap), "bytes": images.nbytes, "sum": total,
                      "anon_growth": anon() - before, **smaps_of(Path(images.filename).name)}), flush=True)
    sys.stdin.readline()  # stay mapped until the other process has reported too
""")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads Linux's /proc/self/smaps")
def test_two_processes_share_one_copy(tmp_path: Path) -> None:
    data = synthetic(per_split=4000, shape=(3, 32, 32))  # 12 MB of train images
    write_cache(tmp_path / "cache", data, synthetic_source(tmp_path, data))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    children = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache")], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    for child in children:
        assert child.stdout.readline().strip() == "touched"
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    reports = [json.loads(child.stdout.readline()) for child in children]
    for child in children:
        child.communicate("", timeout=60)
    size = data.train.images.nbytes
    for r in reports:
        assert r["memmap"] and r["sum"] == int(data.train.images.sum(dtype=np.uint64))
        # every page of the file is resident and mapped by both processes: one physical copy
        assert r["Rss"] >= 0.95 * size and r["Shared_Clean"] >= 0.95 * size
        assert r["Private_Clean"] + r["Private_Dirty"] <= 0.05 * size
        assert r["Pss"] <= 0.55 * size  # each process is charged half
        assert r["anon_growth"] < 0.25 * size  # and no private copy was made on the heap


def test_load_dataset_reads_the_cache(tmp_path: Path) -> None:
    write_mini(tmp_path)
    ds = load_dataset("miniimagenet", str(tmp_path))
    assert isinstance(ds.train.images, np.memmap)
    assert Path(ds.train.images.filename).parent == tmp_path / "gs_tune_cache" / "miniimagenet-size84"
