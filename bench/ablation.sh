#!/usr/bin/env bash
# Ablation of LR-Drop's terms on DDTP, under a fixed epoch budget: every variant trains for
# exactly BUDGET_EPOCHS epochs (no early stopping) and keeps the checkpoint of EVERY epoch, so
# the report (bench/ablation_report.py) can score each run at its valid-best epoch, where
# `--patience K` would have stopped it, and at equal valid loss, without training anything
# again.
#
# Variants (VARIANTS, names; weights from WEIGHTS = alpha,beta,gamma, fixed in advance):
#   baseline             label-smoothed CE, one pass
#   rdrop                0, 0, gamma               (output term only)
#   lrdrop               alpha, beta, gamma        (every term, every layer and module)
#   hidden_only          alpha, 0, gamma
#   attention_only       0, beta, gamma
#   encoder_self_only    0, beta, gamma  --attn-reg-modules encoder_self
#   decoder_self_only    0, beta, gamma  --attn-reg-modules decoder_self
#   decoder_cross_only   0, beta, gamma  --attn-reg-modules decoder_cross
#   encoder_layers_only  alpha, beta, gamma  --reg-decoder-layers none
#   decoder_layers_only  alpha, beta, gamma  --reg-encoder-layers none
#   ffn_output           alpha, beta, gamma  --hidden-state-point ffn_output
#   attention_mse        alpha, beta, gamma  --attn-distance mse
#
# Inputs:  apt access or DDTP_INDEX_DIR (examples/ddtp/prepare.sh)
# Outputs: $RUN_DIR/<variant>-seed<k>/ (checkpoint<epoch>.pt for every epoch, checkpoint_best.pt,
#          train.log, command.txt, trained = wall seconds), $RUN_DIR/<variant>-seed<k>.train.out
#          A rerun skips runs whose `trained` file exists.
#
# Environment knobs (default):
#   TASK=translation        translation | summarization
#   VARIANTS="baseline rdrop lrdrop hidden_only attention_only"
#   SEEDS="1"
#   WEIGHTS=0.1,0.1,5       alpha,beta,gamma (the triple every earlier valid-split choice picked)
#   BUDGET_EPOCHS=100       epochs every run trains
#   RUN_DIR=runs/ablation-$TASK
#   DATA_DIR, MAX_WORDS, MAX_TRAIN_PAIRS, SUM_MAX_WORDS: as in bench/quality-converged-cpu.sh
#                           (translation: data/ddtp-quality-4k, 12, 4000; summarization:
#                           data/ddtp-quality-sum-3k, 30, 3000)
#   THREADS=1               torch threads per run (two invocations side by side on 2 cores)
#   model and optimizer knobs: bench/cpu-model.sh; any examples/ddtp/train.sh knob passes
#   through, except MODE, SEED, SAVE_DIR, the weights, PATIENCE, MAX_EPOCH, EXTRA_ARGS,
#   STOP_TIME_HOURS and NO_EPOCH_CHECKPOINTS, which this script sets
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DDTP="$HERE/../examples/ddtp"
export TASK="${TASK:-translation}"
case "$TASK" in
  translation)
    export DATA_DIR="${DATA_DIR:-data/ddtp-quality-4k}" MAX_WORDS="${MAX_WORDS:-12}" MAX_TRAIN_PAIRS="${MAX_TRAIN_PAIRS:-4000}" ;;
  summarization)
    export DATA_DIR="${DATA_DIR:-data/ddtp-quality-sum-3k}" SUM_MAX_WORDS="${SUM_MAX_WORDS:-30}" MAX_TRAIN_PAIRS="${MAX_TRAIN_PAIRS:-3000}" ;;
  *) echo "error: unknown TASK='$TASK' (translation or summarization)" >&2; exit 1 ;;
esac
VARIANTS="${VARIANTS:-baseline rdrop lrdrop hidden_only attention_only}"
SEEDS="${SEEDS:-1}"
WEIGHTS="${WEIGHTS:-0.1,0.1,5}"
BUDGET_EPOCHS="${BUDGET_EPOCHS:-100}"
RUN_DIR="${RUN_DIR:-runs/ablation-$TASK}"
THREADS="${THREADS:-1}"
export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
source "$HERE/cpu-model.sh"

[[ "$WEIGHTS" =~ ^[0-9.]+,[0-9.]+,[0-9.]+$ ]] || { echo "error: WEIGHTS='$WEIGHTS' is not alpha,beta,gamma (e.g. 0.1,0.1,5)" >&2; exit 1; }
[[ "$BUDGET_EPOCHS" =~ ^[1-9][0-9]*$ ]] || { echo "error: BUDGET_EPOCHS='$BUDGET_EPOCHS' is not a positive whole number" >&2; exit 1; }
IFS=, read -r A B G <<< "$WEIGHTS"

# variant NAME -> "mode alpha beta gamma extra-criterion-args..."
variant() {
  case "$1" in
    baseline) echo "baseline 0 0 0" ;;
    rdrop) echo "lrdrop 0 0 $G" ;;
    lrdrop) echo "lrdrop $A $B $G" ;;
    hidden_only) echo "lrdrop $A 0 $G" ;;
    attention_only) echo "lrdrop 0 $B $G" ;;
    encoder_self_only|decoder_self_only|decoder_cross_only) echo "lrdrop 0 $B $G --attn-reg-modules ${1%_only}" ;;
    encoder_layers_only) echo "lrdrop $A $B $G --reg-decoder-layers none" ;;
    decoder_layers_only) echo "lrdrop $A $B $G --reg-encoder-layers none" ;;
    ffn_output) echo "lrdrop $A $B $G --hidden-state-point ffn_output" ;;
    attention_mse) echo "lrdrop $A $B $G --attn-distance mse" ;;
    *) return 1 ;;
  esac
}
for name in $VARIANTS; do
  variant "$name" > /dev/null || { echo "error: unknown variant '$name' in VARIANTS (see the header of $0)" >&2; exit 1; }
done
for seed in $SEEDS; do
  [[ "$seed" =~ ^[0-9]+$ ]] || { echo "error: SEEDS entry '$seed' is not a whole number" >&2; exit 1; }
done

mkdir -p "$RUN_DIR"
TASKS=$TASK bash "$DDTP/prepare.sh" > "$RUN_DIR/prepare.$$.out" 2>&1 \
  || { tail -n 20 "$RUN_DIR/prepare.$$.out" >&2; echo "error: data preparation failed (log: $RUN_DIR/prepare.$$.out)" >&2; exit 1; }
rm -f "$RUN_DIR/prepare.$$.out"
printf '%s\n' "$WEIGHTS" > "$RUN_DIR/weights.txt"

for seed in $SEEDS; do
  for name in $VARIANTS; do
    dir="$RUN_DIR/$name-seed$seed"
    [[ -s "$dir/trained" ]] && { echo "$dir: trained"; continue; }
    read -r mode alpha beta gamma extra <<< "$(variant "$name")"
    echo "training $dir ($mode $alpha,$beta,$gamma ${extra:-})"
    start=$SECONDS
    # RDROP_IMPL=plugin: rdrop is the plugin criterion with alpha = beta = 0 (mode lrdrop)
    MODE=$mode SEED=$seed SAVE_DIR="$dir" HIDDEN_REG_WEIGHT=$alpha ATTN_REG_WEIGHT=$beta \
      OUTPUT_REG_WEIGHT=$gamma PATIENCE=-1 MAX_EPOCH=$BUDGET_EPOCHS STOP_TIME_HOURS=0 \
      NO_EPOCH_CHECKPOINTS=0 EXTRA_ARGS="${extra:-}" bash "$DDTP/train.sh" > "$dir.train.out" 2>&1 \
      || { tail -n 20 "$dir.train.out" >&2; echo "error: training $name seed $seed failed (log: $dir.train.out)" >&2; exit 1; }
    echo $((SECONDS - start)) > "$dir/trained"
  done
done
echo "trained: $VARIANTS (seeds $SEEDS) in $RUN_DIR; report: python bench/ablation_report.py --run-dir $RUN_DIR"
