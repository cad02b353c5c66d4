#!/usr/bin/env bash
# The CPU-sized quality study of BENCHMARKS.md: bench/quality.sh for DDTP translation and DDTP
# summarization side by side, one torch thread each (a 2-core machine runs both at once).
# Short segments, a 2+2-layer d 128 model, a 2k sentencepiece vocabulary, the same epoch budget
# for every mode (MAX_EPOCH) with early stopping on valid loss (PATIENCE); results.md says for
# each run whether patience (converged) or the budget stopped it. BENCHMARKS.md lists the
# exact invocations behind its tables.
#
# Inputs:  apt access or DDTP_INDEX_DIR (see examples/ddtp/prepare.sh)
# Outputs: runs/quality-translation/, runs/quality-summarization/ (see bench/quality.sh),
#          runs/quality-<task>.log (progress of each study)
#
# Environment knobs (default):
#   SEEDS=1                 seeds per mode (e.g. "1 2")
#   TASKS="translation summarization"
#   MAX_EPOCH=25 PATIENCE=3 epoch budget per run, early stopping on valid loss
#   WEIGHTS=1,1,5           LR-Drop alpha,beta,gamma fixed in advance (empty: sweep SWEEP on valid)
#   RDROP_IMPL=plugin       R-Drop runs with the plugin criterion at alpha = beta = 0 (same loss
#                           and gradient as fairseq's criterion, faster); fairseq: fairseq's own
#   MODES="lrdrop baseline rdrop"
#   MAX_WORDS=12 (translation)   SUM_MAX_WORDS=30 MAX_TRAIN_PAIRS=8000 (summarization)
#   THREADS=1               torch threads per study
#   model and optimizer knobs with their defaults: bench/cpu-model.sh
#   any other bench/quality.sh, examples/ddtp/train.sh or prepare.sh knob passes through;
#   TASK, DATA_DIR (data/ddtp-quality[-sum]) and RUN_DIR (runs/quality-<task>) are fixed here
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TASKS="${TASKS:-translation summarization}"
export SEEDS="${SEEDS:-1}" WEIGHTS="${WEIGHTS-1,1,5}" RDROP_IMPL="${RDROP_IMPL:-plugin}"
THREADS="${THREADS:-1}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
export MODES="${MODES:-lrdrop baseline rdrop}"
export PATIENCE="${PATIENCE:-3}" MAX_EPOCH="${MAX_EPOCH:-25}"
# the shared CPU-sized model and optimizer (knobs listed there)
source "$HERE/cpu-model.sh"

for task in $TASKS; do
  case "$task" in translation|summarization) ;;
    *) echo "error: unknown task '$task' in TASKS (translation, summarization)" >&2; exit 1;;
  esac
done
mkdir -p runs
pids=()
for task in $TASKS; do
  case "$task" in
    translation)
      TASK=translation DATA_DIR=data/ddtp-quality MAX_WORDS="${MAX_WORDS:-12}" \
        RUN_DIR=runs/quality-translation bash "$HERE/quality.sh" > runs/quality-translation.log 2>&1 &;;
    summarization)
      TASK=summarization DATA_DIR=data/ddtp-quality-sum SUM_MAX_WORDS="${SUM_MAX_WORDS:-30}" \
        MAX_TRAIN_PAIRS="${MAX_TRAIN_PAIRS:-8000}" RUN_DIR=runs/quality-summarization \
        bash "$HERE/quality.sh" > runs/quality-summarization.log 2>&1 &;;
  esac
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
for task in $TASKS; do
  echo "== $task (runs/quality-$task.log)"
  cat "runs/quality-$task/results.md" 2>/dev/null || tail -n 5 "runs/quality-$task.log"
done
exit $status
