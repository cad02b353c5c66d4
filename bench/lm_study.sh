#!/usr/bin/env bash
# Language-model study on DDTP English (issue 14): a small transformer_lm trained from scratch
# to early stopping on valid loss, plain (stock cross_entropy), with R-Drop (alpha = beta = 0)
# and with LR-Drop, for every seed; test perplexity by stock fairseq-eval-lm
# (examples/ddtp/lm.sh). The weights are fixed in advance (no test score chooses anything).
#
# Inputs:  apt access or DDTP_INDEX_DIR (examples/ddtp/prepare-nlu.sh)
# Outputs: $RUN_DIR/<size>-<mode>-seed<k>/result.json, diagnose-test.json (and the
#          training logs, <run>.out, <run>.diagnose.out),
#          $RUN_DIR/report.md + report.json (bench/lm_report.py); finished runs are skipped
#          on a rerun.
#
# Environment knobs (default):
#   SIZES="1000"                  train descriptions (prepare-nlu.sh's LM_TRAIN_SIZES, or all)
#   SEEDS="1 2 3"  MODES="baseline rdrop lrdrop"
#   LRDROP_WEIGHTS=0.1,0.1,1.0    LR-Drop's alpha,beta,gamma
#   RDROP_GAMMA=1.0               R-Drop's weight
#   RUN_DIR=runs/ddtp-lm  DATA_DIR=data/ddtp-nlu
#   LANES=2 THREADS=1             runs side by side, torch threads per run
#   PYTHON=python                 interpreter with fairseq and the plugin
#   DIAGNOSE=1                    bench/diagnose.py's test-set entropies of each run
#                                 (<run>/diagnose-test.json; 0 skips, the report shows "-")
#   training knobs of examples/ddtp/lm.sh (MAX_EPOCH=60, PATIENCE=5, model) pass through
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DDTP="$HERE/../examples/ddtp"
source "$HERE/study_lib.sh"
SIZES="${SIZES:-1000}"
SEEDS="${SEEDS:-1 2 3}"
MODES="${MODES:-baseline rdrop lrdrop}"
LRDROP_WEIGHTS="${LRDROP_WEIGHTS:-0.1,0.1,1.0}"
RDROP_GAMMA="${RDROP_GAMMA:-1.0}"
export RUN_DIR="${RUN_DIR:-runs/ddtp-lm}" DATA_DIR="${DATA_DIR:-data/ddtp-nlu}"
LANES="${LANES:-2}"
export THREADS="${THREADS:-1}" PYTHON="${PYTHON:-python}" DIAGNOSE="${DIAGNOSE:-1}" HERE

for mode in $MODES; do case "$mode" in baseline|rdrop|lrdrop) ;; *) die "MODES entry '$mode': choose baseline, rdrop, lrdrop" ;; esac; done
for seed in $SEEDS; do [[ "$seed" =~ ^[0-9]+$ ]] || die "SEEDS entry '$seed' is not a whole number"; done
for size in $SIZES; do [[ "$size" == all || "$size" =~ ^[1-9][0-9]*$ ]] || die "SIZES entry '$size' is neither a positive count nor 'all'"; done
[[ "$LRDROP_WEIGHTS" =~ ^[0-9.]+,[0-9.]+,[0-9.]+$ ]] || die "LRDROP_WEIGHTS='$LRDROP_WEIGHTS' is not alpha,beta,gamma"
[[ "$RDROP_GAMMA" =~ ^[0-9]*\.?[0-9]+$ ]] || die "RDROP_GAMMA must be a number, got '$RDROP_GAMMA'"
[[ "$LANES" =~ ^[1-9][0-9]*$ ]] || die "LANES must be a positive whole number, got '$LANES'"
[[ "$DIAGNOSE" == 0 || "$DIAGNOSE" == 1 ]] || die "DIAGNOSE must be 0 or 1, got '$DIAGNOSE'"

LM_TRAIN_SIZES="${LM_TRAIN_SIZES:-$(tr ' ' '\n' <<< "$SIZES" | grep -v '^all$' | tr '\n' ' ')}" \
  bash "$DDTP/prepare-nlu.sh"

# job line: SIZE MODE SEED ALPHA BETA GAMMA SAVE_DIR
job() {
  read -r size mode seed a b g dir <<< "$1"
  SIZE=$size MODE=$mode SEED=$seed HIDDEN_REG_WEIGHT=$a ATTN_REG_WEIGHT=$b OUTPUT_REG_WEIGHT=$g \
    SAVE_DIR=$dir bash "$DDTP/lm.sh" > "$dir.out" 2>&1 || { echo "FAILED $dir (log: $dir.out)"; return 1; }
  local data_bin="$DATA_DIR/bin/lm-en-$size"
  [[ "$size" == all ]] && data_bin="$DATA_DIR/bin/lm-en"
  diagnose_run "$dir" "$data_bin" && echo "done $dir: $(tail -n 1 "$dir.out")"
}
export -f job
export DDTP

mkdir -p "$RUN_DIR"
jobs="$RUN_DIR/jobs"
: > "$jobs"
for size in $SIZES; do for seed in $SEEDS; do for mode in $MODES; do
  case "$mode" in
    baseline) weights="0 0 0" ;;
    rdrop) weights="0 0 $RDROP_GAMMA" ;;
    lrdrop) weights="${LRDROP_WEIGHTS//,/ }" ;;
  esac
  echo "$size $mode $seed $weights $RUN_DIR/$size-$mode-seed$seed" >> "$jobs"
done; done; done
echo "$(wc -l < "$jobs") language-model runs, $LANES at a time"
run_jobs "$jobs"
"$PYTHON" "$HERE/lm_report.py" --run-dir "$RUN_DIR"
