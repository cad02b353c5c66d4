#!/usr/bin/env bash
# Fine-tuning study on DDTP (issue 14): a small RoBERTa pre-trained once with masked_lm, then
# fine-tuned plain (stock sentence_prediction), with R-Drop (lr_drop_sentence_prediction,
# alpha = beta = 0) and with LR-Drop, on each TASK x SIZE, for every seed. LR-Drop's weights
# are chosen on valid only: every triple of WEIGHT_GRID trains with seed 1, the best valid
# accuracy picks the triple that then trains the other seeds (its seed-1 run is reused).
#
# Inputs:  apt access or DDTP_INDEX_DIR (examples/ddtp/prepare-nlu.sh)
# Outputs: $RUN_DIR/<task>-<size>-<mode>[-<alpha,beta,gamma>]-seed<k>/result.json,
#          diagnose-test.json (and the fine-tuning logs, <run>.out, <run>.diagnose.out), $RUN_DIR/<task>-<size>-lrdrop-choice.txt,
#          $RUN_DIR/pretrained/,
#          $RUN_DIR/report.md + report.json (bench/nlu_report.py); finished runs are skipped
#          on a rerun.
#
# Environment knobs (default):
#   TASKS="classification pairs"  SIZES="1000" (each one of prepare-nlu.sh's TRAIN_SIZES)
#   SEEDS="1 2 3 4 5"
#   MODES="baseline rdrop lrdrop"
#   WEIGHT_GRID="0.01,0.01,1 0.1,0.1,1 1,1,1"   LR-Drop triples tried on valid (seed 1)
#   RDROP_GAMMA=1.0               R-Drop's weight (R-Drop's GLUE range is 0.5-1.0)
#   RUN_DIR=runs/ddtp-nlu  DATA_DIR=data/ddtp-nlu
#   LANES=2 THREADS=1             runs side by side, torch threads per run
#   PYTHON=python                 interpreter with fairseq and the plugin
#   DIAGNOSE=1                    bench/diagnose.py's test-set entropies of each run
#                                 (<run>/diagnose-test.json; 0 skips, the report shows "-")
#   fine-tuning knobs of examples/ddtp/finetune.sh (MAX_EPOCH=10, LR=2e-4, BATCH_SIZE=32, model)
#   and pre-training knobs of examples/ddtp/pretrain.sh pass through, except PRETRAINED: every
#   run fine-tunes this study's own $RUN_DIR/pretrained checkpoint (for fine-tuning without
#   pre-training, run finetune.sh with PRETRAINED=none; BENCHMARKS.md has the loop)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DDTP="$HERE/../examples/ddtp"
source "$HERE/study_lib.sh"
TASKS="${TASKS:-classification pairs}"
SIZES="${SIZES:-1000}"
SEEDS="${SEEDS:-1 2 3 4 5}"
MODES="${MODES:-baseline rdrop lrdrop}"
WEIGHT_GRID="${WEIGHT_GRID:-0.01,0.01,1 0.1,0.1,1 1,1,1}"
RDROP_GAMMA="${RDROP_GAMMA:-1.0}"
export RUN_DIR="${RUN_DIR:-runs/ddtp-nlu}" DATA_DIR="${DATA_DIR:-data/ddtp-nlu}"
LANES="${LANES:-2}"
export THREADS="${THREADS:-1}" PYTHON="${PYTHON:-python}" DIAGNOSE="${DIAGNOSE:-1}" HERE

for task in $TASKS; do case "$task" in classification|pairs) ;; *) die "TASKS entry '$task': choose classification and/or pairs" ;; esac; done
for mode in $MODES; do case "$mode" in baseline|rdrop|lrdrop) ;; *) die "MODES entry '$mode': choose baseline, rdrop, lrdrop" ;; esac; done
for seed in $SEEDS; do [[ "$seed" =~ ^[0-9]+$ ]] || die "SEEDS entry '$seed' is not a whole number"; done
for triple in $WEIGHT_GRID; do [[ "$triple" =~ ^[0-9.]+,[0-9.]+,[0-9.]+$ ]] || die "WEIGHT_GRID entry '$triple' is not alpha,beta,gamma"; done
[[ "$LANES" =~ ^[1-9][0-9]*$ ]] || die "LANES must be a positive whole number, got '$LANES'"
[[ "$DIAGNOSE" == 0 || "$DIAGNOSE" == 1 ]] || die "DIAGNOSE must be 0 or 1, got '$DIAGNOSE'"
FIRST_SEED="${SEEDS%% *}"

bash "$DDTP/prepare-nlu.sh"   # TRAIN_SIZES (its default: 1000 10000 all) must hold SIZES
for task in $TASKS; do for size in $SIZES; do
  [[ -d "$DATA_DIR/bin/$task-$size" ]] || die "$DATA_DIR/bin/$task-$size missing: add $size to TRAIN_SIZES (examples/ddtp/prepare-nlu.sh)"
done; done
SAVE_DIR="$RUN_DIR/pretrained" bash "$DDTP/pretrain.sh"
export PRETRAINED="$RUN_DIR/pretrained/checkpoint_last.pt"

# job line: TASK SIZE MODE SEED ALPHA BETA GAMMA SAVE_DIR
job() {
  read -r task size mode seed a b g dir <<< "$1"
  TASK=$task SIZE=$size MODE=$mode SEED=$seed HIDDEN_REG_WEIGHT=$a ATTN_REG_WEIGHT=$b \
    OUTPUT_REG_WEIGHT=$g SAVE_DIR=$dir bash "$DDTP/finetune.sh" > "$dir.out" 2>&1 \
    || { echo "FAILED $dir (log: $dir.out)"; return 1; }
  diagnose_run "$dir" "$DATA_DIR/bin/$task-$size" && echo "done $dir: $(tail -n 1 "$dir.out")"
}
export -f job
export DDTP

mkdir -p "$RUN_DIR"
jobs1="$RUN_DIR/jobs.phase1" jobs2="$RUN_DIR/jobs.phase2"
: > "$jobs1"; : > "$jobs2"
for task in $TASKS; do for size in $SIZES; do
  for mode in $MODES; do
    case "$mode" in
      baseline) for seed in $SEEDS; do echo "$task $size baseline $seed 0 0 0 $RUN_DIR/$task-$size-baseline-seed$seed"; done >> "$jobs1" ;;
      rdrop) for seed in $SEEDS; do echo "$task $size rdrop $seed 0 0 $RDROP_GAMMA $RUN_DIR/$task-$size-rdrop-seed$seed"; done >> "$jobs1" ;;
      lrdrop) for triple in $WEIGHT_GRID; do
                echo "$task $size lrdrop $FIRST_SEED ${triple//,/ } $RUN_DIR/$task-$size-lrdrop-$triple-seed$FIRST_SEED"
              done >> "$jobs1" ;;
    esac
  done
done; done
echo "phase 1: $(wc -l < "$jobs1") fine-tuning runs (baseline, R-Drop, LR-Drop's grid at seed $FIRST_SEED), $LANES at a time"
run_jobs "$jobs1"

if [[ " $MODES " == *" lrdrop "* ]]; then
  for task in $TASKS; do for size in $SIZES; do
    choice="$("$PYTHON" - "$RUN_DIR" "$task" "$size" "$FIRST_SEED" $WEIGHT_GRID <<'PY'
import json, os, sys
run_dir, task, size, seed, *grid = sys.argv[1:]
scores = {t: json.load(open(os.path.join(run_dir, "%s-%s-lrdrop-%s-seed%s" % (task, size, t, seed), "result.json")))["valid_accuracy"]
          for t in grid}
best = max(grid, key=lambda t: (scores[t], -grid.index(t)))   # ties: the earlier (smaller) triple
print(best + " " + " ".join("%s=%s" % (t, scores[t]) for t in grid))
PY
)"
    echo "$choice" > "$RUN_DIR/$task-$size-lrdrop-choice.txt"
    triple="${choice%% *}"
    echo "$task-$size: LR-Drop weights chosen on valid: $choice"
    for seed in $SEEDS; do
      [[ "$seed" == "$FIRST_SEED" ]] && continue
      echo "$task $size lrdrop $seed ${triple//,/ } $RUN_DIR/$task-$size-lrdrop-$triple-seed$seed" >> "$jobs2"
    done
  done; done
  echo "phase 2: $(wc -l < "$jobs2") LR-Drop runs with the chosen weights"
  run_jobs "$jobs2"
fi
"$PYTHON" "$HERE/nlu_report.py" --run-dir "$RUN_DIR"
