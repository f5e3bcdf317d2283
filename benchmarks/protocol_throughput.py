"""Throughput of the MAML-protocol presets: seconds per meta-iteration and what a full run costs.

For each train config in ``gs_tune/search_spaces/train/`` (Omniglot 20-way 1-shot,
miniImageNet 5-way 1-shot and 5-shot, each with the paper's filters, K, query
size and meta-batch), one meta-iteration (``meta_gradient`` + Adam) of maml,
fomaml and ahe (default HVP) on random images of the dataset's shape (the cost
does not depend on the pixels, and no dataset is needed), and one evaluation
chunk (``adapt_and_evaluate`` with ``eval_inner_steps``, 50 tasks: the trainer's chunk). The methods
run round-robin in one process so that a drift in machine speed hits them
alike. Printed: the median seconds, tasks per second, the projected hours for
the preset's ``iterations``, and on CUDA the peak memory of one meta-iteration.

    python benchmarks/protocol_throughput.py --device cuda --out /tmp/protocol_cuda.md
    python benchmarks/protocol_throughput.py --device cpu --presets miniimagenet_5w1s --reps 2
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
from pathlib import Path

import torch
import yaml
from meta_gradient_cost import code_version, emit, round_robin

from gs_tune import train_config
from gs_tune.data import TaskBatch
from gs_tune.meta import adapt_and_evaluate, meta_gradient, resolve_batching
from gs_tune.models import build_model

TRAIN_DIR = Path(__file__).resolve().parents[1] / "gs_tune" / "search_spaces" / "train"
SHAPES = {"omniglot": (1, 28, 28), "miniimagenet": (3, 84, 84), "digits": (1, 28, 28), "mnist": (1, 28, 28)}
ALGORITHMS = ("maml", "fomaml", "ahe")


def random_tasks(n: int, ways: int, shots: int, query: int, shape, device, seed: int = 0) -> TaskBatch:
    gen = torch.Generator().manual_seed(seed)
    return TaskBatch(
        torch.rand(n, ways * shots, *shape, generator=gen),
        torch.arange(ways).repeat_interleave(shots).expand(n, -1).contiguous(),
        torch.rand(n, ways * query, *shape, generator=gen),
        torch.arange(ways).repeat_interleave(query).expand(n, -1).contiguous(),
    ).to(device)


def meta_step(model, optimiser, tasks: TaskBatch, algorithm: str, hp, batching: str) -> None:
    """One meta-iteration as the trainer runs it: meta_gradient, then the outer Adam step."""
    grads, _ = meta_gradient(model, tasks, algorithm, hp, batching=batching)
    for key, p in model.named_parameters():
        p.grad = grads[key]
    optimiser.step()


def preset_config(name: str, meta_batch: int | None = None):
    """The preset's TrainConfig (search_spaces/train/<name>.yaml) without its data, optionally at
    another meta-batch: the benchmarks run it on random tasks of its shape."""
    values = yaml.safe_load((TRAIN_DIR / f"{name}.yaml").read_text())
    return train_config({**values, "data_root": None, **({"meta_batch": meta_batch} if meta_batch else {})})


def measure_preset(name: str, args) -> list[str]:
    cfg = preset_config(name, args.meta_batch)
    device, shape = torch.device(args.device), SHAPES[cfg.dataset]
    batching = resolve_batching(args.batching, device)
    tasks = random_tasks(cfg.meta_batch, cfg.ways, cfg.shots, cfg.query, shape, device)
    eval_tasks = random_tasks(args.eval_tasks, cfg.ways, cfg.shots, cfg.query, shape, device, seed=1)
    steps = {}
    hp = cfg.algo_hparams()
    for algorithm in args.algorithms:
        model = build_model(cfg.model, shape, cfg.ways, cfg.filters, torch.Generator().manual_seed(0),
                            channels_last=args.channels_last).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=cfg.outer_lr)
        steps[algorithm] = functools.partial(meta_step, model, optimiser, tasks, algorithm, hp, batching)
    eval_model = build_model(cfg.model, shape, cfg.ways, cfg.filters, torch.Generator().manual_seed(0),
                             channels_last=args.channels_last).to(device)
    steps["evaluation"] = lambda: adapt_and_evaluate(eval_model, eval_tasks, cfg.inner_lr,
                                                     cfg.eval_inner_steps or cfg.inner_steps, cfg.eval_batch_norm)
    peaks = {}
    for key, fn in steps.items():  # warm-up, and on CUDA the peak memory of one call
        print(f"{name}: {key}", file=sys.stderr, flush=True)
        fn()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            fn()
            peaks[key] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    times = round_robin(steps, args.reps, device)
    rows = []
    for key in steps:
        sec = statistics.median(times[key])
        n_tasks = args.eval_tasks if key == "evaluation" else cfg.meta_batch
        hours = "" if key == "evaluation" else f"{sec * cfg.iterations / 3600:.2f}"
        peak = f"{peaks[key]:.0f}" if key in peaks else "—"
        rows.append(f"| {name} | {key} | {batching} | {sec:.4f} | {n_tasks / sec:.1f} | {hours} | {peak} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    presets = sorted(p.stem for p in TRAIN_DIR.glob("*.yaml"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--presets", nargs="+", default=presets, choices=presets)
    parser.add_argument("--batching", default="auto", choices=["auto", "loop", "vmap"])
    parser.add_argument("--channels-last", action="store_true", help="Conv-4 weights and images NHWC")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=ALGORITHMS)
    parser.add_argument("--meta-batch", type=int, default=None, help="override the presets' (a quick look)")
    parser.add_argument("--eval-tasks", type=int, default=50, help="tasks per evaluation call")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else (os.uname().machine + " CPU")
    lines = [f"# Protocol presets: throughput on {device_name}", "",
             (f"layout {'channels_last' if args.channels_last else 'contiguous'}, median of {args.reps} after one "
             f"warm-up, float32; evaluation = adapt_and_evaluate on {args.eval_tasks} tasks; {code_version()}, "
             f"torch {torch.__version__}"), "",
             "| preset | what | batching | s / call | tasks / s | hours for the preset's iterations | peak MB |",
             "|---|---|---|---|---|---|---|"]
    for name in args.presets:
        lines += measure_preset(name, args)
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
