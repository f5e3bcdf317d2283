"""Do AHE's default weights beat first-order MAML? Standalone runs, paired over seeds.

What a new user runs: ``gs-tune train --algorithm ahe`` and ``--algorithm fomaml``
with every other field at its default (digits, 5-way 1-shot, 15 queries, Conv-4,
300 meta-iterations, inner_lr, outer_lr, meta-batch as in TrainConfig). Each
method is trained from the same seeds, so a seed gives both methods the same
initialisation, training tasks, validation tasks and test tasks, and the
comparison is the paired difference per seed (method − reference) with its
Student-t interval over seeds.

Methods are ``NAME`` (an algorithm at its defaults) or ``NAME:key=value,...``
(fields overridden), e.g. ``ahe:w_cos=0.5,w_l2=0``. The first is the reference.

Choosing defaults without reading the test split: run candidates with
``--test-tasks 0`` on some seeds and pick by validation accuracy, then measure
the chosen defaults on the test split with other seeds, as a standalone
``gs-tune train`` does (it ends with a test evaluation).

    python benchmarks/default_weights.py --methods fomaml ahe:w_cos=0.1,w_l2=0.01 --seeds 100 101 102 --test-tasks 0
    python benchmarks/default_weights.py --methods fomaml ahe --seeds 0 1 2 3 4 5 --out /tmp/defaults.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from meta_gradient_cost import code_version, emit

from gs_tune import train, train_config
from gs_tune.data import load_dataset
from gs_tune.stats import mean_interval, paired_difference


def parse_method(text: str) -> tuple[str, dict[str, str]]:
    algorithm, _, rest = text.partition(":")
    overrides = dict(item.split("=", 1) for item in rest.split(",") if item)
    return algorithm, overrides


def run_one(method: str, seed: int, args, data) -> dict[str, float]:
    algorithm, overrides = parse_method(method)
    cfg = train_config({"algorithm": algorithm, "seed": seed, "val_every": args.iterations,
                        "iterations": args.iterations, "val_tasks": args.val_tasks, "test_tasks": args.test_tasks,
                        **overrides})
    out: dict[str, float] = {}
    for record in train(cfg, device="cpu", dataset=data):
        if record["kind"] == "diverged":
            return {"val_accuracy": float("nan"), "test_accuracy": float("nan")}
        for key in ("val_accuracy", "test_accuracy", "correction_norm", "grad_norm", "sec_per_iter"):
            if key in record:
                out[key] = float(record[key])
    return out


def load_done(cache: Path | None) -> dict[str, dict[str, float]]:
    """Runs finished earlier (``--cache``), keyed by method, seed and budget: an interrupted
    measurement resumes where it stopped instead of starting over."""
    if cache is None or not cache.exists():
        return {}
    lines = (json.loads(line) for line in cache.read_text().splitlines() if line.strip())
    return {entry["key"]: entry["result"] for entry in lines}


def render(results: dict[str, list[dict[str, float]]], args) -> str:
    methods = list(results)
    reference = methods[0]
    keys = ["val_accuracy"] + (["test_accuracy"] if args.test_tasks else [])
    lines = [f"# Defaults against {reference}: digits 5-way 1-shot, {args.iterations} meta-iterations", "",
             (f"seeds {', '.join(map(str, args.seeds))}; validation {args.val_tasks} tasks (val split) "
             f"and test {args.test_tasks} tasks (test split) after the last iteration; every other field "
             "at TrainConfig's default."), "",
             "| method | " + " | ".join(f"{k} (mean ± t95 over seeds)" for k in keys)
             + " | ‖correction‖/‖g_Q‖ | s / iteration |",
             "|---|" + "---|" * (len(keys) + 2)]
    for m in methods:
        cells = [mean_interval([r[k] for r in results[m]], "seeds").describe() for k in keys]
        ratio = [r.get("correction_norm", float("nan")) / r["grad_norm"] for r in results[m]]
        sec = sum(r["sec_per_iter"] for r in results[m]) / len(results[m])
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {sum(ratio) / len(ratio):.2f} | {sec:.3f} |")
    lines += ["", f"Paired difference, method − {reference}, same seeds (and so the same tasks):", "",
              "| method | " + " | ".join(f"Δ {k}" for k in keys) + " | per seed |", "|---|" + "---|" * (len(keys) + 1)]
    for m in methods[1:]:
        cells = [paired_difference([r[k] for r in results[m]], [r[k] for r in results[reference]], "seeds")
                 .describe(unit=" pt") for k in keys]
        last = keys[-1]
        per_seed = ", ".join(f"{100 * (a[last] - b[last]):+.1f}" for a, b in zip(results[m], results[reference]))
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {per_seed} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["fomaml", "ahe"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--val-tasks", type=int, default=300)
    parser.add_argument("--test-tasks", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--cache", type=Path, default=None,
                        help="JSON lines of finished runs: appended to, and reused when run again")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("digits")
    load_before, started = os.getloadavg()[0], time.perf_counter()
    done = load_done(args.cache)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in args.methods}
    for seed in args.seeds:  # seed-major, so an interrupted run still holds complete pairs
        for m in args.methods:
            key = json.dumps([m, seed, args.iterations, args.val_tasks, args.test_tasks])
            if key not in done:
                done[key] = run_one(m, seed, args, data)
                if args.cache:
                    with args.cache.open("a") as f:
                        f.write(json.dumps({"key": key, "result": done[key]}) + "\n")
            results[m].append(done[key])
            r = results[m][-1]
            print(f"seed {seed} {m}: val {r['val_accuracy']:.4f} test {r.get('test_accuracy', float('nan')):.4f}",
                  file=sys.stderr, flush=True)
    text = render(results, args)
    text += (f"\n({time.perf_counter() - started:.0f} s; torch {torch.__version__}, {args.threads} thread(s), "
             f"{os.cpu_count()} cores, load average {load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end; "
             f"{code_version()})\n")
    emit(text, args.out)


if __name__ == "__main__":
    main()
