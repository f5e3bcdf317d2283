"""How many trials should share one GPU? Total meta-iterations per second with N trainer processes.

Ray Tune gives each trial a share of a GPU (``--gpus-per-trial 1/N``), and N trainer
processes then run side by side on it. Small models such as Conv-4 leave a GPU mostly
idle in one process (kernel launches, the Python loop, the optimiser), so several
processes can raise the total throughput, up to the point where they contend for the
GPU's cores and memory. This script measures that point for one preset and algorithm:
for each N in ``--processes`` it starts N fresh processes (spawned, each with its own
CUDA context, as Ray's trial actors are), each builds the preset's model and random
tasks of its shape, warms up, waits at a barrier for the others, and then runs
meta-iterations (``meta_gradient`` + Adam) for ``--seconds``. Printed per N: the
meta-iterations per second of each process and of all together, the speed-up over one
process, and on CUDA each process's peak memory. The N with the highest total sets
``--gpus-per-trial`` (docs/cluster.md).

    python benchmarks/gpu_sharing.py --device cuda --preset omniglot_20w1s --out /tmp/gpu_sharing.md
    python benchmarks/gpu_sharing.py --device cpu --preset miniimagenet_5w1s --processes 1 2 --seconds 5 --meta-batch 1

On a CPU the same measurement says how many trials a machine's cores take (each
process gets ``--threads`` torch threads).
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import queue
import statistics
import sys
import time
from pathlib import Path

import torch
from meta_gradient_cost import code_version, emit
from protocol_throughput import ALGORITHMS, SHAPES, TRAIN_DIR, meta_step, preset_config, random_tasks

from gs_tune.meta import resolve_batching
from gs_tune.models import build_model


def _worker(spec: dict, barrier, results) -> None:
    """One trainer process: warm up, wait for the others, then count meta-iterations for spec['seconds']."""
    torch.set_num_threads(spec["threads"])
    cfg = preset_config(spec["preset"], spec["meta_batch"])
    device, shape = torch.device(spec["device"]), SHAPES[cfg.dataset]
    batching = resolve_batching(spec["batching"], device)
    tasks = random_tasks(cfg.meta_batch, cfg.ways, cfg.shots, cfg.query, shape, device, seed=spec["rank"])
    model = build_model(cfg.model, shape, cfg.ways, cfg.filters, torch.Generator().manual_seed(spec["rank"])).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.outer_lr)
    hp = cfg.algo_hparams()

    def step() -> None:
        meta_step(model, optimiser, tasks, spec["algorithm"], hp, batching)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(spec["warmup"]):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    barrier.wait()
    start = time.perf_counter()
    done = 0
    while time.perf_counter() - start < spec["seconds"]:
        step()
        done += 1
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    results.put({"rank": spec["rank"], "iterations": done, "seconds": elapsed, "peak_mb": peak})


def measure(n: int, base: dict) -> list[dict]:
    """Run n processes at once; their results, or SystemExit naming the process that failed."""
    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=({**base, "rank": r}, barrier, results)) for r in range(n)]
    for p in procs:
        p.start()
    out = []
    deadline = time.monotonic() + base["seconds"] + 300  # start-up (imports, CUDA context) and warm-up
    while len(out) < n and time.monotonic() < deadline:
        try:
            out.append(results.get(timeout=1))
        except queue.Empty:  # check whether a process died
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                for p in procs:
                    p.kill()
                raise SystemExit(f"gpu_sharing: a trainer process exited with {dead[0].exitcode} at N={n}") from None
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    if len(out) < n:
        raise SystemExit(f"gpu_sharing: {n - len(out)} of {n} processes reported nothing within the deadline")
    return sorted(out, key=lambda r: r["rank"])


def main(argv: list[str] | None = None) -> None:
    presets = sorted(p.stem for p in TRAIN_DIR.glob("*.yaml"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="omniglot_20w1s", choices=presets)
    parser.add_argument("--algorithm", default="ahe", choices=ALGORITHMS)
    parser.add_argument("--processes", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=20.0, help="timed window per process, after the barrier")
    parser.add_argument("--warmup", type=int, default=3, help="untimed meta-iterations per process")
    parser.add_argument("--batching", default="auto", choices=["auto", "loop", "vmap"])
    parser.add_argument("--meta-batch", type=int, default=None, help="override the preset's (a quick look)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_sharing: --device cuda, but this torch sees no CUDA device; allowed here: --device cpu")
    if any(n < 1 for n in args.processes) or args.seconds <= 0:
        raise SystemExit("gpu_sharing: --processes must be positive integers and --seconds a positive number")
    base = {"preset": args.preset, "algorithm": args.algorithm, "device": args.device, "seconds": args.seconds,
            "warmup": args.warmup, "batching": args.batching, "meta_batch": args.meta_batch, "threads": args.threads}
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"{os.uname().machine} CPU, {os.cpu_count()} cores"
    lines = [f"# Trials per device: {args.preset}, {args.algorithm}, on {device_name}", "",
             (f"{args.seconds:g} s timed per process after {args.warmup} warm-up meta-iterations and a barrier; "
              f"{args.threads} torch thread(s) per process; float32; {code_version()}, torch {torch.__version__}; "
              f"load average {os.getloadavg()[0]:.2f} at start"), "",
             "| processes | it/s per process (median, min–max) | total it/s | × one process | peak MB per process |",
             "|---|---|---|---|---|"]
    single = None
    for n in args.processes:
        print(f"gpu_sharing: {n} process(es)", file=sys.stderr, flush=True)
        rows = measure(n, base)
        rates = [r["iterations"] / r["seconds"] for r in rows]
        total = sum(rates)
        single = single or (total if n == 1 else None)
        gain = f"{total / single:.2f}" if single else "—"
        peak = max(r["peak_mb"] for r in rows)
        lines.append(f"| {n} | {statistics.median(rates):.2f} ({min(rates):.2f}–{max(rates):.2f}) | {total:.2f} | "
                     f"{gain} | {'—' if math.isnan(peak) else f'{peak:.0f}'} |")
    lines += ["", f"load average {os.getloadavg()[0]:.2f} at end"]
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
