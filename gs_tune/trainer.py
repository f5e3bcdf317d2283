"""Meta-training as an importable generator: ``for record in train(cfg): ...``.

No Ray or Arrow in here: those are adapters that consume the records, whose shape is
:mod:`gs_tune.records`. Every ``val_every`` meta-iterations the trainer yields a ``val``
record; after the last iteration a ``test`` record (when ``test_tasks`` > 0). A non-finite
training loss ends the run with a ``diverged`` record. Checkpoints (model, Adam state, RNG
state, iteration, running averages) are written atomically, and a val record says where.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import resource
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gs_tune.algorithms import STAT_NAMES
from gs_tune.config import DEVICES, TrainConfig
from gs_tune.data import FewShotDataset, TaskBatch, TaskSampler, load_dataset
from gs_tune.errors import CheckpointError, ConfigError
from gs_tune.fileio import atomic_write, atomic_write_text
from gs_tune.meta import adapt_and_evaluate, meta_gradient
from gs_tune.models import build_model
from gs_tune.records import Record, TrainPoint
from gs_tune.stats import mean_interval

CHECKPOINT_NAME = "checkpoint.pt"
RESULT_NAME = "result.json"
EVAL_CHUNK = 50  # tasks moved to the device at once during evaluation
# the algorithms' statistic names as the records call them
_RECORD_NAMES = dict(zip(STAT_NAMES, ("train_loss", "train_accuracy", "grad_norm", "correction_norm",
                                      "grad_cosine")))


def ahe_lambda(cfg: TrainConfig, iteration: int) -> float:
    """λ(t) for the meta-iteration about to run (0-based), t = iteration / iterations ∈ [0, 1)."""
    t = iteration / cfg.iterations
    peak = cfg.ahe_scale
    if cfg.ahe_schedule == "constant":
        return peak
    if cfg.ahe_schedule == "linear_warmup":
        return peak * min(1.0, t / cfg.ahe_warmup) if cfg.ahe_warmup > 0 else peak
    if cfg.ahe_schedule == "linear_decay":
        return peak * (1.0 - t)
    if cfg.ahe_schedule == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * t))
    return peak * cfg.ahe_step_gamma ** math.floor(t / cfg.ahe_step_every)


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError("device", f"got {name!r}, allowed: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        # Ray sets CUDA_VISIBLE_DEVICES for a trial holding a GPU share; a CPU build of torch, or a
        # node that only declares GPUs, is the usual cause, and both show in these two facts.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        build = f"torch {torch.__version__}, " + (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only")
        raise ConfigError("device", f"cuda was asked for but torch sees no CUDA device (CUDA_VISIBLE_DEVICES="
                                    f"{visible}, {build} build); allowed here: auto, cpu")
    return torch.device(name)


def evaluate(
    model: torch.nn.Module, tasks: TaskBatch | Iterable[TaskBatch], cfg: TrainConfig, device: torch.device,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Adapt on each task's support set, score on its query set: mean loss, accuracy and CI over tasks.

    ``tasks``: one batch, moved to the device EVAL_CHUNK tasks at a time, or its tasks already in
    chunks (TaskSampler.chunks), so that a long test need not hold every task's images at once."""
    steps = cfg.eval_inner_steps or cfg.inner_steps
    parts = tasks
    if isinstance(tasks, TaskBatch):
        parts = (TaskBatch(*(t[start : start + EVAL_CHUNK] for t in tasks))
                 for start in range(0, tasks.num_tasks, EVAL_CHUNK))
    losses, accs = [], []
    for part in parts:
        chunk = part.to(device, dtype)
        loss, acc = adapt_and_evaluate(model, chunk, cfg.inner_lr, steps, batch_norm=cfg.eval_batch_norm)
        losses.append(loss)
        accs.append(acc)
    acc = mean_interval(torch.cat(accs).double().tolist(), over="tasks")
    return {"loss": float(torch.cat(losses).mean()), "accuracy": acc.mean, "ci95": acc.half_width}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux: the process's peak resident memory
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint's state, loaded with ``weights_only=True`` whatever torch's default: tensors,
    numbers, strings and containers only, so a tampered file cannot run code when it is read."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint: {path} does not exist") from None
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint: {path} holds more than tensors and plain values, refused "
                              f"({first[:160]})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"checkpoint: {path} cannot be read ({str(exc).splitlines()[0][:160]})") from None


class _Window:
    """Training statistics summed over the iterations since the window was last taken."""

    def __init__(self, sums: dict[str, float] | None = None, count: int = 0):
        self.sums = dict(sums) if sums else {k: 0.0 for k in STAT_NAMES}
        self.count = count

    def add(self, values: dict[str, float]) -> None:
        for k in STAT_NAMES:
            self.sums[k] += values[k]
        self.count += 1

    def take(self, lam: float) -> dict[str, float]:
        """The averages under their record names (with the λ in force), and a fresh window."""
        out = {_RECORD_NAMES[k]: v / max(self.count, 1) for k, v in self.sums.items()}
        self.__init__()
        return {**out, "ahe_lambda": lam}

    def state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "count": self.count}


class RunState:
    """Everything that makes a run resumable, and the checkpoint that saves and restores it."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, rng: np.random.Generator):
        self.cfg, self.model, self.rng = cfg, model, rng
        self.optimiser = torch.optim.Adam(model.parameters(), lr=cfg.outer_lr)
        self.iteration, self.elapsed_before, self.train_seconds = 0, 0.0, 0.0
        self.started = time.perf_counter()
        # averaged since the last validation / the last log point; checkpointed so a resumed run
        # averages over the same iterations as an uninterrupted one
        self.since_val, self.since_log = _Window(), _Window()
        self.train_log: list[TrainPoint] = []
        self.last_val: dict[str, Any] = {}

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def restore(self, path: str | Path, device: torch.device) -> None:
        path = Path(path)
        state = load_checkpoint(path / CHECKPOINT_NAME if path.is_dir() else path, device)
        self.model.load_state_dict(state["model"])
        self.optimiser.load_state_dict(state["optimiser"])
        self.rng.bit_generator.state = state["rng"]
        self.iteration, self.elapsed_before = state["iteration"], state["elapsed_s"]
        self.train_seconds, self.last_val = state["train_seconds"], state["last_val"]
        self.since_val, self.since_log = _Window(**state["since_val"]), _Window(**state["since_log"])
        self.train_log = state["train_log"]

    def checkpoint(self, directory: Path | None) -> str | None:
        if directory is None:
            return None
        path = directory / CHECKPOINT_NAME
        save_checkpoint(path, {
            "model": self.model.state_dict(), "optimiser": self.optimiser.state_dict(),
            "rng": self.rng.bit_generator.state, "iteration": self.iteration, "elapsed_s": self.elapsed(),
            "train_seconds": self.train_seconds, "config": self.cfg.as_dict(), "last_val": self.last_val,
            "since_val": self.since_val.state(), "since_log": self.since_log.state(),
            "train_log": self.train_log,
        })
        return str(path)

    def step(self, sampler: TaskSampler, device: torch.device, dtype: torch.dtype) -> tuple[dict[str, float], float]:
        """One meta-iteration: the algorithm's statistics and the λ it ran with."""
        t0 = time.perf_counter()
        lam = ahe_lambda(self.cfg, self.iteration)
        tasks = sampler.sample(self.cfg.meta_batch, self.rng).to(device, dtype)
        grads, stats = meta_gradient(self.model, tasks, self.cfg.algorithm, self.cfg.algo_hparams(lam))
        self.optimiser.zero_grad(set_to_none=False)
        for name, p in self.model.named_parameters():
            p.grad = grads[name]
        self.optimiser.step()
        self.train_seconds += time.perf_counter() - t0
        self.iteration += 1
        return {k: float(v) for k, v in stats.items()}, lam


class _Samplers:
    """The run's task streams. One seed, four independent streams: changing how many tasks one
    stream draws never shifts another, and every trial of a search with the same seed validates
    on the very same tasks."""

    def __init__(self, cfg: TrainConfig, data: FewShotDataset):
        train_seq, val_seq, self.test_seq, init_seq = np.random.SeedSequence(cfg.seed).spawn(4)
        self.rng = np.random.default_rng(train_seq)
        self.train = TaskSampler(data.meta_train(cfg.meta_train_splits), cfg.ways, cfg.shots, cfg.query,
                                 cfg.meta_train_splits)
        self.val_tasks = TaskSampler(data.val, cfg.ways, cfg.shots, cfg.query, "val").sample(
            cfg.val_tasks, np.random.default_rng(val_seq))
        self.test = TaskSampler(data.test, cfg.ways, cfg.shots, cfg.query, "test") if cfg.test_tasks else None
        self.init_gen = torch.Generator().manual_seed(int(init_seq.generate_state(1)[0]))

    def test_tasks(self, n: int) -> Iterator[TaskBatch]:
        """The run's n test tasks, drawn a chunk at a time as evaluation reaches them."""
        assert self.test is not None
        return self.test.chunks(n, np.random.default_rng(self.test_seq), EVAL_CHUNK)


def _val_record(run: RunState, val: dict[str, float], lam: float, device: torch.device) -> Record:
    done = run.iteration
    return {
        "kind": "val", "iteration": done, "elapsed_s": run.elapsed(), "sec_per_iter": run.train_seconds / done,
        "peak_memory_mb": peak_memory_mb(device), "device": str(device), **run.since_val.take(lam),
        "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_ci95": val["ci95"],
        "train_log": run.train_log,
    }


def _write_result(out: Path, cfg: TrainConfig, last_val: dict[str, Any], test: Record | None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    kept = {k: v for k, v in last_val.items() if k not in ("kind", "checkpoint", "train_log")}
    result = {"config": cfg.as_dict(), **kept, **{k: v for k, v in (test or {}).items() if k != "kind"}}
    atomic_write_text(out / RESULT_NAME, json.dumps(result, indent=2) + "\n")


def _progress_bar(enabled: bool, cfg: TrainConfig, start: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.iterations, initial=start, desc=cfg.algorithm, unit="it")


def train(
    cfg: TrainConfig,
    *,
    device: str = "auto",
    out: str | Path | None = None,
    progress: bool = False,
    tensorboard: bool = False,
    resume_from: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    dataset: FewShotDataset | None = None,
) -> Iterator[Record]:
    """Meta-train ``cfg`` and yield :class:`gs_tune.records.Record` s (see the module docstring).

    ``device`` is auto, cpu or cuda. ``out`` receives checkpoint.pt and result.json (and, with
    ``tensorboard``, TensorBoard scalars under out/tensorboard); ``checkpoint_dir`` (default
    ``out``) receives checkpoint.pt every ``checkpoint_every`` iterations and at every
    validation; ``resume_from`` is a checkpoint file or a directory holding one.
    """
    if tensorboard and out is None:
        raise ConfigError("tensorboard", "needs an output directory (out) to write to")
    records = _train(cfg, resolve_device(device), Path(out) if out is not None else None, progress,
                     resume_from, Path(checkpoint_dir) if checkpoint_dir is not None else None, dataset)
    if not tensorboard:
        return records
    from gs_tune.results.tensorboard import log_records  # an adapter around the records

    return log_records(records, Path(out) / "tensorboard", cfg.as_dict())


def _train(
    cfg: TrainConfig, device: torch.device, out: Path | None, progress: bool, resume_from: str | Path | None,
    checkpoint_dir: Path | None, dataset: FewShotDataset | None,
) -> Iterator[Record]:
    dtype = getattr(torch, cfg.dtype)
    data = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_root)
    streams = _Samplers(cfg, data)
    model = build_model(cfg.model, data.image_shape, cfg.ways, cfg.filters, streams.init_gen,
                        channels_last=cfg.memory_format == "channels_last").to(device, dtype)
    run = RunState(cfg, model, streams.rng)
    if resume_from is not None:
        run.restore(resume_from, device)
    ckpt_dir = checkpoint_dir if checkpoint_dir is not None else out
    if run.iteration >= cfg.iterations and run.last_val:
        # resumed from the final checkpoint (a crash after the run's last report reached its
        # checkpoint but not its consumer): say the last validation again instead of nothing
        yield {**run.last_val, "checkpoint": run.checkpoint(ckpt_dir)}
    bar = _progress_bar(progress, cfg, run.iteration)
    try:
        while run.iteration < cfg.iterations:
            values, lam = run.step(streams.train, device, dtype)
            done = run.iteration
            if not math.isfinite(values["query_loss"]):
                yield {"kind": "diverged", "iteration": done, "elapsed_s": run.elapsed(),
                       "train_loss": values["query_loss"], "sec_per_iter": run.train_seconds / done}
                return
            run.since_val.add(values)
            run.since_log.add(values)
            if done % cfg.log_every == 0 or done == cfg.iterations:
                run.train_log.append({"iteration": done, **run.since_log.take(lam)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{values['query_loss']:.3f}", acc=f"{values['query_accuracy']:.2f}")
            if done % cfg.val_every and done != cfg.iterations:
                if done % cfg.checkpoint_every == 0:
                    run.checkpoint(ckpt_dir)
                continue
            run.last_val = _val_record(run, evaluate(model, streams.val_tasks, cfg, device, dtype), lam, device)
            run.train_log = []
            yield {**run.last_val, "checkpoint": run.checkpoint(ckpt_dir)}
    finally:
        if bar is not None:
            bar.close()
    test: Record | None = None
    if streams.test is not None:
        scored = evaluate(model, streams.test_tasks(cfg.test_tasks), cfg, device, dtype)
        test = {"kind": "test", "iteration": cfg.iterations, "test_loss": scored["loss"],
                "test_accuracy": scored["accuracy"], "test_ci95": scored["ci95"]}
    if out is not None:
        _write_result(out, cfg, run.last_val, test)
    if test is not None:
        yield test
