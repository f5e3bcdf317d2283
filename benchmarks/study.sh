#!/usr/bin/env bash
# The study of BENCHMARKS.md §4: tune AHE (cosine_l2) and each baseline with the same budget
# (12 trials, ASHA, 600 iterations) on digits 5-way and 20-way 1-shot, retrain the winners from
# fresh seeds on train+val, score them on the test split, and print the tables.
#   bash benchmarks/study.sh [RUNS_DIR]      (about 2.5 hours on 2 CPU cores)
# A step whose run directory already exists is skipped, so an interrupted study can be rerun.
set -euo pipefail
RUNS=${1:-runs/study}
B=${GS_TUNE:-.venv/bin/gs-tune}
PY=${PYTHON:-.venv/bin/python}

search() {  # NAME ARGS...: one search, unless its run directory is already there
  local name=$1; shift
  [ -d "$RUNS/$name" ] || "$B" launch --runs-dir "$RUNS" --name "$name" "$@"
}

for ways in 5 20; do
  # 20-way tasks use 5 queries per class (100 query images per task against 75 at 5-way) to keep
  # a meta-iteration affordable on CPU; digits' val and test splits have exactly 20 classes.
  query=$([ "$ways" = 5 ] && echo 15 || echo 5)
  fix=(--fix "ways=$ways" --fix "query=$query")
  search "c$ways" --space cosine_l2 "${fix[@]}"
  for algo in maml fomaml reptile; do
    search "b${ways}_$algo" --space baselines --fix "algorithm=$algo" "${fix[@]}"
  done
  [ -f "$RUNS/c$ways/evaluation.parquet" ] || "$B" evaluate "$RUNS/c$ways" --seeds 3 --tasks 600 \
    --baselines-run "$RUNS/b${ways}_maml" --baselines-run "$RUNS/b${ways}_fomaml" \
    --baselines-run "$RUNS/b${ways}_reptile"
  "$B" report "$RUNS/c$ways" > /dev/null
  "$PY" benchmarks/study.py --search "$RUNS/c$ways" \
    --baselines "$RUNS/b${ways}_maml" "$RUNS/b${ways}_fomaml" "$RUNS/b${ways}_reptile" \
    --out "$RUNS/study_${ways}way.md"
done
