"""Seconds per meta-iteration of one study setting's evaluated configurations, timed interleaved.

The retrainings of `gs-tune evaluate` record their own seconds per meta-iteration, but a method's
seeds ran at different times on a shared machine, and this 2-core VM's speed drifts by up to 1.5×
over minutes (BENCHMARKS §1), so those timings mix each method's cost with the load it met. Here
every configuration the setting's evaluation retrained (one per method, as retrained: the same
fields, train+val, one torch thread as each Ray worker had) is a `gs_tune.train` generator in one
process, and the generators advance round-robin, BLOCK meta-iterations at a time: in every round
each method and the reference (tuned first-order MAML) ran back to back under the same load. The
first round is a warm-up and is not counted. Per method: the median over rounds of its seconds per
meta-iteration (the training step only: task sampling, meta-gradient and Adam, as the trainer
counts it), and the median over rounds of its ratio to the reference within the round, with the
range of that ratio. Printed as a table; --out writes the JSON that `study.py` puts beside its
efficiency table.

    python benchmarks/study_cost.py --runs runs/study2 --setting 5w1s_k5 [--rounds 8] [--block 20]
        [--out runs/study2/cost_5w1s_k5.json]
    python benchmarks/study_cost.py --runs runs/study2 --setting 5w1s_k5 --covers runs/study2/cost_5w1s_k5.json

--covers times nothing: it exits 0 when that timing holds every method the setting's evaluation
now has, 3 when a method has joined the evaluation since (study.sh adds Reptile last), and 1 on an
error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # study_runs: the runs and methods as study.py names them
import study_runs

from gs_tune import train
from gs_tune.config import TrainConfig, train_config
from gs_tune.data import load_dataset

REFERENCE = "first-order MAML (tuned)"


def configs(runs: Path, setting: str) -> dict[str, TrainConfig]:
    """One configuration per method of the setting's evaluation (its first seed's row), in the
    table's order; each as retrained, with no validation or test to speak of."""
    study = study_runs.read_study(runs)
    if setting not in study.settings:
        raise SystemExit(f"study_cost.py: error: {runs} has no setting {setting!r}; it has "
                         + ", ".join(study.settings))
    rows = study_runs.evaluation(study, setting)
    if rows is None:
        raise SystemExit(f"study_cost.py: error: {setting} has not been evaluated yet (no evaluation.parquet)")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, TrainConfig] = {}
    for row in rows:
        if row["method"] not in out:
            params = {k: v for k, v in study_runs.params_of(row).items() if k in fields}
            out[row["method"]] = train_config(params, test_tasks=0, val_tasks=1, iterations=10**9,
                                              checkpoint_every=10**9)
    return out


def _train_seconds(record: dict[str, Any]) -> float:
    return float(record["sec_per_iter"]) * int(record["iteration"])


def time_interleaved(cfgs: dict[str, TrainConfig], rounds: int, block: int) -> dict[str, list[float]]:
    """Seconds per meta-iteration of each configuration in each counted round."""
    data = load_dataset(next(iter(cfgs.values())).dataset)  # every configuration trains on the same data
    runs: dict[str, Iterator[dict[str, Any]]] = {
        name: iter(train(dataclasses.replace(cfg, val_every=block), device="cpu", dataset=data))
        for name, cfg in cfgs.items()}
    spent = dict.fromkeys(cfgs, 0.0)
    per_round: dict[str, list[float]] = {name: [] for name in cfgs}
    for r in range(rounds + 1):
        for name, records in runs.items():
            record = next(records)
            if record.get("kind") != "val":
                raise SystemExit(f"study_cost.py: error: {name} ended with a {record.get('kind')} record")
            now = _train_seconds(record)
            if r:  # round 0 warms caches up and is not counted
                per_round[name].append((now - spent[name]) / block)
            spent[name] = now
    return per_round


def summarise(per_round: dict[str, list[float]], reference: str) -> list[dict[str, Any]]:
    out = []
    for name, secs in per_round.items():
        row: dict[str, Any] = {"method": name, "sec_per_iter_median": statistics.median(secs),
                               "sec_per_iter_min": min(secs), "sec_per_iter_max": max(secs)}
        if reference in per_round:
            ratios = [s / ref for s, ref in zip(secs, per_round[reference])]
            row.update(ratio_median=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
        out.append(row)
    return out


def covers(path: Path, cfgs: dict[str, TrainConfig]) -> int:
    """0 if the timing at ``path`` holds every method of ``cfgs``, 3 (naming the missing) if not."""
    try:
        timed = {r["method"] for r in json.loads(path.read_text())["rows"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"study_cost.py: error: --covers {path}: not a timing this script wrote ({exc})") from exc
    missing = [m for m in cfgs if m not in timed]
    print(f"study_cost.py: {path.name} " + (f"lacks {', '.join(missing)}" if missing else "times every method"))
    return 3 if missing else 0


def markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    md = [(f"Interleaved timing ({meta['setting']}): {meta['rounds']} rounds of {meta['block']} meta-iterations "
           f"per method after one warm-up round, one process, {meta['threads']} torch thread, "
           f"{meta['machine']}; load average {meta['load_start']:.2f} at start, {meta['load_end']:.2f} at end."), "",
          f"| method | s / meta-iteration (median; range over rounds) | × {meta['reference']} (median; range) |",
          "|---|---|---|"]
    for r in rows:
        ratio = "-" if "ratio_median" not in r else \
            f"{r['ratio_median']:.2f} ({r['ratio_min']:.2f}–{r['ratio_max']:.2f})"
        md.append(f"| {r['method']} | {r['sec_per_iter_median']:.3f} ({r['sec_per_iter_min']:.3f}–"
                  f"{r['sec_per_iter_max']:.3f}) | {ratio} |")
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, type=Path, help="the study's runs directory (study.sh's RUNS_DIR)")
    parser.add_argument("--setting", required=True, help="a setting the study has evaluated, e.g. 5w1s_k5")
    parser.add_argument("--rounds", type=int, default=8, help="counted rounds (default 8)")
    parser.add_argument("--block", type=int, default=20, help="meta-iterations per method per round (default 20)")
    parser.add_argument("--out", type=Path, help="also write the rows and the conditions as JSON here")
    parser.add_argument("--covers", type=Path, help="time nothing: exit 0 if this --out file times every "
                                                    "method of the setting's evaluation, 3 if not")
    args = parser.parse_args(argv)
    for name in ("rounds", "block"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not (args.runs / study_runs.MANIFEST).is_file():
        parser.error(f"{args.runs} has no {study_runs.MANIFEST}; run benchmarks/study.sh first")
    cfgs = configs(args.runs, args.setting)
    if args.covers:
        return covers(args.covers, cfgs)
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    per_round = time_interleaved(cfgs, args.rounds, args.block)
    meta = {"setting": args.setting, "rounds": args.rounds, "block": args.block, "threads": 1,
            "reference": REFERENCE, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "load_start": load_start, "load_end": os.getloadavg()[0], "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M")}
    rows = summarise(per_round, REFERENCE)
    print("\n".join(markdown(rows, meta)))
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps({"meta": meta, "rows": rows, "per_round": per_round}, indent=1))
        tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    study_runs.exit_now(main())
