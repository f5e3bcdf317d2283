"""Accuracy of the finite-difference Hessian-vector product against the exact one.

AHE multiplies the support Hessian H_S(θ) by a vector u built from the query
gradient; the default computes H_S·u with a central difference of two support
gradients at θ ± ε·u/‖u‖ (gs_tune.algorithms.common.hvp_finite_difference).
This script measures its relative error ‖H·u_fd − H·u‖/‖H·u‖ on Conv-4 (32
filters) at its initial parameters, on real digits tasks (5-way 1-shot, 15
queries per class, training split), with u = g_Q, the query gradient after one
inner step of α = 0.4 (the direction AHE's dot loss uses), for float32 and
float64 and a range of ε. The reference is the exact HVP (forward-over-reverse,
``hvp_exact``) in float64 for both dtypes. The error has two sources: rounding,
~(machine eps)/ε, and ReLU / max-pool kinks crossed within ±ε, which add errors
of order jump/ε for the examples whose activations sit that close to a kink.

    python benchmarks/hvp_accuracy.py                     # ~30 tasks, 10 s to 3 min on 2 cores
    python benchmarks/hvp_accuracy.py --tasks 100 --out /tmp/bench_hvp.txt
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch.func import grad

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gs_tune.algorithms.common import hvp_exact, hvp_finite_difference, loss_with_aux
from gs_tune.data import TaskSampler, load_dataset
from gs_tune.meta import make_loss_fn
from gs_tune.models import build_model

EPSILONS = (1e-2, 1e-3, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
INNER_LR = 0.4


def flat(tree: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tree.values()])


def errors(num_tasks: int, shots: int, seed: int) -> dict[tuple[str, float], list[float]]:
    data = load_dataset("digits")
    tasks = TaskSampler(data.train, 5, shots, 15, "train").sample(num_tasks, np.random.default_rng(seed))
    base = build_model("conv4", data.image_shape, 5, 32, torch.Generator().manual_seed(seed))
    models = {"float64": base.double(), "float32": build_model(
        "conv4", data.image_shape, 5, 32, torch.Generator().manual_seed(seed)).float()}
    out: dict[tuple[str, float], list[float]] = {}
    for t in range(num_tasks):
        xs, ys, xq, yq = (tensor[t] for tensor in tasks)
        # u = g_Q at θ' = θ − α∇L_S(θ), and the exact H_S(θ)·u, both in float64
        loss_fn = make_loss_fn(models["float64"])
        theta = {k: p.detach() for k, p in models["float64"].named_parameters()}
        xs64, xq64 = xs.double(), xq.double()
        g_s, _ = grad(loss_with_aux(loss_fn), has_aux=True)(theta, xs64, ys)
        adapted = {k: theta[k] - INNER_LR * g_s[k] for k in theta}
        u, _ = grad(loss_with_aux(loss_fn), has_aux=True)(adapted, xq64, yq)
        exact = flat(hvp_exact(loss_fn, theta, xs64, ys, u))
        for dtype, model in models.items():
            fn = make_loss_fn(model)
            params = {k: p.detach() for k, p in model.named_parameters()}
            x = xs.to(getattr(torch, dtype))
            u_d = {k: v.to(getattr(torch, dtype)) for k, v in u.items()}
            for eps in EPSILONS:
                fd = flat(hvp_finite_difference(fn, params, x, ys, u_d, eps))
                out.setdefault((dtype, eps), []).append(float((fd - exact).norm() / exact.norm()))
    return out


def render(errs: dict[tuple[str, float], list[float]], num_tasks: int, shots: int) -> str:
    lines = [
        (f"# Finite-difference HVP accuracy: Conv-4 (32 filters), digits 5-way {shots}-shot, "
         f"{num_tasks} tasks, initial θ"),
        "",
        ("Relative error ‖H·u_fd − H·u‖/‖H·u‖, u = query gradient after one inner step (α = 0.4); "
         "reference: exact HVP in float64."),
        "",
        "| dtype | fd_eps | median | 90th pct | max |",
        "|---|---|---|---|---|",
    ]
    best = {}
    for dtype in ("float32", "float64"):
        for eps in EPSILONS:
            e = np.array(errs[(dtype, eps)])
            med, p90, mx = np.median(e), np.percentile(e, 90), e.max()
            lines.append(f"| {dtype} | {eps:.0e} | {med:.1e} | {p90:.1e} | {mx:.1e} |")
            if dtype not in best or p90 < best[dtype][1]:
                best[dtype] = (eps, p90)
    lines.append("")
    for dtype, (eps, p90) in best.items():
        lines.append(f"Lowest 90th percentile, {dtype}: fd_eps = {eps:.0e} ({p90:.1e}).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    text = render(errors(args.tasks, args.shots, args.seed), args.tasks, args.shots)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from meta_gradient_cost import code_version

    text += (f"\n(torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
             f"{code_version()})\n")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
