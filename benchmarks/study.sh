#!/usr/bin/env bash
# The second study (issue 13): does tuning the cosine/L2 weights buy MAML's accuracy at
# first-order cost?  Digits, Conv-4; three settings:
#   5w1s_k1   5-way 1-shot, K = 1 inner step, 15 queries per class
#   5w1s_k5   5-way 1-shot, K = 5 inner steps (where AHE's cost stays first-order and MAML's grows)
#   20w1s_k1  20-way 1-shot, K = 1, 5 queries per class (see QUERY_20WAY below for why)
# Methods, each its own search (own sampler seed: seeds derive from the run name) with the same
# trials, ASHA settings and learning-rate ranges: MAML, first-order MAML, Reptile (K searched over
# 3-10), AHE with the default (exact) HVP, AHE with the identity HVP; plus a second AHE search at
# 5w1s_k1 under another name (another sampler seed) for the spread of the importances. Then per
# setting `gs-tune evaluate` (5 fresh seeds, 600 test tasks, retrained on train+val) and
# benchmarks/study_cost.py (the evaluated configurations timed interleaved in one process, free of
# the machine's drift). Reptile, the most expensive method, comes last: after every setting's
# other searches, evaluations and timings, its searches run and it joins each finished evaluation
# (benchmarks/study_journal.py keeps the runs already made) and timing. Then `gs-tune report` on
# every run and benchmarks/study.py, which prints BENCHMARKS §4 and draws its plots.
#
#   bash benchmarks/study.sh [RUNS_DIR]              full study (default RUNS_DIR runs/study2)
#   STUDY_SMOKE=1 bash benchmarks/study.sh /tmp/study-smoke   the whole pipeline, tiny (~15-20 min)
#   STUDY_SETTINGS="5w1s_k1 5w1s_k5" bash benchmarks/study.sh  only these settings (in this order)
#
# Resumable: every step is skipped when it is done; a search whose run directory exists but has
# not finished all its trials is continued with `gs-tune resume` (finished trials kept, running ones
# from their checkpoints), and an evaluation started again keeps the retrainings that had finished
# (RUN_DIR/evaluation_runs.jsonl), so the script may be killed at any moment and rerun any number
# of times; at most the runs in progress are lost.
#
# DURATION (an estimate, not a measurement): ~32 hours of wall clock on 2 CPU cores, searches
# ~18 h and evaluations ~14 h; per setting, in the order run: 5w1s_k1 ~11 h (its second AHE search
# and the one 5-way Reptile search and retraining included), 5w1s_k5 ~7 h, 20w1s_k1 ~14 h. Read it
# as +-30%, and slower on a machine shared with other work. Measured (BENCHMARKS §4): ASHA completes
# more trials than the simulation below assumed (MAML at K = 5: 24,000 meta-iterations, not ~15,000),
# and on this machine, shared with development work, 5w1s_k5 took ~2x its estimate (~14 h: its four
# searches 8.9 h from first trial to last, its evaluation ~5.3 h), so read 5w1s_k1 ~22 h and
# 20w1s_k1 ~28 h. Reptile is almost half of 5w1s_k1 (K of 3-10 steps, each on support and query),
# and a large share of 20w1s_k1, so it runs after every setting's other methods (since the 10th
# piece; before, it ran last within 5w1s_k1, before that setting's evaluation). Worked out from:
# * seconds per meta-iteration on one core, unloaded, from the first study's retraining rows (git, up to 528c804):
#   first-order MAML 0.164 s at 5-way K = 1 and 0.276 s at 20-way (query 5), MAML 0.406 s at 20-way;
# * each method's cost relative to first-order MAML, timed with train() on one thread on this 2-core
#   machine under load (load average ~8, so only the ratios are used), which agree with §1's
#   within noise except Reptile: MAML 1.4x, AHE (exact HVP) 1.4x, identity HVP and w = 0 1.0x at
#   K = 1; at K = 5 first-order MAML 1.9x, AHE ~2.0x, MAML 4.0x; Reptile 5.3x at K = 3 and 14.5x
#   at K = 9 (~10.6x at its mean K of 6.5; §1's 2-thread table says ~6x); at 20-way AHE 1.4x and
#   Reptile 6.9x (K = 6) of 20-way first-order MAML;
# * a search: 16 trials under the ASHA below run ~15,000 meta-iterations (a simulation of its rungs),
#   +12% for validations, two trials at a time; an evaluation: 7 methods x 5 seeds x ~2,200
#   iteration-equivalents (training, a validation, 600 test tasks), two at a time.
# If the budget forces a cut, what is cut is Reptile (it runs last), then 20w1s_k1 (STUDY_SETTINGS),
# never trials or seeds.
#
# IN THE BACKGROUND, IN PIECES (from the repository root):
#   setsid nohup bash benchmarks/study.sh runs/study2 >> runs/study2.log 2>&1 &
#   tail -f runs/study2.log                       progress (Ray Tune's table every 30 s)
#   kill -TERM -- -$(cat runs/study2/study.pid)   stop it (kill -KILL leaves it resumable too)
#   then the same setsid nohup line again continues where it stopped.
# setsid gives the script a process group of its own, so the kill reaches gs-tune and Ray's processes
# (SIGINT would not: a shell starts background jobs with SIGINT ignored).
set -euo pipefail

# --- the study's budget: the same for every method and setting -----------------------------------
ITERATIONS=2000   # meta-iterations per trial: issue 13's ">= 2,000" guide against early-training rankings
VAL_EVERY=200     # 10 validations per full trial: the learning curve's points; one costs ~VAL_TASKS/4
VAL_TASKS=100     #   meta-iterations (100 val tasks, meta-batch 4), ~12% on top of training
GRACE=400         # ASHA's first rung at 20% of training, so no trial is stopped on its first few
REDUCTION=3       #   hundred iterations; rungs at 400 and 1200 (x3; 3600 is past ITERATIONS), both
                  #   validations (multiples of VAL_EVERY); the bottom 2/3 stop at each rung
TRIALS=16         # per search: TPE's 5 random start-up trials and 11 model-guided ones
CONCURRENT=2      # trials at a time, one CPU each: the 2-core machine
SEEDS=5           # evaluation: fresh seeds per method (Student-t interval over 5 values)
TASKS=600         # evaluation: test tasks per seed
QUERY_5WAY=15     # MAML's protocol: 15 queries per class
QUERY_20WAY=5     # 20-way: 5 queries per class, as in the first study. The query set dominates a
                  # meta-iteration's cost; 20 x 5 = 100 query images per task (75 at 5-way) keeps a
                  # 20-way iteration at ~1.5-2x a 5-way one, where 20 x 15 = 300 would make it ~4x
                  # and the 20-way searches alone longer than the rest of the study. Per-task accuracy
                  # is then averaged over 100 images, a noise level like the 5-way tasks' 75.

SMOKE=${STUDY_SMOKE:-0}
RUNS=$(realpath -m "${1:-runs/study2}")
# The finished steps' tables, kept in git (benchmarks/study_archive.py): set STUDY_ARCHIVE= (empty)
# for none. A smoke study keeps none unless asked.
ARCHIVE_DEFAULT=docs/study/data
[ "${STUDY_SMOKE:-0}" = 1 ] && ARCHIVE_DEFAULT=
ARCHIVE=${STUDY_ARCHIVE-$ARCHIVE_DEFAULT}
[ -z "$ARCHIVE" ] || ARCHIVE=$(realpath -m "$ARCHIVE")
cd "$(dirname "$0")/.."
B=${GS_TUNE:-$PWD/.venv/bin/gs-tune}
PY=${PYTHON:-$PWD/.venv/bin/python}
PLOTS=${STUDY_PLOTS:-docs/study}
SETTINGS=${STUDY_SETTINGS:-5w1s_k1 5w1s_k5 20w1s_k1}
LAUNCH_EXTRA=()
EVAL_EXTRA=()
COST_EXTRA=()
if [ "$SMOKE" = 1 ]; then
  # --smoke: each space's smoke budget (30 iterations, validations of 10 tasks every 10, ASHA's
  # grace scaled down); evaluate --smoke caps seeds and tasks the same way.
  TRIALS=3; SEEDS=2; TASKS=20
  LAUNCH_EXTRA=(--smoke); EVAL_EXTRA=(--smoke); COST_EXTRA=(--rounds 2 --block 2)
  PLOTS=${STUDY_PLOTS:-$RUNS/plots}
fi

mkdir -p "$RUNS/spaces"
exec 9> "$RUNS/study.lock"
flock -n 9 || { echo "study.sh: another study.sh is running on $RUNS" >&2; exit 2; }
echo $$ > "$RUNS/study.pid"
# On a machine without the run directories (a new one), the archived steps come back first, so the
# study goes on from the last step kept rather than from the start.
[ -z "$ARCHIVE" ] || "$PY" benchmarks/study_archive.py restore "$ARCHIVE" "$RUNS"
# study.tsv: the mode, then setting, role and run name of every search any invocation made (kept
# across invocations, so settings run in separate pieces all reach study.py).
MANIFEST="$RUNS/study.tsv"
TAB=$'\t'
MODE=$([ "$SMOKE" = 1 ] && echo smoke || echo full)
[ -f "$MANIFEST" ] || printf 'mode\t%s\n' "$MODE" > "$MANIFEST"
if ! head -1 "$MANIFEST" | grep -qx "mode${TAB}$MODE"; then
  echo "study.sh: $RUNS holds a $(head -1 "$MANIFEST" | cut -f2) study; use another RUNS_DIR for a $MODE one" >&2; exit 2
fi
# Which code each invocation ran: a study continued across commits, or with gs_tune/ edited, is a
# deviation study.py reports (a run keeps the code it started with only until it is resumed). An
# edit is named by its diff's hash: benchmarks/study_pin.patch's is e3793661b1e5 (c0947023b068
# before runner.py joined it).
printf '%s\t%s\t%s\t%s\n' "$(date '+%F %T')" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  "$(git rev-parse --short HEAD:gs_tune 2>/dev/null || echo unknown)" \
  "$(git diff --quiet HEAD -- gs_tune 2>/dev/null && echo clean \
     || echo "gs_tune/ edited, diff sha256 $(git diff HEAD -- gs_tune | sha256sum | cut -c1-12)")" >> "$RUNS/study.invocations"
note() { printf '\n[study %s] %s\n' "$(date '+%F %T')" "$*"; }
keep() {  # the finished steps' tables into the archive (to be committed)
  [ -z "$ARCHIVE" ] || "$PY" benchmarks/study_archive.py save "$RUNS" "$ARCHIVE" \
    || note "study_archive.py save exited with status $?; going on (the run directories hold it all)"
}

# The shipped spaces with the study's budget written in: ASHA's grace period and reduction factor
# are settings of the space, not fields --fix can pin, so the searches run from these copies
# (RUNS/spaces/*.yaml); everything that differs between methods and settings is a --fix below.
for base in cosine_l2 baselines; do
  "$PY" - "$base" "$RUNS/spaces/$base.yaml" <<EOF
import sys
from pathlib import Path
import yaml
from gs_tune.search.space import load_space, parse_space
base, out = sys.argv[1], Path(sys.argv[2])
data = load_space(base).to_dict()
data["description"] += " Study budget: benchmarks/study.sh."
data["fixed"].update(iterations=$ITERATIONS, val_every=$VAL_EVERY, val_tasks=$VAL_TASKS)
data["scheduler"].update(grace_period=$GRACE, reduction_factor=$REDUCTION)
data.update(num_samples=$TRIALS, max_concurrent=$CONCURRENT)
text = yaml.safe_dump(parse_space(data, base).to_dict(), sort_keys=False)  # validated before use
if not out.is_file() or out.read_text() != text:
    out.write_text(text)
EOF
done

# State of a run directory: new (absent or empty), done (as many ended trials as num_samples; the
# count `gs-tune launch` itself uses to call a search interrupted; a search restored from the
# archive is done with no Ray state), broken (no run.json or no Ray Tune state: killed while launch
# was starting, before any trial), or unfinished.
run_state() {
  "$PY" - "$1" <<'EOF'
import os
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from study_runs import search_done
from gs_tune.rundir import EXPERIMENT, RUN_FILE
run = Path(sys.argv[1])
if not run.is_dir() or not any(run.iterdir()):
    state = "new"
elif search_done(run):
    state = "done"
elif not (run / RUN_FILE).is_file() or not any((run / EXPERIMENT).glob("experiment_state*.json")):
    state = "broken"
else:
    state = "unfinished"
print(state, flush=True)
# Skip interpreter finalization: a gs_tune older than read_table_file leaves Arrow work behind
# that can abort the process at exit (apache/arrow#34314), which set -e would take for a failure.
os._exit(0)
EOF
}

# A gs-tune that exits non-zero after its work is complete and published (the same Arrow abort at
# exit, in a gs_tune older than its fix) must not end a study that would only be resumed into a
# "done, skipped"; anything else stops the study, to be continued by running study.sh again.
finished_anyway() {  # STATUS WHAT DONE(0|1)
  if [ "$1" != 0 ] && [ "$3" = 1 ]; then
    note "$2: gs-tune exited with status $1 after its results were complete; going on"
  elif [ "$1" != 0 ]; then
    note "$2: gs-tune exited with status $1; stopping (run study.sh again to continue)"; exit "$1"
  fi
}

name_run() {  # SETTING ROLE NAME: the manifest line through which study.py finds a run
  grep -qxF "$1${TAB}$2${TAB}$3" "$MANIFEST" || printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$MANIFEST"
}

search() {  # SETTING ROLE NAME SPACE FIX...: one search, launched, resumed or skipped
  local setting=$1 role=$2 name=$3 space=$4; shift 4
  local dir="$RUNS/$name" fixes=() state
  name_run "$setting" "$role" "$name"
  for f in "$@"; do fixes+=(--fix "$f"); done
  state=$(run_state "$dir")
  if [ "$state" = broken ]; then
    note "$name: no trial state (killed while starting); moved to $dir.broken-$$, launching again"
    mv "$dir" "$dir.broken-$$"; state=new
  fi
  local rc=0
  case $state in
    done) note "$name: done, skipped"; return ;;
    new) note "$name: launch"
         "$B" launch --space "$RUNS/spaces/$space.yaml" --runs-dir "$RUNS" --name "$name" "${fixes[@]}" \
           "${LAUNCH_EXTRA[@]}" || rc=$? ;;
    unfinished) note "$name: resume"; "$B" resume "$dir" || rc=$? ;;
  esac
  state=$(run_state "$dir")
  finished_anyway "$rc" "$name" "$([ "$state" = done ] && echo 1 || echo 0)"
  [ "$state" = done ] || note "WARNING: $name is $state after the search returned; its finished trials are used"
  keep
}

evaluate() {  # SETTING AHE_RUN IDENTITY_RUN ALGORITHMS BASELINE_RUN...
  local setting=$1 ahe=$RUNS/$2 identity=$RUNS/$3 algorithms=$4; shift 4
  local runs=(--baselines-run "$identity")
  for b in "$@"; do runs+=(--baselines-run "$RUNS/$b"); done
  if evaluated "$ahe" "$algorithms"; then note "$setting: evaluation done, skipped"; return; fi
  if [ -f "$ahe/evaluation.parquet" ]; then
    # Reptile joins a finished evaluation (it is searched last): its journal is written back from
    # evaluation.parquet, so gs-tune evaluate keeps those runs and retrains Reptile's only.
    note "$setting: evaluate again with Reptile added; the runs evaluation.parquet holds are kept"
    "$PY" benchmarks/study_journal.py "$ahe"
  else
    note "$setting: evaluate $(basename "$ahe")"
  fi
  # The identity-HVP search joins as a baselines run: evaluate takes the best trial of each
  # algorithm listed in --baselines over the --baselines-run directories, so `ahe` there is the
  # identity run's best trial (no other baselines run has an ahe trial). It is then retrained in
  # the same evaluation, on the same seeds and test tasks, and every pair stays paired.
  local rc=0
  "$B" evaluate "$ahe" --seeds "$SEEDS" --tasks "$TASKS" --baselines "$algorithms" \
    --reference fomaml "${runs[@]}" "${EVAL_EXTRA[@]}" || rc=$?
  finished_anyway "$rc" "$setting: evaluate" "$(evaluated "$ahe" "$algorithms" && echo 1 || echo 0)"
  keep
}

evaluated() {  # RUN ALGORITHMS: whether its evaluation.parquet exists and holds Reptile if ALGORITHMS asks for it
  [ -f "$1/evaluation.parquet" ] || return 1
  [[ ",$2," == *,reptile,* ]] || return 0
  "$PY" - "$1" <<'EOF'
import os
import sys
sys.path.insert(0, "benchmarks")
import study_runs
from gs_tune.results.tables import read_evaluation
rows = read_evaluation(sys.argv[1]).to_pylist()
os._exit(0 if any(study_runs.is_config(r, "baselines-run", "reptile") for r in rows) else 1)  # as in run_state
EOF
}

cost() {  # SETTING: its evaluated configurations timed interleaved in one process (study_cost.py)
  local out="$RUNS/cost_$1.json" rc=0
  if [ -f "$out" ]; then
    "$PY" benchmarks/study_cost.py --runs "$RUNS" --setting "$1" --covers "$out" || rc=$?
    case $rc in
      0) note "$1: interleaved timing done, skipped"; return ;;
      3) # a method joined the evaluation after it was timed (Reptile, last): all are timed again
         # together, as the ratios need; the old timing is kept beside the new
         mv "$out" "${out%.json}.incomplete.json"; note "$1: interleaved timing again, Reptile included" ;;
      *) note "$1: study_cost.py --covers exited with status $rc; stopping"; exit "$rc" ;;
    esac
  else
    note "$1: interleaved timing"
  fi
  "$PY" benchmarks/study_cost.py --runs "$RUNS" --setting "$1" "${COST_EXTRA[@]}" --out "$out"
  keep
}

setting_5w() {  # SETTING K: the five methods at 5-way 1-shot with K inner steps (Reptile: shared)
  local s=$1 k=$2 shape=(ways=5 shots=1 "query=$QUERY_5WAY")
  search "$s" ahe "${s}_ahe" cosine_l2 "${shape[@]}" "inner_steps=$k"
  search "$s" ahe_identity "${s}_ahe_identity" cosine_l2 "${shape[@]}" "inner_steps=$k" hvp=identity
  search "$s" maml "${s}_maml" baselines "${shape[@]}" "inner_steps=$k" algorithm=maml
  search "$s" fomaml "${s}_fomaml" baselines "${shape[@]}" "inner_steps=$k" algorithm=fomaml
  # Reptile is searched last, after every setting's other searches and evaluations (reptile_5w):
  # at ~8x first-order MAML's cost per meta-iteration it is the study's most expensive method and
  # the one no question turns on. The evaluation here retrains the others; Reptile joins it later.
  name_run "$s" reptile 5w1s_reptile
  evaluate "$s" "${s}_ahe" "${s}_ahe_identity" maml,fomaml,ahe "${s}_maml" "${s}_fomaml"
  cost "$s"
  if [ "$k" = 1 ]; then
    # The second AHE search: the same space and budget under another name, so another sampler
    # seed, for the spread of the importances between two searches (question 4). Not evaluated:
    # it answers no test question, so it runs after the setting's evaluation and timing (its
    # sampler seed comes from its name, whatever the order).
    search "$s" ahe_seed2 "${s}_ahe_seed2" cosine_l2 "${shape[@]}" "inner_steps=$k"
  fi
}

# Reptile searches its own K (3-10; with one step it is joint training, not Reptile), so its search
# does not depend on the setting's K: one 5-way search serves both 5-way settings, and it is
# retrained once, joining 5w1s_k1's evaluation. 5w1s_k5's would be the very same runs (same
# configuration, seeds and test tasks): study.py takes them from there, so 5w1s_k5 only names the
# run. Both 5-way timings then run again with Reptile among the methods.
reptile_5w() {
  local s=5w1s_k1
  search "$s" reptile 5w1s_reptile baselines ways=5 shots=1 "query=$QUERY_5WAY" algorithm=reptile
  evaluate "$s" "${s}_ahe" "${s}_ahe_identity" maml,fomaml,reptile,ahe "${s}_maml" "${s}_fomaml" 5w1s_reptile
  cost "$s"
  if [ -f "$RUNS/5w1s_k5_ahe/evaluation.parquet" ]; then cost 5w1s_k5; fi
}

for setting in $SETTINGS; do
  case $setting in
    5w1s_k1) setting_5w 5w1s_k1 1 ;;
    5w1s_k5) setting_5w 5w1s_k5 5 ;;
    20w1s_k1)
      s=20w1s_k1; shape=(ways=20 shots=1 "query=$QUERY_20WAY")
      search $s ahe ${s}_ahe cosine_l2 "${shape[@]}" inner_steps=1
      search $s ahe_identity ${s}_ahe_identity cosine_l2 "${shape[@]}" inner_steps=1 hvp=identity
      search $s maml ${s}_maml baselines "${shape[@]}" inner_steps=1 algorithm=maml
      search $s fomaml ${s}_fomaml baselines "${shape[@]}" inner_steps=1 algorithm=fomaml
      name_run $s reptile 20w1s_reptile
      evaluate $s ${s}_ahe ${s}_ahe_identity maml,fomaml,ahe ${s}_maml ${s}_fomaml
      cost $s ;;
    *) echo "study.sh: unknown setting $setting; allowed: 5w1s_k1 5w1s_k5 20w1s_k1" >&2; exit 2 ;;
  esac
done
# Reptile last, setting by setting (see setting_5w): if the sessions run out, what is cut is
# Reptile's rows, not a setting's answers.
for setting in $SETTINGS; do
  case $setting in
    5w1s_k1) reptile_5w ;;
    20w1s_k1)
      s=20w1s_k1
      search $s reptile 20w1s_reptile baselines ways=20 shots=1 "query=$QUERY_20WAY" algorithm=reptile
      evaluate $s ${s}_ahe ${s}_ahe_identity maml,fomaml,reptile,ahe ${s}_maml ${s}_fomaml 20w1s_reptile
      cost $s ;;
  esac
done

note "reports"
cut -f3 "$MANIFEST" | tail -n +2 | sort -u | while read -r name; do
  "$B" report "$RUNS/$name" > /dev/null || note "$name: gs-tune report exited with status $?; going on"
done
note "tables and plots"
"$PY" benchmarks/study.py --runs "$RUNS" --plots "$PLOTS" --out "$RUNS/study.md"
note "done: $RUNS/study.md, plots in $PLOTS"
