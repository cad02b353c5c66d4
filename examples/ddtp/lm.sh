#!/usr/bin/env bash
# Train a small decoder-only language model (fairseq language_modeling) on DDTP English
# descriptions from scratch, plain, with R-Drop or with LR-Drop, to early stopping on valid
# loss; then score its best checkpoint's test perplexity with stock fairseq-eval-lm.
#
# Modes: baseline  stock transformer_lm, stock cross_entropy
#        rdrop     stock transformer_lm, lr_drop_label_smoothed_cross_entropy with alpha = beta = 0
#        lrdrop    lr_drop_transformer_lm, lr_drop_label_smoothed_cross_entropy (decoder layers'
#                  hidden states and self-attention, output term per token)
# All use --label-smoothing 0 (plain LM cross-entropy); valid and test are single stock passes.
# --required-batch-size-multiple 1: with fairseq's default 8, batch_by_size leaves the last
# blocks out when they do not fill a multiple of 8, so valid perplexity would skip them.
#
# Inputs:  $DATA_DIR/bin/lm-en-$SIZE, or lm-en for SIZE=all (examples/ddtp/prepare-nlu.sh)
# Outputs: $SAVE_DIR/checkpoint_best.pt (lowest valid loss), train.out, train.log (JSON lines),
#          command.txt, test.out (fairseq-eval-lm), result.json ({size, mode, seed, weights,
#          epochs, best_epoch, valid_ppl, test_ppl, train_seconds}); a rerun with result.json
#          present does nothing
#
# Environment knobs (default):
#   SIZE=1000                 train descriptions: one of prepare-nlu.sh's LM_TRAIN_SIZES, or all
#   MODE=lrdrop               baseline | rdrop | lrdrop
#   HIDDEN_REG_WEIGHT=0.1 ATTN_REG_WEIGHT=0.1 OUTPUT_REG_WEIGHT=1.0   alpha, beta, gamma
#                             (rdrop: alpha = beta = 0; baseline: all 0)
#   DATA_DIR=data/ddtp-nlu    SAVE_DIR=runs/ddtp-lm/$SIZE-$MODE-seed$SEED
#   model: LAYERS=2 EMBED_DIM=128 FFN_DIM=512 HEADS=4 TOKENS_PER_SAMPLE=128 DROPOUT=0.1
#   MAX_EPOCH=60 PATIENCE=5 (epochs without a lower valid loss) MAX_TOKENS=2048
#   LR=1e-3 WARMUP=200 (inverse_sqrt, Adam)  SEED=1
#   THREADS=                  torch threads (empty: torch's default)
#   PYTHON=python (the venv's)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
source "$HERE/record.sh"
SIZE="${SIZE:-1000}" MODE="${MODE:-lrdrop}"
HIDDEN_REG_WEIGHT="${HIDDEN_REG_WEIGHT:-0.1}" ATTN_REG_WEIGHT="${ATTN_REG_WEIGHT:-0.1}" OUTPUT_REG_WEIGHT="${OUTPUT_REG_WEIGHT:-1.0}"
DATA_DIR="${DATA_DIR:-data/ddtp-nlu}"
SEED="${SEED:-1}"
SAVE_DIR="${SAVE_DIR:-runs/ddtp-lm/$SIZE-$MODE-seed$SEED}"
LAYERS="${LAYERS:-2}" EMBED_DIM="${EMBED_DIM:-128}" FFN_DIM="${FFN_DIM:-512}" HEADS="${HEADS:-4}"
TOKENS_PER_SAMPLE="${TOKENS_PER_SAMPLE:-128}" DROPOUT="${DROPOUT:-0.1}"
MAX_EPOCH="${MAX_EPOCH:-60}" PATIENCE="${PATIENCE:-5}" MAX_TOKENS="${MAX_TOKENS:-2048}"
LR="${LR:-1e-3}" WARMUP="${WARMUP:-200}" THREADS="${THREADS:-}" PYTHON="${PYTHON:-python}"

die() { echo "error: $*" >&2; exit 1; }
case "$MODE" in
  baseline) HIDDEN_REG_WEIGHT=0 ATTN_REG_WEIGHT=0 OUTPUT_REG_WEIGHT=0
            MODEL=(--arch transformer_lm --criterion cross_entropy) ;;
  rdrop) HIDDEN_REG_WEIGHT=0 ATTN_REG_WEIGHT=0 MODEL=(--arch transformer_lm) ;;
  lrdrop) MODEL=(--arch lr_drop_transformer_lm) ;;
  *) die "MODE=$MODE: choose baseline, rdrop or lrdrop" ;;
esac
[[ "$MODE" == baseline ]] || MODEL+=(--criterion lr_drop_label_smoothed_cross_entropy --label-smoothing 0
  --hidden-reg-weight "$HIDDEN_REG_WEIGHT" --attn-reg-weight "$ATTN_REG_WEIGHT" --output-reg-weight "$OUTPUT_REG_WEIGHT")
for knob in HIDDEN_REG_WEIGHT ATTN_REG_WEIGHT OUTPUT_REG_WEIGHT LR DROPOUT; do
  [[ "${!knob}" =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] || die "$knob must be a number, got '${!knob}'"
done
for knob in LAYERS EMBED_DIM FFN_DIM HEADS TOKENS_PER_SAMPLE MAX_EPOCH PATIENCE MAX_TOKENS WARMUP; do
  [[ "${!knob}" =~ ^[1-9][0-9]*$ ]] || die "$knob must be a positive whole number, got '${!knob}'"
done
[[ "$SEED" =~ ^[0-9]+$ ]] || die "SEED must be a whole number, got '$SEED'"
DATA_BIN="$DATA_DIR/bin/lm-en-$SIZE"
[[ "$SIZE" == all ]] && DATA_BIN="$DATA_DIR/bin/lm-en"
[[ -f "$DATA_BIN/dict.txt" && -f "$DATA_BIN/train.idx" && -f "$DATA_BIN/test.idx" ]] \
  || die "$DATA_BIN missing (run: LM_TRAIN_SIZES=\"$SIZE\" bash examples/ddtp/prepare-nlu.sh, or set DATA_DIR)"
if [[ -s "$SAVE_DIR/result.json" ]]; then cat "$SAVE_DIR/result.json"; exit 0; fi
[[ -z "$THREADS" ]] || export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
DEVICE=()
[[ "$("$PYTHON" -c 'import torch; print(torch.cuda.is_available())')" == True ]] || DEVICE=(--cpu)

rm -rf "$SAVE_DIR"; mkdir -p "$SAVE_DIR"
CMD=("$PYTHON" -m fairseq_cli.train "$DATA_BIN" --user-dir "$REPO/fairseq_lrdrop"
  --task language_modeling "${MODEL[@]}" --share-decoder-input-output-embed
  --decoder-layers "$LAYERS" --decoder-embed-dim "$EMBED_DIM" --decoder-ffn-embed-dim "$FFN_DIM"
  --decoder-attention-heads "$HEADS" --tokens-per-sample "$TOKENS_PER_SAMPLE" --sample-break-mode none
  --dropout "$DROPOUT" --attention-dropout "$DROPOUT"
  --optimizer adam --adam-betas '(0.9,0.98)' --weight-decay 0.01 --clip-norm 0.0
  --lr-scheduler inverse_sqrt --lr "$LR" --warmup-updates "$WARMUP" --warmup-init-lr 1e-07
  --max-tokens "$MAX_TOKENS" --required-batch-size-multiple 1 --max-epoch "$MAX_EPOCH" --patience "$PATIENCE"
  --no-epoch-checkpoints --no-last-checkpoints --num-workers 0 --seed "$SEED"
  --save-dir "$SAVE_DIR" --log-format json --log-interval 100 --log-file "$SAVE_DIR/train.log"
  "${DEVICE[@]}")
train_in_save_dir "${CMD[@]}"
# test perplexity: stock fairseq-eval-lm over blocks of TOKENS_PER_SAMPLE, as valid was scored
"$PYTHON" -m fairseq_cli.eval_lm "$DATA_BIN" --user-dir "$REPO/fairseq_lrdrop" --path "$SAVE_DIR/checkpoint_best.pt" \
  --gen-subset test --tokens-per-sample "$TOKENS_PER_SAMPLE" --sample-break-mode none --max-tokens "$MAX_TOKENS" \
  --num-workers 0 "${DEVICE[@]}" > "$SAVE_DIR/test.out" 2>&1 \
  || { tail -n 20 "$SAVE_DIR/test.out" >&2; die "scoring the test split failed (log: $SAVE_DIR/test.out)"; }
"$PYTHON" "$HERE/result.py" lm "$SAVE_DIR" "$SIZE" "$MODE" "$SEED" \
  "$HIDDEN_REG_WEIGHT,$ATTN_REG_WEIGHT,$OUTPUT_REG_WEIGHT" "$TRAIN_SECONDS"
