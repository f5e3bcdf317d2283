"""Meta-training as an importable generator: ``for record in train(cfg): ...``.

No Ray, TensorBoard or Arrow in here: those are adapters that consume the
records. Every ``val_every`` meta-iterations the trainer yields a record with
kind "val"; after the last iteration it yields one with kind "test" (when
``test_tasks`` > 0). A non-finite training loss ends the run with a record of
kind "diverged". Checkpoints (model, Adam state, RNG state, iteration) are
written atomically, and a record says where when one was written just before.
"""

from __future__ import annotations

import json
import math
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gs_tune.algorithms import STAT_NAMES
from gs_tune.config import TrainConfig
from gs_tune.data import FewShotDataset, TaskBatch, TaskSampler, load_dataset
from gs_tune.errors import ConfigError
from gs_tune.fileio import atomic_write, atomic_write_text
from gs_tune.meta import adapt_and_evaluate, meta_gradient
from gs_tune.models import build_model

CHECKPOINT_NAME = "checkpoint.pt"
EVAL_CHUNK = 50  # tasks moved to the device at once during evaluation


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
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was asked for but torch sees no CUDA device; allowed here: auto, cpu")
    return torch.device(name)


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width 1.96·sd/√M of the 95% confidence interval over M tasks."""
    v = values.double().cpu()
    if len(v) < 2:
        return float(v.mean()), float("nan")
    return float(v.mean()), float(1.96 * v.std(unbiased=True) / math.sqrt(len(v)))


def evaluate(
    model: torch.nn.Module, tasks: TaskBatch, cfg: TrainConfig, device: torch.device, dtype: torch.dtype
) -> dict[str, float]:
    """Adapt on each task's support set, score on its query set: mean loss, accuracy and CI."""
    steps = cfg.eval_inner_steps or cfg.inner_steps
    losses, accs = [], []
    for start in range(0, tasks.num_tasks, EVAL_CHUNK):
        chunk = TaskBatch(*(t[start : start + EVAL_CHUNK] for t in tasks)).to(device, dtype)
        loss, acc = adapt_and_evaluate(model, chunk, cfg.inner_lr, steps)
        losses.append(loss)
        accs.append(acc)
    acc_mean, acc_ci = mean_ci95(torch.cat(accs))
    return {"loss": float(torch.cat(losses).mean()), "accuracy": acc_mean, "ci95": acc_ci}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux: the process's peak resident memory
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def train(
    cfg: TrainConfig,
    *,
    resume_from: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    dataset: FewShotDataset | None = None,
) -> Iterator[dict[str, Any]]:
    """Meta-train ``cfg`` and yield metric records (see the module docstring).

    ``checkpoint_dir`` (default ``cfg.out``) receives checkpoint.pt every
    ``checkpoint_every`` iterations and at the end; ``resume_from`` is a
    checkpoint file or a directory holding one.
    """
    device = resolve_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    data = dataset if dataset is not None else load_dataset(cfg.dataset, cfg.data_root)
    train_sampler = TaskSampler(data.meta_train(cfg.meta_train_splits), cfg.ways, cfg.shots, cfg.query,
                                cfg.meta_train_splits)
    val_sampler = TaskSampler(data.val, cfg.ways, cfg.shots, cfg.query, "val")
    test_sampler = TaskSampler(data.test, cfg.ways, cfg.shots, cfg.query, "test") if cfg.test_tasks else None

    # One seed, four independent streams: changing how many tasks one stream
    # draws never shifts another, and every trial of a search with the same
    # seed validates on the very same tasks.
    train_seq, val_seq, test_seq, init_seq = np.random.SeedSequence(cfg.seed).spawn(4)
    rng = np.random.default_rng(train_seq)
    val_tasks = val_sampler.sample(cfg.val_tasks, np.random.default_rng(val_seq))
    init_gen = torch.Generator().manual_seed(int(init_seq.generate_state(1)[0]))
    model = build_model(cfg.model, data.image_shape, cfg.ways, cfg.filters, init_gen).to(device, dtype)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.outer_lr)

    start_iteration, elapsed_before, train_seconds = 0, 0.0, 0.0
    record: dict[str, Any] = {}  # the latest validation record
    # training stats summed since the last validation; checkpointed so a resumed
    # run averages over the same iterations as an uninterrupted one
    sums = {k: 0.0 for k in STAT_NAMES}
    counted = 0
    if resume_from is not None:
        path = Path(resume_from)
        state = torch.load(path / CHECKPOINT_NAME if path.is_dir() else path, map_location=device)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        rng.bit_generator.state = state["rng"]
        start_iteration, elapsed_before = state["iteration"], state["elapsed_s"]
        train_seconds = state["train_seconds"]
        record = state.get("last_record", {})
        sums, counted = state.get("sums", sums), state.get("counted", 0)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else (Path(cfg.out) if cfg.out else None)

    def checkpoint(iteration: int, elapsed: float) -> str | None:
        if ckpt_dir is None:
            return None
        path = ckpt_dir / CHECKPOINT_NAME
        save_checkpoint(path, {
            "model": model.state_dict(), "optimiser": optimiser.state_dict(), "rng": rng.bit_generator.state,
            "iteration": iteration, "elapsed_s": elapsed, "train_seconds": train_seconds,
            "config": cfg.as_dict(), "last_record": record,
            "sums": sums, "counted": counted,
        })
        return str(path)

    progress = None
    if cfg.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=cfg.iterations, initial=start_iteration, desc=cfg.algorithm, unit="it")
    started = time.perf_counter()
    for iteration in range(start_iteration, cfg.iterations):
        t0 = time.perf_counter()
        lam = ahe_lambda(cfg, iteration)
        tasks = train_sampler.sample(cfg.meta_batch, rng).to(device, dtype)
        grads, stats = meta_gradient(model, tasks, cfg.algorithm, cfg.algo_hparams(lam))
        optimiser.zero_grad(set_to_none=False)
        for name, p in model.named_parameters():
            p.grad = grads[name]
        optimiser.step()
        values = {k: float(v) for k, v in stats.items()}
        train_seconds += time.perf_counter() - t0
        done = iteration + 1
        elapsed = elapsed_before + time.perf_counter() - started
        if not math.isfinite(values["query_loss"]):
            # val_accuracy 0 ranks a diverged run below any real one for the searcher
            yield {"kind": "diverged", "iteration": done, "elapsed_s": elapsed, "val_accuracy": 0.0,
                   "train_loss": values["query_loss"], "sec_per_iter": train_seconds / done}
            return
        for k, v in values.items():
            sums[k] += v
        counted += 1
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{values['query_loss']:.3f}", acc=f"{values['query_accuracy']:.2f}")
        if done % cfg.val_every and done != cfg.iterations:
            if ckpt_dir is not None and done % cfg.checkpoint_every == 0:
                checkpoint(done, elapsed)
            continue
        val = evaluate(model, val_tasks, cfg, device, dtype)
        record = {
            "kind": "val", "iteration": done, "elapsed_s": elapsed_before + time.perf_counter() - started,
            "sec_per_iter": train_seconds / done,
            "train_loss": sums["query_loss"] / counted, "train_accuracy": sums["query_accuracy"] / counted,
            "grad_norm": sums["grad_norm"] / counted, "correction_norm": sums["correction_norm"] / counted,
            "grad_cosine": sums["grad_cosine"] / counted, "ahe_lambda": lam,
            "val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_ci95": val["ci95"],
        }
        sums = {k: 0.0 for k in STAT_NAMES}
        counted = 0
        saved = checkpoint(done, record["elapsed_s"])
        yield {**record, "checkpoint": saved}
    if progress is not None:
        progress.close()

    # The final record repeats the last validation so a consumer that keeps only
    # the last record (Ray Tune's searchers do) still sees every metric.
    final: dict[str, Any] = {**record, "kind": "test", "iteration": cfg.iterations,
                             "sec_per_iter": train_seconds / max(cfg.iterations, 1)}
    if test_sampler is not None:
        test_tasks = test_sampler.sample(cfg.test_tasks, np.random.default_rng(test_seq))
        test = evaluate(model, test_tasks, cfg, device, dtype)
        final.update(test_loss=test["loss"], test_accuracy=test["accuracy"], test_ci95=test["ci95"])
    final.update(
        elapsed_s=elapsed_before + time.perf_counter() - started, peak_memory_mb=peak_memory_mb(device),
        device=str(device),
    )
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        result = {"config": cfg.as_dict(), **{k: v for k, v in final.items() if k != "kind"}}
        atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
    if test_sampler is not None or cfg.out:
        yield final
