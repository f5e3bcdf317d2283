#!/usr/bin/env bash
# The checks BENCHMARKS.md leaves "unmeasured" for want of a GPU, in one script for a CUDA machine.
#
#   benchmarks/gpu_check.sh [all|tests|cost|hvp|protocol|sharing]     (default: all, ~14 minutes on one GPU)
#
# Steps (each under its own time limit, so one that hangs does not take the others with it):
#   tests     the engine on the device: tests/algorithms/test_cuda.py (CUDA = CPU to 1e-9 in float64 for
#             every algorithm, HVP mode, batching and layout; evaluation in both batch-norm modes), and
#             the engine's CPU suite on that machine's torch build
#   cost      meta_gradient_cost.py --device cuda --quick: seconds and peak memory per meta-iteration,
#             vmap and loop, contiguous and channels_last, ours against higher (BENCHMARKS.md §1); then
#             its --profile --compile: where one gradient's time goes, and torch.compile on and off
#   hvp       hvp_accuracy.py --device cuda: error of every HVP mode against float64 with the device's
#             default float32 settings (TF32 convolutions if cuDNN allows them) and AHE's cost against
#             first-order MAML (BENCHMARKS.md §2)
#   protocol  protocol_throughput.py: the MAML-protocol presets (Omniglot 20-way 1-shot, miniImageNet
#             5-way 1-shot and 5-shot) per meta-iteration and per evaluation chunk, with vmap, with
#             the loop, and with the loop channels-last; projected hours per preset
#   sharing   gpu_sharing.py: total meta-iterations per second with 1, 2, 4 and 8 trainer processes on
#             the one GPU (Omniglot 20-way 1-shot, ahe), for docs/cluster.md's --gpus-per-trial advice
# Output: one markdown file per step in $OUT (default /tmp/gpu_check), plus env.txt; paste the
# tables into BENCHMARKS.md with the machine they came from.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
STEP=${1:-all}
status=0

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch ($PY) sees no CUDA device; nothing to check here" >&2
    exit 2
fi
"$PY" - > "$OUT/env.txt" <<'EOF'
import platform, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
print(f"device {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
print(f"cudnn.allow_tf32 {torch.backends.cudnn.allow_tf32}, matmul fp32 precision {torch.get_float32_matmul_precision()}")
print(f"python {platform.python_version()}, {platform.machine()}")
EOF
cat "$OUT/env.txt"

run() {  # run NAME LIMIT_SECONDS COMMAND...: tee the output to $OUT/NAME.log, note a failure and go on
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $name: exit $rc" >&2; status=1; }
}

if [ "$STEP" = all ] || [ "$STEP" = tests ]; then
    run tests 180 "$PY" -m pytest -q -p no:cacheprovider tests/algorithms/test_cuda.py tests/test_meta.py \
        tests/algorithms/test_identities.py
fi
if [ "$STEP" = all ] || [ "$STEP" = cost ]; then
    run cost 200 "$PY" benchmarks/meta_gradient_cost.py --device cuda --quick --reps 10 \
        --out "$OUT/meta_gradient_cost_cuda.md"
    run compile 150 "$PY" benchmarks/meta_gradient_cost.py --device cuda --profile --compile --reps 5 \
        --out "$OUT/meta_gradient_profile_cuda.md"
fi
if [ "$STEP" = all ] || [ "$STEP" = hvp ]; then
    run hvp 120 "$PY" benchmarks/hvp_accuracy.py --device cuda --tasks 20 --train-iterations 50 --reps 10 \
        --out "$OUT/hvp_accuracy_cuda.md"
fi
if [ "$STEP" = all ] || [ "$STEP" = protocol ]; then
    run protocol_vmap 60 "$PY" benchmarks/protocol_throughput.py --device cuda --batching vmap \
        --out "$OUT/protocol_vmap.md"
    run protocol_loop 60 "$PY" benchmarks/protocol_throughput.py --device cuda --batching loop \
        --out "$OUT/protocol_loop.md"
    run protocol_loop_cl 60 "$PY" benchmarks/protocol_throughput.py --device cuda --batching loop --channels-last \
        --out "$OUT/protocol_loop_channels_last.md"
fi
if [ "$STEP" = all ] || [ "$STEP" = sharing ]; then
    run sharing 240 "$PY" benchmarks/gpu_sharing.py --device cuda --preset omniglot_20w1s --processes 1 2 4 8 \
        --seconds 15 --out "$OUT/gpu_sharing.md"
fi
exit $status
