"""How much of a search's time goes into meta-training, and where the rest goes.

Runs a real search on this machine through :func:`gs_tune.search.runner.launch` (a local Ray,
Tune, OptunaSearch, the results callback, checkpoints, Parquet and TensorBoard output): by
default 8 trials of about 30 s each, 2 at a time with 1 CPU each, ASHA off, from a temporary
space derived from ``cosine_l2.yaml``, with a 300 MB object store, in a temporary runs directory.

Reported:

* wall time of the whole ``launch()`` call (load the space, start Ray, Tune, stop Ray, summary)
  and of the Tune part alone (Tune's run inside ``Tuner.fit``, from its callbacks' setup to the
  experiment's end);
* the sum over trials of meta-training time: ``wall_seconds`` of ``trials.parquet``, the
  trainer's own clock inside the trial (meta-iterations + validations);
* share = sum(meta-training) / (wall x slots), slots = trials at once, for both walls (target
  >= 90%), and where the remaining slot-time went.

Timing: ``launch()`` runs unchanged; the benchmark passes it one extra Tune callback
(``launch(callbacks=[...])``) that timestamps, in the driver, the start and end of Tune's run and
every trial's start, results and end. Nothing inside the trials is touched. Starting and stopping
a local Ray are timed once more on their own before the search, to split the time ``launch()``
spends outside Tune.

Each trial's iterations come from a quick calibration (one short in-process training on one
thread) unless ``--iterations`` is given. Timings depend on what else the machine runs, so the
load average is sampled throughout and printed with the results.

    python benchmarks/search_overhead.py                    # 8 trials x ~30 s, 2 at a time
    python benchmarks/search_overhead.py --trials 4 --iterations 20 --out overhead.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self needs Python 3.11

TARGET = 0.90
TRIAL_SECONDS = 30.0
VAL_TASKS = 50  # per validation; two validations per trial (halfway and at the end)
OBJECT_STORE_BYTES = 300 * 2**20

now = time.perf_counter
MARKS: dict[str, float] = {}
EVENTS: list[tuple[float, str, str, dict[str, Any]]] = []  # (time, kind, trial_id, result)


# --- the search space --------------------------------------------------------------------------

def bench_space(trials: int, concurrent: int, iterations: int) -> dict[str, Any]:
    """cosine_l2 as shipped (same model, data, searched parameters and sampler), shrunk to a
    fixed budget per trial: ASHA off, no test evaluation, 1 CPU and no GPU per trial."""
    from gs_tune.search.space import load_space

    data = load_space("cosine_l2").to_dict()
    data["name"] = "search_overhead"
    data["description"] = "benchmarks/search_overhead.py: cosine_l2 with a fixed budget per trial"
    data["fixed"].update(
        iterations=iterations, val_every=max(1, iterations // 2), val_tasks=VAL_TASKS, test_tasks=0,
    )
    data["num_samples"] = trials
    data["max_concurrent"] = concurrent
    data["scheduler"] = {"name": "none"}
    data["resources"] = {"cpus_per_trial": 1, "gpus_per_trial": 0}
    data["storage"] = None
    return data


def calibrate(fixed: dict[str, Any], seconds: float) -> tuple[int, dict[str, float]]:
    """Iterations for ``seconds`` of trainer time on one thread, from a short in-process run."""
    import torch

    from gs_tune.config import train_config
    from gs_tune.data import load_dataset
    from gs_tune.trainer import train

    torch.set_num_threads(1)
    data = load_dataset(fixed["dataset"])
    probe = 12
    # the middle of the searched ranges: the correction is computed, the clip may bind
    values = {**fixed, "w_cos": 0.03, "w_l2": 0.005, "inner_lr": 0.2, "outer_lr": 1e-3,
              "ahe_schedule": "constant", "ahe_clip": 2.0, "iterations": probe, "val_every": probe,
              "val_tasks": VAL_TASKS, "test_tasks": 0}
    for _ in train(train_config({**values, "iterations": 2, "val_every": 2}), device="cpu", dataset=data):
        pass  # warm-up: first-call costs (allocator, kernels) are not per-iteration costs
    record = list(train(train_config(values), device="cpu", dataset=data))[-1]
    sec_per_iter = record["sec_per_iter"]
    val_seconds = max(0.0, record["elapsed_s"] - sec_per_iter * probe)
    iterations = max(4, round((seconds - 2 * val_seconds) / sec_per_iter))
    return iterations, {"sec_per_iter": sec_per_iter, "val_seconds": val_seconds}


# --- timing -----------------------------------------------------------------------------------

def timing_callback():
    """A Tune callback that timestamps the run (setup, end) and each trial's start, results, end."""
    from ray import tune

    class Timing(tune.Callback):
        def setup(self, **info):
            MARKS["fit_start"] = now()

        def on_experiment_end(self, trials, **info):
            MARKS["fit_end"] = now()

        def on_trial_start(self, iteration, trials, trial, **info):
            EVENTS.append((now(), "start", trial.trial_id, {}))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            EVENTS.append((now(), "result", trial.trial_id, dict(result)))

        def on_trial_complete(self, iteration, trials, trial, **info):
            EVENTS.append((now(), "end", trial.trial_id, {}))

        def on_trial_error(self, iteration, trials, trial, **info):
            EVENTS.append((now(), "end", trial.trial_id, {"error": True}))

    return Timing()


def ray_start_stop() -> tuple[float, float]:
    """Seconds to start and to stop a local Ray as launch() does, measured once in this process."""
    from gs_tune.search.cluster import ray_session

    t0 = now()
    with ray_session(None, object_store_memory=OBJECT_STORE_BYTES):
        t1 = now()
    return t1 - t0, now() - t1


class LoadSampler:
    """1-minute load average every few seconds while the search runs."""

    def __init__(self, every: float = 5.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(every):
                return

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- per-trial setup costs, measured outside Ray ----------------------------------------------

SETUP_PROBE = r"""
import json, sys, tempfile, time
t = time.perf_counter
out = {}
t0 = t(); import torch; out["import torch"] = t() - t0
torch.set_num_threads(1)
t0 = t(); import ray; from ray import tune; out["import ray + ray.tune"] = t() - t0
t0 = t(); import gs_tune.search.trial; out["import gs_tune.search.trial (rest)"] = t() - t0
import numpy as np
from pathlib import Path
from gs_tune.config import train_config
from gs_tune.data import TaskSampler, load_dataset
from gs_tune.models import build_model
from gs_tune.trainer import save_checkpoint
cfg = train_config(json.loads(sys.argv[1]))
t0 = t(); data = load_dataset(cfg.dataset); out["load_dataset (digits, resize)"] = t() - t0
t0 = t()
sampler = TaskSampler(data.val, cfg.ways, cfg.shots, cfg.query, "val")
sampler.sample(cfg.val_tasks, np.random.default_rng(0))
out[f"sample {cfg.val_tasks} validation tasks"] = t() - t0
t0 = t()
model = build_model(cfg.model, data.image_shape, cfg.ways, cfg.filters, torch.Generator().manual_seed(0))
optimiser = torch.optim.Adam(model.parameters(), lr=cfg.outer_lr)
out["build model + Adam"] = t() - t0
with tempfile.TemporaryDirectory() as d:
    t0 = t()
    save_checkpoint(Path(d) / "checkpoint.pt", {"model": model.state_dict(), "optimiser": optimiser.state_dict()})
    out["save checkpoint"] = t() - t0
print(json.dumps(out))
"""


def setup_costs(fixed: dict[str, Any]) -> dict[str, float]:
    """What a trial pays before the trainer's clock starts, each in a fresh interpreter."""
    out: dict[str, float] = {}
    t0 = now()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    out["python start (empty interpreter)"] = now() - t0
    proc = subprocess.run([sys.executable, "-c", SETUP_PROBE, json.dumps(fixed)], check=True,
                          capture_output=True, text=True)
    out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


# --- analysis ---------------------------------------------------------------------------------

def trial_timeline() -> dict[str, dict[str, Any]]:
    trials: dict[str, dict[str, Any]] = {}
    for t, kind, trial_id, result in EVENTS:
        row = trials.setdefault(trial_id, {"results": []})
        if kind == "start":
            row.setdefault("start", t)
        elif kind == "end":
            row["end"] = t
        else:
            row["results"].append((t, result))
    return trials


def idle_split(spans: list[tuple[float, float]], slots: int) -> tuple[float, float]:
    """Idle slot-seconds between the first start and the last end: (while trials were still
    waiting to start, after the last trial started = the tail with fewer trials than slots)."""
    if not spans:
        return 0.0, 0.0
    edges = sorted({t for span in spans for t in span})
    last_start = max(s for s, _ in spans)
    handoff = tail = 0.0
    for a, b in itertools.pairwise(edges):
        running = sum(1 for s, e in spans if s <= a and e >= b)
        idle = max(0, slots - running) * (b - a)
        if b <= last_start:
            handoff += idle
        else:
            tail += idle
    return handoff, tail


def fmt_s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f} s"


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def report(args: argparse.Namespace, info: dict[str, Any]) -> str:
    from gs_tune.results.tables import read_trials

    rows = read_trials(info["run_dir"]).to_pylist()
    slots = args.concurrent
    meta = sum(r["wall_seconds"] or 0.0 for r in rows)
    launch_wall = info["launch_end"] - info["launch_start"]
    tune_wall = MARKS["fit_end"] - MARKS["fit_start"]
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1

    timeline = trial_timeline()
    spans, outside, tune_side, pids = [], [], [], set()
    for t in timeline.values():
        if "start" not in t or "end" not in t or not t["results"]:
            continue
        last = t["results"][-1][1]
        elapsed = float(last.get("elapsed_s", 0.0))
        spans.append((t["start"], t["end"]))
        outside.append((t["end"] - t["start"]) - elapsed)
        if "time_total_s" in last:
            # Tune's clock of the trainable (first train() call to last report) minus the trainer's
            tune_side.append(float(last["time_total_s"]) - elapsed)
        if "pid" in last:
            pids.add(last["pid"])
    first_start = min(s for s, _ in spans)
    last_end = max(e for _, e in spans)
    handoff, tail = idle_split(spans, slots)
    loads = info["load"]
    machine = (f"Machine: {os.cpu_count()} CPUs; load average (1 min) before {info['load_before']:.2f}, "
               f"during min {min(loads):.2f} / mean {sum(loads) / len(loads):.2f} / max {max(loads):.2f} "
               f"({len(loads)} samples), after {info['load_after']:.2f}.")
    budget = (f"Trial budget: {info['iterations']} meta-iterations, validation of {VAL_TASKS} tasks at "
              f"{max(1, info['iterations'] // 2)} and {info['iterations']}, no test evaluation")
    if info.get("calibration"):
        budget += (f" (calibrated: {info['calibration']['sec_per_iter']:.3f} s/iteration, "
                   f"{info['calibration']['val_seconds']:.1f} s/validation on one thread)")
    status = (f"Trial status: {', '.join(f'{n} {s}' for s, n in sorted(statuses.items()))}; "
              f"{len(pids)} trial process(es) served {len(spans)} trials (reuse_actors).")
    lines = [
        f"## Search overhead: {len(rows)} trials, {slots} at once, 1 CPU each, ASHA off",
        "",
        machine,
        budget + ".",
        status,
        "",
        "| Measure | Value |",
        "|---|---|",
        f"| Wall, whole `launch()` (space, Ray start, Tune, Ray stop, summary) | {fmt_s(launch_wall)} |",
        f"| Wall, Tune only (its run inside `Tuner.fit`) | {fmt_s(tune_wall)} |",
        f"| Sum of trial meta-training (`wall_seconds`, trainer clock) | {fmt_s(meta)} |",
        f"| Mean meta-training per trial | {fmt_s(meta / max(1, len(rows)))} |",
        f"| Slots (`max_concurrent`) | {slots} |",
        f"| **Share, whole launch** = sum / (wall x slots) | **{pct(meta, launch_wall * slots)}** |",
        f"| **Share, Tune only** | **{pct(meta, tune_wall * slots)}** |",
        f"| Target | >= {TARGET:.0%} |",
        f"| Driver process CPU time during `launch()` | {fmt_s(info['driver_cpu'])} |",
    ]
    spi = [r["sec_per_iter"] for r in rows if r.get("sec_per_iter")]
    if spi and info.get("calibration"):
        alone = info["calibration"]["sec_per_iter"]
        mean = sum(spi) / len(spi)
        lines.append(f"| Mean s/iteration in the search vs alone (calibration) | {mean:.3f} vs {alone:.3f} "
                     f"(x{mean / alone:.2f}) |")
    lines += [
        "",
        "Where the slot-time went (slot-seconds = seconds x slots idle or busy):",
        "",
        "| Component | Slot-seconds | Share of whole launch |",
        "|---|---|---|",
    ]
    total = launch_wall * slots
    ray_start, ray_stop = (seconds * slots for seconds in info["ray_alone"])
    # before Tune's run: the space, the run directory, Ray's start, the searcher and its study
    build = (MARKS["fit_start"] - info["launch_start"]) * slots - ray_start
    startup = (first_start - MARKS["fit_start"]) * slots
    in_trial = sum(outside)
    teardown = (MARKS["fit_end"] - last_end) * slots
    post = (info["launch_end"] - MARKS["fit_end"]) * slots - ray_stop
    components = [
        ("Meta-training + validation (trainer clock)", meta),
        ("Inside trials, outside the trainer clock (actor, imports, data, checkpoints, reports)",
         in_trial),
        ("Between trials: slot free while trials still waited to start", handoff),
        ("Tail: fewer trials left than slots", tail),
        ("Tune start: its run's start to first trial start (incl. starting the trial processes)", startup),
        ("Tune end: last trial end to the end of Tune's run", teardown),
        ("Ray start (ray.init; timed alone before the search)", ray_start),
        ("Space, run directory, searcher and Optuna study, Tuner build", build),
        ("Ray stop (ray.shutdown; timed alone before the search)", ray_stop),
        ("launch() after Tune (Ray stop aside): summary", post),
    ]
    for name, value in components:
        lines.append(f"| {name} | {value:.1f} | {pct(value, total)} |")
    accounted = sum(v for _, v in components)
    lines.append(f"| (unaccounted: rounding, parquet/Tune bookkeeping) | {total - accounted:.1f} | "
                 f"{pct(total - accounted, total)} |")
    per_trial = ", ".join(f"{x:.1f}" for x in sorted(outside))
    lines += ["", (f"Per trial, outside the trainer clock (driver-seen start to end, minus `elapsed_s`): "
                   f"{per_trial} s")]
    if tune_side:
        lines.append("  of which inside the trainable before/after the trainer clock (Tune's time_total_s "
                     "minus elapsed_s): " + ", ".join(f"{x:.1f}" for x in sorted(tune_side)) + " s")
    lines += ["", ("Setup a trial pays before the trainer clock starts, measured once in a fresh "
                   "interpreter on one thread (same load):"), "", "| Step | Seconds |", "|---|---|"]
    for name, value in info["setup"].items():
        lines.append(f"| {name} | {value:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=8, help="trials in the search (default 8)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials at once (default 2)")
    parser.add_argument("--iterations", type=int, default=0,
                        help=f"meta-iterations per trial (default: calibrated to ~{TRIAL_SECONDS:.0f} s)")
    parser.add_argument("--trial-seconds", type=float, default=TRIAL_SECONDS,
                        help="calibration target per trial (default 30)")
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary runs directory")
    args = parser.parse_args(argv)

    import yaml

    info: dict[str, Any] = {"load_before": os.getloadavg()[0]}
    fixed = bench_space(args.trials, args.concurrent, 1)["fixed"]
    if args.iterations > 0:
        info["iterations"] = args.iterations
    else:
        info["iterations"], info["calibration"] = calibrate(fixed, args.trial_seconds)
        print(f"calibrated: {info['iterations']} iterations per trial "
              f"({info['calibration']['sec_per_iter']:.3f} s/iteration)", flush=True)
    space = bench_space(args.trials, args.concurrent, info["iterations"])

    from gs_tune.search.runner import launch

    info["ray_alone"] = ray_start_stop()
    runs = Path(tempfile.mkdtemp(prefix="gs-tune-overhead-"))
    try:
        space_file = runs / "search_overhead.yaml"
        space_file.write_text(yaml.safe_dump(space, sort_keys=False))
        with LoadSampler() as load:
            cpu = time.process_time()
            info["launch_start"] = now()
            info["run_dir"] = launch(str(space_file), name="overhead", runs_dir=runs,
                                     object_store_memory=OBJECT_STORE_BYTES, callbacks=[timing_callback()])
            info["launch_end"] = now()
            info["driver_cpu"] = time.process_time() - cpu
        info["load"] = load.samples
        info["load_after"] = os.getloadavg()[0]
        info["setup"] = setup_costs(space["fixed"])
        text = report(args, info)
    finally:
        if args.keep:
            print(f"runs directory kept: {runs}")
        else:
            shutil.rmtree(runs, ignore_errors=True)
    print()
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
