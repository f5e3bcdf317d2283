"""Tasks per second the sampler delivers on one CPU core, from a miniImageNet-sized cache.

The question: can task sampling keep a GPU busy? The floor is 200 tasks/s on one core for
miniImageNet 5-way 5-shot 15-query (100 images of 3×84×84 a task). The process is pinned to one
core (``sched_setaffinity``) with one torch thread, opens the synthetic 60,000-image cache of
data_synthetic.py as the trainer would (read-only memory maps) and, for ``--seconds`` each, runs:

* ``sample``: draw tasks and gather their uint8 pixels (what a trial's data path costs the host
  when the GPU does the float conversion);
* ``sample + to(cpu)``: the same plus the conversion to float32 in [0, 1] on the CPU (what a
  CPU-only trial pays);
* with CUDA: ``sample + to(cuda)`` (pinned memory, non-blocking copy, conversion on the GPU,
  synchronised), and what one GPU consumes: first-order MAML and MAML meta-iterations (Conv-4,
  32 filters, 5 inner steps, as in the miniimagenet_5w5s preset) in tasks per second.

Each figure is a median over 5 windows, in tasks per wall second and per CPU second of the
process: on a shared machine other jobs take turns on the pinned core, which lowers the first but
not the second, so the floor is judged on the CPU rate (what a core of one's own delivers). The page
cache is warm (the cache was just written or read); a cold first pass reads from disk.

    python benchmarks/data_sampling.py [--seconds 3] [--cpu 0] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from data_synthetic import DEFAULT_DIR, ensure_cache

from gs_tune.data import TaskSampler
from gs_tune.data.cache import open_cache

CASES = [("5-way 5-shot 15-query", 5, 5, 15), ("5-way 1-shot 15-query", 5, 1, 15)]
FLOOR = 200.0


def rate(step: Callable[[], int], seconds: float, windows: int = 5) -> tuple[float, float]:
    """Tasks per wall second and per CPU second of ``step`` (which returns the tasks it handled),
    after one warm-up call: medians over ``windows`` equal windows. On a shared machine other jobs
    take turns on the pinned core, which lowers the wall rate but not the CPU rate: the CPU rate is
    what a core of one's own delivers."""
    step()
    wall, cpu = [], []
    for _ in range(windows):
        done, start, start_cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds / windows:
            done += step()
        wall.append(done / (time.perf_counter() - start))
        cpu.append(done / max(time.process_time() - start_cpu, 1e-9))
    return float(np.median(wall)), float(np.median(cpu))


def gpu_consumption(sampler: TaskSampler, algorithm: str, meta_batch: int, seconds: float) -> tuple[float, float]:
    from gs_tune.meta import meta_gradient
    from gs_tune.models import build_model

    model = build_model("conv4", sampler.split.image_shape, sampler.ways, 32,
                        torch.Generator().manual_seed(0)).to("cuda")
    rng = np.random.default_rng(1)

    def step() -> int:
        tasks = sampler.sample(meta_batch, rng).to("cuda", torch.float32)
        meta_gradient(model, tasks, algorithm, inner_lr=0.01, inner_steps=5)
        torch.cuda.synchronize()
        return meta_batch

    return rate(step, seconds)


def measure(seconds: float, batch: int) -> list[tuple[str, str, tuple[float, float]]]:
    data = open_cache(ensure_cache(DEFAULT_DIR)[0])
    rows = []
    for label, n, k, q in CASES:
        sampler = TaskSampler(data.train, n, k, q)
        rng = np.random.default_rng(0)
        rows.append((label, f"sample ({batch} tasks a call)",
                     rate(lambda s=sampler, r=rng: s.sample(batch, r).num_tasks, seconds)))
        rows.append((label, "sample + to(cpu, float32)",
                     rate(lambda s=sampler, r=rng: s.sample(batch, r).to("cpu", torch.float32).num_tasks, seconds)))
        if torch.cuda.is_available():
            def to_gpu(s: TaskSampler = sampler, r: np.random.Generator = rng) -> int:
                tasks = s.sample(batch, r).to("cuda", torch.float32)
                torch.cuda.synchronize()
                return tasks.num_tasks

            rows.append((label, "sample + to(cuda), synchronised", rate(to_gpu, seconds)))
            for algorithm in ("fomaml", "maml"):
                rows.append((label, f"GPU consumes: {algorithm} meta-iterations, 5 steps",
                             gpu_consumption(sampler, algorithm, batch, seconds)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--cpu", type=int, default=0, help="the core to pin to")
    parser.add_argument("--batch", type=int, default=4, help="tasks per sample() call (a meta-batch)")
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    torch.set_num_threads(1)
    rows = measure(args.seconds, args.batch)
    title = (f"Task sampling from the 60,000 × 3×84×84 uint8 cache, one CPU core (core {args.cpu}), "
             f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    lines = [title, "",
             "| tasks | what | tasks/s (wall) | tasks per CPU second | ms of CPU per task | floor 200/s |",
             "|---|---|---:|---:|---:|---|"]
    for label, what, (wall, cpu) in rows:
        verdict = ("pass" if cpu >= FLOOR else "FAIL") if "cpu" in what or what.startswith("sample (") else ""
        lines.append(f"| {label} | {what} | {wall:.0f} | {cpu:.0f} | {1000 / cpu:.2f} | {verdict} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
