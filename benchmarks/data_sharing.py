"""Memory and start-up time of N concurrent trial processes that share one prepared dataset.

Each "trial" is a fresh Python process that does what a Ray trial does up to its first
meta-iteration: import torch and gs-tune, open the synthetic miniImageNet-sized cache of
data_synthetic.py (60,000 × 3×84×84 uint8, read-only memory maps) and run the real trainer
(``gs_tune.trainer.train``) on the miniimagenet_5w5s preset's task shape and network (5-way 5-shot
15-query, Conv-4 with 32 filters, meta-batch 2), cheapened to first-order MAML with one inner step
and a one-task validation so the run stays short on a shared machine. After the first record
(one meta-iteration and that validation) the process reports and waits, so that every process's
memory is read while all of them are alive; with ``--touch`` it first reads every image of every
split, as a long trial that has sampled the whole dataset would have.

The parent runs one trial alone, then N at once (default 8), and reads each process's
/proc/PID/smaps_rollup (RSS, PSS, private) and, in /proc/PID/smaps, the mappings of the cache
files. RSS counts a shared page in full in every process that maps it, so summed over processes it
counts the one physical copy of the dataset N times; PSS divides each shared page between its
mappers, so summed over processes it is the memory they really use. Time to the first
meta-iteration runs from the process's start (before its imports) to its first record.

    python benchmarks/data_sharing.py [--processes 8] [--touch] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from data_synthetic import DEFAULT_DIR, ensure_cache

GIB = 2**30


def child(cache: Path, touch: bool, started: float, trial: str) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    imported = time.time()
    from gs_tune.config import train_config
    from gs_tune.data import TaskSampler
    from gs_tune.data.cache import open_cache
    from gs_tune.trainer import train

    data = open_cache(cache)
    if trial == "train":
        cfg = train_config({"dataset": "miniimagenet", "model": "conv4", "filters": 32, "ways": 5, "shots": 5,
                            "query": 15, "meta_batch": 2, "algorithm": "fomaml", "inner_lr": 0.01,
                            "inner_steps": 1, "iterations": 1, "val_every": 1, "val_tasks": 1, "test_tasks": 0})
        next(iter(train(cfg, dataset=data)))
    else:  # the data path alone: the first meta-batch, as floats
        TaskSampler(data.train, 5, 5, 15).sample(2, np.random.default_rng(0)).to("cpu", torch.float32)
    first = time.time()
    report = {"first_s": first - started, "after_imports_s": first - imported, "cpu_s": time.process_time()}
    if touch:
        for split in (data.train, data.val, data.test):
            int(np.asarray(split.images).sum(dtype=np.uint64))  # reads every page of the map
    print(json.dumps(report), flush=True)
    sys.stdin.readline()


def _kib_fields(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].endswith(":") and parts[2] == "kB":
            out[parts[0][:-1]] = out.get(parts[0][:-1], 0) + int(parts[1]) * 1024
    return out


def memory_of(pid: int, cache: Path) -> dict[str, int]:
    """Whole-process RSS/PSS/private bytes, and RSS/PSS of the mappings of files in ``cache``."""
    rollup = _kib_fields(Path(f"/proc/{pid}/smaps_rollup").read_text())
    cache_rss = cache_pss = 0
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            inside = len(head) >= 6 and head[-1].startswith(str(cache))
        elif inside and head[0] in ("Rss:", "Pss:"):
            if head[0] == "Rss:":
                cache_rss += int(head[1]) * 1024
            else:
                cache_pss += int(head[1]) * 1024
    return {"rss": rollup["Rss"], "pss": rollup["Pss"],
            "private": rollup.get("Private_Clean", 0) + rollup.get("Private_Dirty", 0),
            "cache_rss": cache_rss, "cache_pss": cache_pss}


def run(n: int, cache: Path, touch: bool, trial: str) -> dict[str, float]:
    """Start ``n`` trials at once; their summed memory while all are alive and their start-up times."""
    cmd = [sys.executable, __file__, "--child", str(cache), "--trial", trial] + (["--touch"] if touch else [])
    procs = [subprocess.Popen(cmd + ["--started", repr(time.time())], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    reports = [json.loads(p.stdout.readline()) for p in procs]
    memory = [memory_of(p.pid, cache) for p in procs]  # all are alive and waiting here
    for p in procs:
        p.communicate("\n", timeout=120)
    firsts = sorted(r["first_s"] for r in reports)
    summed = {k: sum(m[k] for m in memory) for k in memory[0]}
    return {"n": n, "first_median": firsts[len(firsts) // 2], "first_max": firsts[-1],
            "after_imports_median": sorted(r["after_imports_s"] for r in reports)[n // 2],
            "cpu_median": sorted(r["cpu_s"] for r in reports)[n // 2], **summed}


def table(rows: list[dict[str, float]], trial: str, touch: bool) -> list[str]:
    one = rows[0]
    mode = f"{trial}, " + ("every image read" if touch else "first meta-iteration only")
    header = ("| trials at once | time to 1st meta-iteration, median / max (s) | its CPU seconds, median | "
              "total RSS (GiB) | total PSS (GiB) | cache pages: RSS / PSS, summed (GiB) | "
              "total PSS / one trial's | total RSS / one trial's |")
    lines = [header, "|" + "---|" * 8]
    for r in rows:
        lines.append(
            f"| {r['n']} ({mode}) | {r['first_median']:.1f} / {r['first_max']:.1f} | {r['cpu_median']:.1f} | "
            f"{r['rss'] / GIB:.2f} | {r['pss'] / GIB:.2f} | "
            f"{r['cache_rss'] / GIB:.2f} / {r['cache_pss'] / GIB:.2f} | {r['pss'] / one['pss']:.2f} | "
            f"{r['rss'] / one['rss']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--touch", action="store_true", help="each trial reads the whole dataset first")
    parser.add_argument("--trial", choices=["train", "data"], default="train",
                        help="train: the trainer's first meta-iteration; data: only sampling the first meta-batch")
    parser.add_argument("--out", help="also write the table here")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.touch, args.started, args.trial)
        return
    cache, _ = ensure_cache(DEFAULT_DIR)
    size = sum(p.stat().st_size for p in cache.glob("*.npy"))
    rows = [run(1, cache, args.touch, args.trial), run(args.processes, cache, args.touch, args.trial)]
    title = (f"Concurrent trial processes on one {size / GIB:.2f} GiB cache ({cache}); "
             f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    lines = [title, "", *table(rows, args.trial, args.touch)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
