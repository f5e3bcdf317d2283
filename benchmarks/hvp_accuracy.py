"""Accuracy and cost of AHE's Hessian-vector product, per ``hvp`` mode.

AHE multiplies the support Hessian H_S(θ) by u = ∂ℓ/∂g_S (cosine and L2 terms,
w_cos 1, w_l2 0.1). This script measures, on Conv-4 (32 filters) trained in
float32 on real digits tasks (5-way, 15 queries per class, training split):

1. **Error per mode**: ‖H·u_mode − H·u‖/‖H·u‖ per task, where the reference H·u
   is forward-over-reverse differentiation (``torch.func.jvp`` of the gradient,
   written here) of a float64 copy of the model; at the initialisation and after
   ``--train-iterations`` meta-iterations of AHE (float32, Adam 1e-3), 1-shot and
   5-shot.
2. **ε of the finite-difference modes**: the same error for a range of fd_eps,
   at the initialisation: too large an ε crosses ReLU / max-pool kinks (error of
   order jump/ε), too small a one drowns in rounding (~machine-eps/ε).
3. **Time per meta-iteration** (``meta_gradient`` + Adam step, meta-batch 4,
   batching loop) of AHE in every mode against first-order MAML, K ∈ {1, 5},
   1-shot and 5-shot, all methods timed round-robin in one fresh process (the
   timing worker of meta_gradient_cost.py), so that a machine shared with other
   jobs slows them alike. "HVP cost" is AHE's time above FOMAML's, relative to
   the same for finite_difference_f32 (the earlier default).

    python benchmarks/hvp_accuracy.py                          # ~10 minutes on 2 loaded cores
    python benchmarks/hvp_accuracy.py --tasks 10 --reps 5 --train-iterations 20   # quick look
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np
import torch
from meta_gradient_cost import AHE_MODES, LAYOUTS, code_version, emit, run_worker
from torch.func import grad, jvp

from gs_tune.algorithms.ahe import similarity_direction, support_hvp
from gs_tune.algorithms.common import autograd_grad, loss_only
from gs_tune.config import HVP_MODES, AlgoHParams
from gs_tune.data import TaskSampler, load_dataset
from gs_tune.meta import make_loss_fn, meta_gradient, resolve_batching
from gs_tune.models import build_model

INNER_LR = 0.4
WEIGHTS = {"w_cos": 1.0, "w_l2": 0.1}
SWEEP = {"finite_difference": (1e-5, 1e-6, 3e-7, 1e-7, 3e-8, 1e-8),
         "finite_difference_f32": (1e-4, 1e-5, 3e-6, 1e-6)}
DEFAULT = AlgoHParams().hvp
GRADIENT = "(float32 support gradient)"


def flat(tree: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tree.values()])


def train(data, shots: int, iterations: int, seed: int, layout: str, device: str) -> torch.nn.Module:
    """Conv-4 in float32 after ``iterations`` meta-iterations of AHE (default HVP) with Adam."""
    model = build_model("conv4", data.image_shape, 5, 32, torch.Generator().manual_seed(seed),
                        channels_last=layout == "channels_last").to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler, rng = TaskSampler(data.train, 5, shots, 15, "train"), np.random.default_rng(seed + 1)
    for _ in range(iterations):
        grads, _ = meta_gradient(model, sampler.sample(4, rng).to(device), "ahe", inner_lr=INNER_LR, **WEIGHTS)
        for name, p in model.named_parameters():
            p.grad = grads[name]
        optimiser.step()
    return model


def errors(model, tasks, variants: dict[str, AlgoHParams]) -> dict[str, np.ndarray]:
    """Relative error of each variant's H_S·u against the float64 reference, per task, and
    (``GRADIENT``) that of the float32 support gradient itself: the floor float32 kernels set."""
    model64 = copy.deepcopy(model).double()
    fn, fn64 = make_loss_fn(model), make_loss_fn(model64)
    theta = {k: p.detach() for k, p in model.named_parameters()}
    theta64 = {k: p.detach() for k, p in model64.named_parameters()}
    out: dict[str, list[float]] = {name: [] for name in (GRADIENT, *variants)}
    for t in range(tasks.num_tasks):
        xs, ys, xq, yq = (tensor[t] for tensor in tasks)
        g_s = autograd_grad(loss_only(fn))(theta, xs, ys)
        g_ref = flat(autograd_grad(loss_only(fn64))(theta64, xs.double(), ys))
        out[GRADIENT].append(float((flat(g_s) - g_ref).norm() / g_ref.norm()))
        g_q = autograd_grad(loss_only(fn))({k: theta[k] - INNER_LR * g_s[k] for k in theta}, xq, yq)
        u = similarity_direction(g_s, g_q, AlgoHParams(**WEIGHTS))
        u64 = {k: v.double() for k, v in u.items()}
        x64 = xs.double()
        ref = flat(jvp(lambda p, x=x64, y=ys: grad(lambda q: fn64(q, x, y)[0])(p), (theta64,), (u64,))[1])
        for name, hp in variants.items():
            hu = flat(support_hvp(fn, theta, xs, ys, u, hp))
            out[name].append(float((hu - ref).norm() / ref.norm()))
    return {name: np.array(e) for name, e in out.items()}


def summary(e: np.ndarray) -> str:
    return f"{np.median(e):.1e} | {np.percentile(e, 90):.1e} | {e.max():.1e}"


def accuracy_section(data, args) -> tuple[list[str], dict]:
    modes = {mode: AlgoHParams(hvp=mode, batching="loop") for mode in HVP_MODES}
    sweep = {f"{mode} ε={eps:.0e}": AlgoHParams(hvp=mode, fd_eps=eps, batching="loop")
             for mode, values in SWEEP.items() for eps in values}
    lines = ["## Error per mode", "",
             (f"Conv-4 (32 filters) in float32, digits 5-way, {args.tasks} tasks; reference: exact HVP in float64. "
             f"`trained`: after {args.train_iterations} meta-iterations of AHE (default HVP, Adam 1e-3). "
             f"{GRADIENT}: the float32 support gradient's own error against float64, the floor of every mode "
             "computed in float32 kernels."), "",
             "| layout | shots | θ | hvp | median | 90th pct | max |", "|---|---|---|---|---|---|---|"]
    found: dict = {}
    sweeps = {}
    for layout in args.layouts:
        for shots in args.shots:
            tasks = TaskSampler(data.train, 5, shots, 15, "train").sample(
                args.tasks, np.random.default_rng(args.seed)).to(args.device)
            for state, iterations in (("init", 0), ("trained", args.train_iterations)):
                model = train(data, shots, iterations, args.seed, layout, args.device)
                sweeping = not iterations and layout == args.layouts[0]
                errs = errors(model, tasks, {**modes, **sweep} if sweeping else modes)
                for name in (GRADIENT, *HVP_MODES):
                    found[(layout, shots, state, name)] = errs[name]
                    lines.append(f"| {layout} | {shots} | {state} | {name} | {summary(errs[name])} |")
                if sweeping:
                    sweeps[shots] = {name: errs[name] for name in sweep}
                print(f"errors: {layout} shots {shots} {state} done", file=sys.stderr, flush=True)
    lines += ["", f"## ε of the finite-difference modes (initial θ, {args.layouts[0]})", "",
              "| shots | hvp, fd_eps | median | 90th pct | max |", "|---|---|---|---|---|"]
    for shots, errs in sweeps.items():
        lines += [f"| {shots} | {name} | {summary(e)} |" for name, e in errs.items()]
    return lines, found


def paired(rounds: dict[str, list[float]], fn) -> float:
    """Median over rounds of ``fn(times of that round)``: each round ran every method back to back."""
    n = min(len(t) for t in rounds.values())
    return float(np.median([fn({m: t[r] for m, t in rounds.items()}) for r in range(n)]))


def timing_section(args) -> tuple[list[str], dict]:
    methods = ["fomaml", *AHE_MODES]
    batching = resolve_batching("auto", torch.device(args.device))
    lines = [f"## Seconds per meta-iteration ({args.device}, meta-batch 4, batching {batching}, {LAYOUTS[0]})", "",
             ("Seconds: median over rounds. Ratios: median over rounds of the ratio within a round (every method "
             "ran once per round, back to back). HVP cost: (ahe − fomaml) / (ahe_fd32 − fomaml), the extra time "
             "of each mode against the earlier default's."), "",
             "| shots | K | " + " | ".join(methods) + " | " + " | ".join(f"{m}/fomaml" for m in AHE_MODES)
             + " | HVP cost: exact; fd |",
             "|---|---|" + "---|" * (2 * len(methods))]
    found = {}
    for shots in args.shots:
        for k in (1, 5):
            spec = {"device": args.device, "shots": shots, "steps": k, "reps": args.reps, "warmup": 2,
                    "threads": args.threads, "entries": [[m, batching, LAYOUTS[0]] for m in methods]}
            result = run_worker("timing", spec)
            rounds = {r[0]: t for r, t in zip(result["results"], result["rounds"])}
            seconds = {r[0]: r[3] for r in result["results"]}
            ratios = {m: paired(rounds, lambda t, m=m: t[m] / t["fomaml"]) for m in AHE_MODES}
            hvp = {m: paired(rounds, lambda t, m=m: (t[m] - t["fomaml"]) / (t["ahe_fd32"] - t["fomaml"]))
                   for m in ("ahe_exact", "ahe_fd")}
            found[(shots, k)] = {"ratios": ratios, "hvp": hvp}
            lines.append(f"| {shots} | {k} | " + " | ".join(f"{seconds[m]:.3f}" for m in methods) + " | "
                         + " | ".join(f"{ratios[m]:.2f}" for m in AHE_MODES)
                         + f" | {hvp['ahe_exact']:.2f}; {hvp['ahe_fd']:.2f} |")
            print(f"timing: shots {shots} K {k} done (load {result['load']:.2f})", file=sys.stderr, flush=True)
    return lines, found


def targets(errs: dict, times: dict, args) -> list[str]:
    out = ["## Targets", "", "| target | measured | pass |", "|---|---|---|"]
    for (layout, shots, state, name), e in errs.items():
        if name == DEFAULT:
            ok = np.median(e) <= 1e-5 and e.max() <= 1e-4
            out.append(f"| default HVP ({DEFAULT}) error, {layout}, {shots}-shot, {state}: median ≤ 1e-5, "
                       f"max ≤ 1e-4 | {np.median(e):.1e}, {e.max():.1e} | {'PASS' if ok else 'FAIL'} |")
    default_name = next(name for name, mode in AHE_MODES.items() if mode == DEFAULT)
    for (shots, k), t in times.items():
        if default_name in t["hvp"]:
            r = t["hvp"][default_name]
            out.append(f"| default HVP cost ≤ 1.4× the float32 difference's, {shots}-shot, K={k} | {r:.2f}× "
                       f"| {'PASS' if r <= 1.4 else 'FAIL'} |")
        if k == 5:
            r = t["ratios"][default_name]
            out.append(f"| ahe (default HVP) ≤ 1.3× fomaml at K=5, {shots}-shot | {r:.2f}× "
                       f"| {'PASS' if r <= 1.3 else 'FAIL'} |")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=30)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--train-iterations", type=int, default=100)
    parser.add_argument("--reps", type=int, default=15, help="timed meta-iterations per method")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (errors and timing)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the float32 model (and the float64 reference) run")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS,
                        help="model layouts for the error tables (timing: the default layout)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    lines = ["# AHE's Hessian-vector product: error and cost per mode", ""]
    if args.device == "cuda":  # float32 convolutions may run in TF32 there: say which
        lines += [(f"cuda: {torch.cuda.get_device_name()}, cudnn.allow_tf32 {torch.backends.cudnn.allow_tf32}, "
                  f"matmul fp32 precision {torch.get_float32_matmul_precision()}"), ""]
    acc_lines, errs = accuracy_section(load_dataset("digits"), args)
    times: dict = {}
    time_lines: list[str] = []
    if not args.skip_timing:
        time_lines, times = timing_section(args)
    lines += acc_lines + [""] + time_lines + [""] + targets(errs, times, args)
    lines += ["", (f"(torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores, load average "
              f"{load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end; {code_version()})")]
    text = "\n".join(lines) + "\n"
    emit(text, args.out)


if __name__ == "__main__":
    main()
