"""Time and peak memory of one meta-iteration, per algorithm, batching, layout and inner-step count.

A meta-iteration is ``meta_gradient`` + one Adam step on Conv-4 (32 filters,
28×28×1 images, 5-way, 15 queries per class, meta-batch 4, random inputs: the
cost does not depend on the pixel values). Compared: our maml, fomaml, reptile,
ahe with the exact HVP (the default) and with the float64 finite difference,
each with tasks batched by a Python loop and by vmap; and MAML / first-order
MAML written with the ``higher`` package (``pip install higher``), the usual
way, a loop over tasks. The loop runs in both memory layouts: channels_last
(NHWC weights and images) and contiguous (NCHW, ``build_model``'s default);
``higher`` gets the same model and the same images in each, so the comparison
stays like for like. vmap always runs in the contiguous layout (it cannot lay
tensors out channels-last).

Time: one fresh subprocess per (shots, K) runs every method on its own copy of
the model, ``--warmup`` untimed meta-iterations each, then ``--reps`` timed
ones round-robin over the methods; the tables give each method's median, and
every ratio is the median over rounds of the ratio within a round (the two
methods ran back to back). The interleaving matters on a shared machine: the
speed of this 2-core VM drifted by 1.5× over minutes (other tenants), which
made methods timed minutes apart incomparable.

Peak memory (default layout and vmap): one fresh subprocess per method and configuration. On CPU it is
the peak resident size during one meta-iteration minus the resident size just
before it (tracemalloc cannot see torch's allocations). A warm-up iteration
runs first, because the first call pages in libtorch code and builds caches
(~200 MB that is no algorithm's); then freed heap goes back to the system
(malloc_trim) and the kernel's peak counter is reset (/proc/self/clear_refs),
so VmHWM afterwards is this iteration's peak (not ``ru_maxrss``, which also
holds the parent's size at fork time). That process runs with a fixed glibc
mmap threshold (see MEMORY_ENV). On CUDA it is ``torch.cuda.max_memory_allocated``
minus what was allocated before.

    python benchmarks/meta_gradient_cost.py                  # full CPU run, ~25 minutes on 2 cores
    python benchmarks/meta_gradient_cost.py --quick          # K in {1, 5}, fewer reps
    python benchmarks/meta_gradient_cost.py --device cuda --out /tmp/bench_meta_cuda.txt
    python benchmarks/meta_gradient_cost.py --profile        # ours vs plain autograd vs higher, ~3 minutes
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INNER_LR = 0.4
WAYS, QUERY, META_BATCH, FILTERS, IMAGE = 5, 15, 4, 32, (1, 28, 28)
AHE = {"w_cos": 0.1, "w_l2": 0.01}  # the paper's losses; which weights are on does not change the cost
# ahe in each HVP mode: exact (the default), finite_difference (float64), finite_difference_f32, identity
AHE_MODES = {"ahe_exact": "exact", "ahe_fd": "finite_difference", "ahe_fd32": "finite_difference_f32",
             "ahe_identity": "identity"}
OURS = {
    "maml": ("maml", {}),
    "fomaml": ("fomaml", {}),
    "reptile": ("reptile", {}),
    **{name: ("ahe", {**AHE, "hvp": mode}) for name, mode in AHE_MODES.items()},
}
HIGHER = {"higher_maml": False, "higher_fomaml": True}  # name -> first_order
TABLE_METHODS = ["maml", "fomaml", "reptile", "ahe_exact", "ahe_fd"]  # every HVP mode: hvp_accuracy.py
# higher is optional (the `bench` extra): without it its columns are left out
HAS_HIGHER = importlib.util.find_spec("higher") is not None
COLUMNS = [*TABLE_METHODS, *(HIGHER if HAS_HIGHER else ())]
LAYOUTS = ("contiguous", "channels_last")  # the first is build_model's default


# --- worker: one measurement in its own process ------------------------------------------


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM, also ru_maxrss) to the current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Return glibc's free heap memory to the system, so that reusing it shows up as growth."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_mb(field: str) -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return None


def _rss_mb() -> float:
    rss = _status_mb("VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mb(device) -> float:
    """Peak memory so far: CUDA allocations, or the peak resident size (VmHWM).

    Not ``ru_maxrss``: it also counts the resident size the process had when it was
    forked, before exec, so a child of a large parent starts with the parent's peak.
    """
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(method: str, batching: str, model, tasks, steps: int):
    """A closure running one meta-iteration (meta-gradient + Adam step) of ``method``."""
    import torch

    from gs_tune.meta import meta_gradient

    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    if method in OURS:
        algorithm, kw = OURS[method]

        def step() -> None:
            grads, _ = meta_gradient(
                model, tasks, algorithm, inner_lr=INNER_LR, inner_steps=steps, batching=batching, **kw
            )
            for name, p in model.named_parameters():
                p.grad = grads[name]
            optimiser.step()

        return step

    first_order = HIGHER[method]

    def step() -> None:
        optimiser.zero_grad(set_to_none=False)
        higher_meta_gradient(model, tasks, steps, first_order)
        optimiser.step()

    return step


def higher_meta_gradient(model, tasks, steps: int, first_order: bool) -> None:
    """(First-order) MAML with ``higher``, accumulated into ``p.grad``: the usual loop over tasks."""
    import higher
    import torch
    import torch.nn.functional as F

    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    params = list(model.parameters())
    for t in range(tasks.num_tasks):
        xs, ys, xq, yq = (tensor[t] for tensor in tasks)
        with higher.innerloop_ctx(
            model, inner_opt, copy_initial_weights=False, track_higher_grads=not first_order
        ) as (fmodel, diffopt):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fmodel(xs), ys))
            loss = F.cross_entropy(fmodel(xq), yq) / tasks.num_tasks
            if first_order:  # the fast weights are detached leaves: their gradient is g_Q
                grads = torch.autograd.grad(loss, list(fmodel.fast_params))
                for p, g in zip(params, grads):
                    p.grad.add_(g)
            else:
                loss.backward()


def make_setup(device_name: str, shots: int, seed: int = 0, dtype=None, layout: str = LAYOUTS[0]):
    """Conv-4 and a batch of random tasks, both in ``layout`` (the same values in either)."""
    import torch

    from gs_tune.data import TaskBatch
    from gs_tune.meta import in_model_layout
    from gs_tune.models import build_model

    device = torch.device(device_name)
    dtype = dtype or torch.float32
    model = build_model("conv4", IMAGE, WAYS, FILTERS, torch.Generator().manual_seed(seed),
                        channels_last=layout == "channels_last").to(device, dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    tasks = TaskBatch(
        torch.rand(META_BATCH, WAYS * shots, *IMAGE, generator=gen),
        torch.arange(WAYS).repeat_interleave(shots).expand(META_BATCH, -1).contiguous(),
        torch.rand(META_BATCH, WAYS * QUERY, *IMAGE, generator=gen),
        torch.arange(WAYS).repeat_interleave(QUERY).expand(META_BATCH, -1).contiguous(),
    ).to(device, dtype)
    return device, model, in_model_layout(model, tasks)  # higher is handed the images as they are


def _prepared_step(device, model, tasks, method: str, batching: str, steps: int):
    import torch

    step = make_step(method, batching, model, tasks, steps)
    for p in model.parameters():  # higher's first-order variant accumulates into .grad
        p.grad = torch.zeros_like(p)
    return step


def round_robin(steps: dict, reps: int, device) -> dict:
    """Seconds of ``reps`` calls of each step, one call of each per round in a rotating order, so
    that a drift in machine speed hits every step alike; index r of each list is round r."""
    keys = list(steps)
    times: dict = {key: [] for key in keys}
    for r in range(reps):
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            _sync(device)
            t0 = time.perf_counter()
            steps[key]()
            _sync(device)
            times[key].append(time.perf_counter() - t0)
    return times


def emit(text: str, out: Path | None) -> None:
    """Print a benchmark's markdown and, with --out, also write it there."""
    print(text)
    if out:
        out.write_text(text)


def timing_worker(spec: dict) -> dict:
    """Seconds per meta-iteration of several methods on one configuration, interleaved.

    Each method gets its own copy of the model and its own Adam; after the warm-up the
    timed reps go round-robin over the methods (in a rotating order), so that a change in
    machine speed while they run (other processes, a shared host) hits all of them alike
    and the ratios between them stay fair.
    """
    import copy

    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    entries = [tuple(e) for e in spec["entries"]]  # (method, batching, layout)
    setups = {layout: make_setup(spec["device"], spec["shots"], layout=layout) for layout in {e[2] for e in entries}}
    device = next(iter(setups.values()))[0]
    steps = {e: _prepared_step(device, copy.deepcopy(setups[e[2]][1]), setups[e[2]][2], e[0], e[1], spec["steps"])
             for e in entries}
    for e in entries:
        for _ in range(spec["warmup"]):
            steps[e]()
    times = round_robin(steps, spec["reps"], device)
    # "rounds": the raw times, one list per method, index r = round r, for ratios paired within a round
    return {"results": [[*e, statistics.median(t), min(t)] for e, t in times.items()],
            "rounds": [t for t in times.values()], "load": os.getloadavg()[0], "threads": torch.get_num_threads()}


def memory_worker(spec: dict) -> dict:
    """Peak memory of one meta-iteration of one method, above what was resident after the warm-up."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device, model, tasks = make_setup(spec["device"], spec["shots"], layout=spec["layout"])
    step = _prepared_step(device, model, tasks, spec["method"], spec["batching"], spec["steps"])
    for _ in range(spec["warmup"]):
        step()
    _sync(device)
    # Baseline after the warm-up: the first call faults in code pages of libtorch and builds caches,
    # one-off resident memory that is not this algorithm's. Freed heap is handed back first.
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device) / 2**20
    else:
        _malloc_trim()
        baseline = _rss_mb() if _reset_peak() else _peak_mb(device)
    step()
    _sync(device)
    return {"peak_mb": _peak_mb(device) - baseline}


# With glibc's default, dynamic mmap threshold, freed blocks are kept in the heap or
# not, depending on history, and the same run's peak RSS varied by ±30 MB; a fixed
# threshold makes every large block an mmap that is returned on free, so RSS follows
# live memory (repeat runs agree to 0.5 MB). It also makes every allocation slower
# (up to 2× on this workload), so memory and time are measured in separate processes.
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def run_worker(kind: str, spec: dict, env: dict | None = None) -> dict:
    """Run :func:`timing_worker` or :func:`memory_worker` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, __file__, f"--{kind}-worker", json.dumps(spec)], capture_output=True, text=True,
        cwd=ROOT, check=False, env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed for {spec}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- sanity check: higher computes the same meta-gradients as ours -----------------------------


def check_against_higher(device_name: str) -> dict[str, float]:
    import torch

    from gs_tune.meta import meta_gradient

    errors: dict[str, float] = {}
    for method, ours in (("higher_maml", "maml"), ("higher_fomaml", "fomaml")) if HAS_HIGHER else ():
        _, model, tasks = make_setup(device_name, shots=1, dtype=torch.float64)
        grads, _ = meta_gradient(model, tasks, ours, inner_lr=INNER_LR, inner_steps=2)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        higher_meta_gradient(model, tasks, 2, first_order=HIGHER[method])
        ours_flat = torch.cat([grads[n].reshape(-1) for n, _ in model.named_parameters()])
        ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        errors[method] = float((ours_flat - ref).norm() / ref.norm())
    return errors


# --- profile: where our time goes (--profile) ------------------------------------------------


def autograd_meta_gradient(model, tasks, algorithm: str, steps: int, eps: float = 1e-5):
    """Our algorithms re-written with ``torch.autograd.grad`` (not ``torch.func.grad``) and
    ``functional_call``: what the same computation costs without functorch's transforms."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    theta = [p.detach() for p in model.parameters()]

    def loss(ps, x, y):
        return F.cross_entropy(functional_call(model, dict(zip(names, ps)), (x,)), y)

    total = [torch.zeros_like(p) for p in theta]
    for t in range(tasks.num_tasks):
        xs, ys, xq, yq = (tensor[t] for tensor in tasks)
        start = [p.clone().requires_grad_(True) for p in theta]
        ps = start
        for _ in range(steps):
            g = torch.autograd.grad(loss(ps, xs, ys), ps, create_graph=algorithm == "maml")
            ps = [p - INNER_LR * gi for p, gi in zip(ps, g)]
            if algorithm != "maml":
                ps = [p.detach().requires_grad_(True) for p in ps]
        grads = torch.autograd.grad(loss(ps, xq, yq), start if algorithm == "maml" else ps)
        if algorithm == "ahe_fd":  # + H_S(θ)·u by a central difference: two more support gradients
            u = [-0.1 * g for g in grads]
            norm = torch.sqrt(sum((a * a).sum() for a in u))
            plus = [(p + eps * a / norm).requires_grad_(True) for p, a in zip(theta, u)]
            minus = [(p - eps * a / norm).requires_grad_(True) for p, a in zip(theta, u)]
            gp = torch.autograd.grad(loss(plus, xs, ys), plus)
            gm = torch.autograd.grad(loss(minus, xs, ys), minus)
            grads = [g + (a - b) * (norm / (2 * eps)) for g, a, b in zip(grads, gp, gm)]
        total = [s + g for s, g in zip(total, grads)]
    return [s / tasks.num_tasks for s in total]


def code_version() -> str:
    """Commit and a hash of gs_tune/'s sources as they are on disk (the tree may be uncommitted)."""
    import hashlib

    digest = hashlib.sha1()
    for path in sorted((ROOT / "gs_tune").rglob("*.py")):
        digest.update(path.read_bytes())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT, check=False).stdout.strip()
    except OSError:
        commit = "?"
    return f"commit {commit or '?'}, gs_tune sources sha1 {digest.hexdigest()[:10]}"


def _median_ms(fn, reps: int) -> float:
    fn()
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def profile(args) -> str:
    """Per-gradient and per-meta-gradient costs of ours vs plain autograd vs higher, in-process."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad

    from gs_tune.meta import make_loss_fn, meta_gradient

    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or 7
    header = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"load average {os.getloadavg()[0]:.2f}; {code_version()}")
    columns = ("| images | torch.func.grad + functional_call | autograd.grad + functional_call "
               "| autograd.grad on the module | same, channels_last model and input |")
    lines = ["# Profile: where the time goes (in-process, medians in ms)", "", header, "",
             "## One gradient of the loss (Conv-4, 32 filters, 28×28×1)", "", columns, "|---|---|---|---|---|"]
    _, model, _ = make_setup(args.device, 1, layout="contiguous")
    _, model_cl, _ = make_setup(args.device, 1, layout="channels_last")
    loss_fn = make_loss_fn(model)
    params = {k: p.detach() for k, p in model.named_parameters()}
    leaves = {k: p.clone().requires_grad_(True) for k, p in params.items()}

    def by_func(x, y):
        return grad(lambda p: loss_fn(p, x, y)[0])(params)

    def by_autograd(x, y):
        loss = F.cross_entropy(functional_call(model, leaves, (x,)), y)
        return torch.autograd.grad(loss, list(leaves.values()))

    def on_module(m, x, y):
        return torch.autograd.grad(F.cross_entropy(m(x), y), list(m.parameters()))

    for n in (5, 25, 75):
        x = torch.rand(n, *IMAGE, device=args.device)
        y = torch.arange(WAYS, device=args.device).repeat_interleave(n // WAYS)
        # a 1-channel NCHW tensor also passes as channels_last; give it channels_last strides for real
        x_cl = torch.empty_strided(x.shape, (x[0].numel(), 1, x.shape[-1], 1), device=args.device)
        x_cl.copy_(x)
        cells = [_median_ms(partial(by_func, x, y), reps * 3), _median_ms(partial(by_autograd, x, y), reps * 3),
                 _median_ms(partial(on_module, model, x, y), reps * 3),
                 _median_ms(partial(on_module, model_cl, x_cl, y), reps * 3)]
        lines.append(f"| {n} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    if args.compile:
        lines += compile_profile(model_cl, reps, args.device)
    lines += ["", "## One meta-gradient (4 tasks, loop): ours vs the same with autograd.grad vs higher", "",
              "| shots | K | algorithm | ours | autograd.grad | higher | ours/autograd | ours/higher |",
              "|---|---|---|---|---|---|---|---|"]
    for shots in args.shots:
        _, model, tasks = make_setup(args.device, shots)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        for k in (1, 5):
            # ahe_fd here: the float32 difference of the dot term, as autograd_meta_gradient writes it
            for name, algorithm, kw in (("fomaml", "fomaml", {}), ("maml", "maml", {}),
                                        ("ahe_fd", "ahe", {"w_dot": 0.1, "w_cos": 0.0, "w_l2": 0.0,
                                                           "hvp": "finite_difference_f32", "fd_eps": 1e-5})):
                ours = _median_ms(partial(meta_gradient, model, tasks, algorithm, inner_lr=INNER_LR,
                                          inner_steps=k, batching="loop", **kw), reps)
                plain = _median_ms(partial(autograd_meta_gradient, model, tasks, name, k), reps)
                theirs = None
                if name != "ahe_fd" and HAS_HIGHER:
                    theirs = _median_ms(partial(higher_meta_gradient, model, tasks, k, name == "fomaml"), reps)
                lines.append(f"| {shots} | {k} | {name} | {ours:.0f} | {plain:.0f} | {fmt(theirs, 0)} | "
                             f"{ours / plain:.2f} | {fmt(ratio(ours, theirs), 2)} |")
    return "\n".join(lines) + "\n"


def compile_profile(model_cl, reps: int, device: str) -> list[str]:
    """torch.compile on the channels-last Conv-4: compile time, one 75-image gradient against eager,
    and whether a gradient of the gradient (MAML, the exact HVP) goes through it."""
    import torch
    import torch.nn.functional as F

    x = torch.rand(75, *IMAGE, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.arange(WAYS, device=device).repeat_interleave(15)

    def gradient(m):
        return torch.autograd.grad(F.cross_entropy(m(x), y), list(m.parameters()))

    lines = ["", "## torch.compile (inductor) on the channels_last model, one 75-image gradient", ""]
    t0 = time.perf_counter()
    compiled = torch.compile(model_cl)
    try:
        gradient(compiled)
    except RuntimeError as exc:  # no C++ compiler (InductorError), an unsupported op: say what happened
        return [*lines, f"compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"]
    lines.append(f"first call (compiles): {time.perf_counter() - t0:.0f} s")
    lines.append(f"eager {_median_ms(partial(gradient, model_cl), reps * 3):.1f} ms, "
                 f"compiled {_median_ms(partial(gradient, compiled), reps * 3):.1f} ms")
    try:
        g = torch.autograd.grad(F.cross_entropy(compiled(x), y), list(compiled.parameters()), create_graph=True)
        torch.autograd.grad(g, list(compiled.parameters()), [torch.ones_like(t) for t in g])
        lines.append("gradient of the gradient: works")
    except RuntimeError as exc:
        lines.append(f"gradient of the gradient (MAML, exact HVP): refused, {str(exc).splitlines()[0][:160]}")
    return lines


def hvp_profile(args) -> str:
    """Where AHE's time above first-order MAML goes at K=5: the exact HVP's double-backward autograd
    nodes, by layer type (torch.profiler, one process, in-process medians)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from gs_tune.meta import meta_gradient

    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or 5
    kinds = {"batch norm": "NativeBatchNormBackwardBackward", "convolution": "ConvolutionBackwardBackward",
             "max pool": "MaxPool2DWithIndicesBackwardBackward"}
    header = (f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
              f"{os.getloadavg()[0]:.2f}; {code_version()}")
    what = (f"Conv-4 ({FILTERS} filters), {META_BATCH} tasks, loop, contiguous. Double backward: the "
            "inclusive CPU time of autograd's *BackwardBackward* nodes per meta-gradient (the product's "
            "second pass; its first, the support gradient with a graph, is in the rest of AHE's time).")
    columns = ("| shots | fomaml | ahe (exact) | ahe / fomaml | double backward | " + " | ".join(kinds)
               + " | other nodes |")
    lines = ["# AHE's extra time at K=5: the exact HVP's double backward (in-process, medians in ms)", "",
             header, "", what, "", columns, "|---|---|---|---|---|" + "---|" * (len(kinds) + 1)]
    notes = []
    for shots in args.shots:
        _, model, tasks = make_setup(args.device, shots)
        run = {name: partial(meta_gradient, model, tasks, alg, inner_lr=INNER_LR, inner_steps=5, batching="loop",
                             **kw) for name, (alg, kw) in (("fomaml", OURS["fomaml"]), ("ahe", OURS["ahe_exact"]))}
        ms = {name: _median_ms(fn, reps) for name, fn in run.items()}
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(reps):
                run["ahe"]()
        # the nodes themselves; the engine's "autograd::engine::evaluate_function: <node>" wraps each again
        nodes = {e.key: e.cpu_time_total / 1e3 / reps for e in prof.key_averages()
                 if "BackwardBackward" in e.key and not e.key.startswith("autograd::")}
        total = sum(nodes.values())
        by_kind = {kind: sum(v for k, v in nodes.items() if k.startswith(prefix)) for kind, prefix in kinds.items()}
        rest = sorted(((v, k) for k, v in nodes.items() if not k.startswith(tuple(kinds.values()))), reverse=True)
        other = sum(v for v, _ in rest)
        notes.append(f"Other nodes at {shots}-shot: " + ", ".join(f"{k} {v:.0f}" for v, k in rest[:4]) + ".")
        lines.append(f"| {shots} | {ms['fomaml']:.0f} | {ms['ahe']:.0f} | {ms['ahe'] / ms['fomaml']:.2f} | "
                     f"{total:.0f} | " + " | ".join(f"{v:.0f} ({v / total:.0%})" for v in by_kind.values())
                     + f" | {other:.0f} |")
    lines += ["", *notes, "", "Profiled times run slower than the medians (the profiler's own cost); read the shares."]
    return "\n".join(lines) + "\n"


# --- driver ------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


PATHS = {"loop, contiguous": ("loop", "contiguous"), "loop, channels_last": ("loop", "channels_last"),
         "vmap": ("vmap", "contiguous")}


class Results:
    """Measurements keyed (shots, K, method, batching, layout), with ratios paired within a round."""

    def __init__(self):
        self.data: dict[tuple, dict] = {}

    def get(self, shots, k, method, path, key="seconds"):
        r = self.data.get((shots, k, method, *PATHS[path]))
        return None if r is None else r.get(key)

    def ratio(self, shots, k, a: tuple[str, str], b: tuple[str, str]) -> float | None:
        """Median over rounds of time(a) / time(b); a and b are (method, path) timed in the same worker."""
        ra, rb = self.get(shots, k, *a, key="rounds"), self.get(shots, k, *b, key="rounds")
        if ra is None or rb is None:
            return None
        return statistics.median(x / y for x, y in zip(ra, rb))


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    return ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def render(res: Results, args, ks, sanity, started, finished, threads) -> str:
    paths = [p for p in PATHS if PATHS[p][0] in args.batching and PATHS[p][1] in args.layouts]
    default = default_path(args)
    configs = [(shots, k) for shots in args.shots for k in ks]
    lines = ["# Meta-iteration cost: Conv-4 (32 filters, 28×28×1), 5-way, 15 queries, meta-batch 4", "",
             (f"device: {args.device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
             f"torch threads: {threads}, reps: {args.reps} (median, interleaved over the methods) after "
             f"{args.warmup} warm-up, float32, inner_lr {INNER_LR}; load average {started:.2f} at start, "
             f"{finished:.2f} at end"), "", f"code: {code_version()}, torch {args.torch_version}", "",
             ("`higher_*`: MAML / first-order MAML written with `higher.innerloop_ctx` (loop over tasks only), on "
             "the same model and images in the same layout. ahe: w_cos 0.1, w_l2 0.01, correction at θ "
             "(first_step); ahe_exact is the default HVP, ahe_fd the float64 finite difference."), "",
             ("Sanity: ‖ours − higher‖/‖higher‖ of the meta-gradient (float64, K=2): "
              + ", ".join(f"{k} {v:.1e}" for k, v in sanity.items())) if sanity
             else "`higher` is not installed here: its columns are left out."]
    rows = [[str(s_), str(k), path, *(fmt(res.get(s_, k, m, path)) for m in COLUMNS)]
            for s_, k in configs for path in paths]
    lines += _table("Seconds per meta-iteration", ["shots", "K", "path", *COLUMNS], rows)
    if not args.no_memory:
        rows = [[str(s_), str(k), path, *(fmt(res.get(s_, k, m, path, "peak_mb"), 0) for m in COLUMNS)]
                for s_, k in configs for path in paths if path in (default, "vmap")]
        lines += _table("Peak extra memory (MB)", ["shots", "K", "path", *COLUMNS], rows)
    if {"loop, channels_last", "loop, contiguous"} <= set(paths):
        rows = [[str(s_), str(k), *(fmt(res.ratio(s_, k, (m, "loop, contiguous"), (m, "loop, channels_last")), 2)
                                    for m in COLUMNS)] for s_, k in configs]
        lines += _table("channels_last speed-up (contiguous time / channels_last time, loop)",
                        ["shots", "K", *COLUMNS], rows)
    pairs = [("ahe_exact", "fomaml"), ("ahe_exact", "maml"), ("ahe_fd", "fomaml"),
             ("maml", "higher_maml"), ("fomaml", "higher_fomaml")]
    rows = [[str(s_), str(k), path, *(fmt(res.ratio(s_, k, (a, path), (b, path)), 2) for a, b in pairs)]
            for s_, k in configs for path in paths if path != "vmap"]
    lines += _table("Time ratios (lower is cheaper; higher in the same layout)",
                    ["shots", "K", "path", *(f"{a}/{b}" for a, b in pairs)], rows)
    if "vmap" in paths and default != "vmap":
        rows = [[str(s_), str(k), *(f"{fmt(res.ratio(s_, k, (m, 'vmap'), (m, default)), 2)}; "
                                    f"{fmt(ratio(res.get(s_, k, m, 'vmap', 'peak_mb'), res.get(s_, k, m, default, 'peak_mb')), 2)}"
                                    for m in TABLE_METHODS)] for s_, k in configs]
        lines += _table(f"vmap / loop ({default.split(', ')[1]}): time; peak memory", ["shots", "K", *TABLE_METHODS],
                        rows)
    lines += render_targets(res, configs, ks, default)
    return "\n".join(lines) + "\n"


def default_path(args) -> str:
    import torch

    from gs_tune.meta import resolve_batching

    return "vmap" if resolve_batching("auto", torch.device(args.device)) == "vmap" else f"loop, {LAYOUTS[0]}"


def render_targets(res: Results, configs, ks, path: str) -> list[str]:
    out = ["", f"## Targets ({path}, the default here)", "", "| target | shots | measured | pass |", "|---|---|---|---|"]
    verdicts = []

    def row(name, shots, value, ok, text):
        verdicts.append(ok)
        out.append(f"| {name} | {shots} | {text if value is not None else '—'} | "
                   f"{'—' if ok is None else ('PASS' if ok else 'FAIL')} |")

    for shots, k in configs:
        limits = {5: (("fomaml", 1.3), ("maml", 0.75)), 10: (("maml", 0.6),)}.get(k, ())
        for other, limit in limits:
            r = res.ratio(shots, k, ("ahe_exact", path), (other, path))
            row(f"ahe (default HVP) ≤ {limit}× {other} at K={k}", shots, r, None if r is None else r <= limit,
                f"{fmt(r, 2)}×")
        for ours, theirs in (("maml", "higher_maml"), ("fomaml", "higher_fomaml")):
            if path != "vmap":
                r = res.ratio(shots, k, (theirs, path), (ours, path))
                row(f"our {ours} ≥ 1.2× faster than higher, same layout (K={k})", shots, r,
                    None if r is None else r >= 1.2, f"{fmt(r, 2)}× faster")
    kmax = max(ks)
    for shots in sorted({s_ for s_, _ in configs}):
        if kmax == 1:
            break
        for method in ("ahe_exact", "ahe_fd"):
            a1, an = res.get(shots, 1, method, path, "peak_mb"), res.get(shots, kmax, method, path, "peak_mb")
            m1, mn = res.get(shots, 1, "maml", path, "peak_mb"), res.get(shots, kmax, "maml", path, "peak_mb")
            r, rm = ratio(an, a1), ratio(mn, m1)
            ok = None if r is None or rm is None else (r <= 1.2 and rm > r)
            row(f"{method} peak memory K={kmax} ≤ 1.2× K=1, maml's grows", shots, r, ok,
                f"{method} {fmt(an, 0)}/{fmt(a1, 0)} MB = {fmt(r, 2)}×; maml {fmt(mn, 0)}/{fmt(m1, 0)} MB = {fmt(rm, 2)}×")
    passed = sum(v is True for v in verdicts)
    return out + ["", f"{passed}/{sum(v is not None for v in verdicts)} targets met."]


def entries_for(args) -> list[list[str]]:
    out = []
    for method in COLUMNS:
        for batching, layout in PATHS.values():
            if batching in args.batching and layout in args.layouts and (method in OURS or batching == "loop"):
                out.append([method, batching, layout])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--reps", type=int, default=None, help="timed meta-iterations (default 5, --quick 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed meta-iterations before timing")
    parser.add_argument("--quick", action="store_true", help="K in {1, 5} only and 3 reps")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--batching", nargs="+", default=["loop", "vmap"], choices=["loop", "vmap"])
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS,
                        help="memory layouts of the loop (vmap is always contiguous)")
    parser.add_argument("--no-memory", action="store_true", help="time only")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--profile", action="store_true",
                        help="instead: in-process profile of ours vs plain autograd vs higher")
    parser.add_argument("--compile", action="store_true",
                        help="with --profile: also torch.compile (needs a C++ compiler; minutes to compile)")
    parser.add_argument("--profile-hvp", action="store_true",
                        help="instead: where AHE's time above first-order MAML goes at K=5 (torch.profiler)")
    parser.add_argument("--timing-worker", help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.timing_worker or args.memory_worker:
        worker = timing_worker if args.timing_worker else memory_worker
        print(json.dumps(worker(json.loads(args.timing_worker or args.memory_worker))))
        return
    emit(hvp_profile(args) if args.profile_hvp else profile(args) if args.profile else measure(args), args.out)


def measure(args) -> str:
    import torch

    args.reps = args.reps or (3 if args.quick else 5)
    ks = [1, 5] if args.quick else [1, 5, 10]
    args.torch_version = torch.__version__
    sanity = check_against_higher(args.device)
    started = os.getloadavg()[0]
    res, threads = Results(), None
    default = PATHS[default_path(args)]
    t_all = time.perf_counter()
    for shots in args.shots:
        for k in ks:
            spec = {"device": args.device, "shots": shots, "steps": k, "reps": args.reps, "warmup": args.warmup,
                    "threads": args.threads}
            timing = run_worker("timing", {**spec, "entries": entries_for(args)})
            threads = timing["threads"]
            for (method, b, layout, seconds, fastest), rounds in zip(timing["results"], timing["rounds"]):
                entry = {"seconds": seconds, "min": fastest, "rounds": rounds}
                if not args.no_memory and (b, layout) in (default, PATHS["vmap"]):
                    entry.update(run_worker("memory", {**spec, "method": method, "batching": b, "layout": layout,
                                                       "warmup": 1}, env=MEMORY_ENV if args.device == "cpu" else None))
                res.data[(shots, k, method, b, layout)] = entry
                print(f"shots={shots} K={k:2d} {method:14s} {b:4s} {layout:13s} {seconds:7.3f} s (min {fastest:.3f})"
                      f"  {entry.get('peak_mb', float('nan')):7.1f} MB  load {timing['load']:.2f}",
                      file=sys.stderr, flush=True)
    print(f"total {time.perf_counter() - t_all:.0f} s", file=sys.stderr)
    return render(res, args, ks, sanity, started, os.getloadavg()[0], threads)


if __name__ == "__main__":
    main()
