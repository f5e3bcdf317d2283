"""``gs-tune data prepare``: check a dataset's files, decode them once into the cache, print counts.

The same happens on a dataset's first use (``load_dataset``); running it beforehand fails fast on
a missing or corrupt file, before any trial starts, and takes the decoding out of the first trial.
"""

from __future__ import annotations

import argparse
import importlib
import time
from dataclasses import dataclass
from pathlib import Path

from gs_tune.data.cache import Opened, Source, load_or_build
from gs_tune.data.tasks import SPLITS, FewShotDataset
from gs_tune.errors import DataError

# dataset -> "module:function" returning its Source; digits is embedded and needs no files
SOURCES = {
    "mnist": "gs_tune.data.mnist:mnist_source",
    "omniglot": "gs_tune.data.omniglot:omniglot_source",
    "miniimagenet": "gs_tune.data.miniimagenet:miniimagenet_source",
}


def find_source(name: str, root: str | None, allow_pickle: bool = False) -> Source:
    """The files of dataset ``name`` under ``root``, checked present (not yet decoded)."""
    if name not in SOURCES:
        raise DataError(f"dataset: got {name!r}, allowed: digits, {', '.join(SOURCES)}")
    if not root:
        raise DataError(f"data_root: dataset {name!r} needs the directory of its files "
                        "(--data-root DIR; in a search, --fix data_root=DIR)")
    if not Path(root).is_dir():
        raise DataError(f"data_root: {root} is not a directory (dataset {name!r})")
    module, func = SOURCES[name].split(":")
    make = getattr(importlib.import_module(module), func)
    return make(root, allow_pickle=allow_pickle) if name == "miniimagenet" else make(root)


def open_dataset(name: str, root: str | None) -> FewShotDataset:
    """Dataset ``name`` from its cache under ``root``, prepared first if needed."""
    if name == "digits":
        from gs_tune.data.digits import load_digits_dataset

        return load_digits_dataset()
    return load_or_build(find_source(name, root)).dataset


@dataclass(frozen=True)
class Prepared:
    source: Source
    opened: Opened
    seconds: float


def prepare(name: str, root: str, allow_pickle: bool = False) -> Prepared:
    """Check, decode and cache dataset ``name``; an existing cache is re-hashed, and rebuilt if
    anything about it does not match."""
    start = time.perf_counter()
    source = find_source(name, root, allow_pickle)
    opened = load_or_build(source, verify=True)
    return Prepared(source, opened, time.perf_counter() - start)


def split_table(dataset: FewShotDataset) -> list[str]:
    rows = [("split", "classes", "images", "image shape", "MB")]
    for s in SPLITS:
        split = dataset.split(s)
        rows.append((s, str(split.num_classes), str(len(split.labels)), "×".join(map(str, split.image_shape)),
                     f"{split.images.nbytes / 1e6:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows]


def report(done: Prepared) -> list[str]:
    source, opened = done.source, done.opened
    state = f"built in {done.seconds:.1f} s" if opened.built else f"up to date, verified in {done.seconds:.1f} s"
    return [
        f"{source.dataset}: {source.kind} layout in {source.root} ({source.items} files)",
        f"cache: {opened.directory} ({state}); every trial maps it read-only",
        *split_table(opened.dataset),
    ]


def _cmd_prepare(args: argparse.Namespace) -> int:
    if args.dataset == "digits":
        from gs_tune.data.digits import load_digits_dataset

        print("digits: embedded in the package, nothing to prepare")
        print("\n".join(split_table(load_digits_dataset())))
        return 0
    print("\n".join(report(prepare(args.dataset, args.data_root, args.allow_pickle))))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``gs-tune data prepare`` to the CLI's subcommands."""
    data = subparsers.add_parser("data", help="prepare datasets: check files, decode once into a shared cache")
    sub = data.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("prepare", help="check a dataset's files, build its memory-mapped cache, print counts")
    p.add_argument("--dataset", required=True, choices=["digits", *SOURCES], help="dataset to prepare")
    p.add_argument("--data-root", help="directory holding the dataset's files (the cache goes in it)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept miniImageNet's mini-imagenet-cache-*.pkl files (unpickling can run code)")
    p.set_defaults(func=_cmd_prepare)
