#!/usr/bin/env bash
# Train a small Transformer on the DDTP data made by prepare.sh, plain, with R-Drop or with
# LR-Drop (the fairseq_lrdrop plugin).
#
# Inputs:  $DATA_BIN (default $DATA_DIR/bin/translation-en-de or $DATA_DIR/bin/summarization),
#          made by examples/ddtp/prepare.sh
# Outputs: $SAVE_DIR/checkpoint_best.pt, checkpoint_last.pt, ...;
#          $SAVE_DIR/train.log (fairseq's JSON log lines: one dict per log interval / epoch,
#          readable by a plotting tool); $SAVE_DIR/command.txt (the exact command)
#
# Environment knobs (default):
#   MODE=lrdrop               baseline | rdrop | lrdrop
#   TASK=translation          translation (En->De) | summarization (long description -> synopsis)
#   DATA_DIR=data/ddtp        prepare.sh's output directory
#   DATA_BIN=                 binarized data dir (default: from DATA_DIR and TASK)
#   SAVE_DIR=runs/ddtp/$TASK-$MODE
#   ARCH=lr_drop_transformer  model architecture (plain `transformer` works for baseline/rdrop)
#   ENCODER_LAYERS=3 DECODER_LAYERS=3 EMBED_DIM=256 FFN_DIM=1024 HEADS=4
#   DROPOUT=0.3 ATTN_DROPOUT=0.1 ACT_DROPOUT=0.0 WEIGHT_DECAY=0.0001 CLIP_NORM=0.0
#   LR=5e-4 WARMUP=4000 (inverse_sqrt schedule, Adam betas 0.9,0.98)
#   LABEL_SMOOTHING=0.1
#   HIDDEN_REG_WEIGHT=0.1     LR-Drop alpha (hidden-state consistency; the plugin's default)
#   ATTN_REG_WEIGHT=0.1       LR-Drop beta  (attention consistency; the plugin's default)
#   OUTPUT_REG_WEIGHT=5.0     LR-Drop gamma / R-Drop alpha (output KL)
#   RDROP_IMPL=fairseq        MODE=rdrop with fairseq's label_smoothed_cross_entropy_with_rdrop;
#                             plugin: lr_drop_label_smoothed_cross_entropy with alpha = beta = 0
#                             (the same loss and gradient, tested; faster, logs on the stock scale)
#   MAX_TOKENS=4096 UPDATE_FREQ=1
#   MAX_UPDATE=0 MAX_EPOCH=0  (0 = no limit; set at least one, or STOP_TIME_HOURS)
#   STOP_TIME_HOURS=0         stop (and save) after this much training time (0 = off)
#   PATIENCE=-1               early stopping on validation loss (-1 = off)
#   SAVE_INTERVAL_UPDATES=0 KEEP_LAST=2 LOG_INTERVAL=50 VALIDATE_INTERVAL=1 (epochs)
#   NO_EPOCH_CHECKPOINTS=1    keep only checkpoint_best/last
#   SEED=1
#   CPU=auto                  auto: --cpu when torch sees no CUDA device; 1: force; 0: never
#   FP16=0                    1: --fp16 (GPU only)
#   NUM_WORKERS=1             data loader workers
#   BATCH_MULTIPLE=1          --required-batch-size-multiple; with fairseq's default 8,
#                             batch_by_size drops a last batch whose size is not a multiple of
#                             8, i.e. up to 7 sentences of every epoch (train and valid) (seen
#                             with fairseq-fixed 0.12.3.1; fairseq issue #5036)
#   EXTRA_ARGS=               more fairseq-train arguments, appended as is
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
MODE="${MODE:-lrdrop}"
TASK="${TASK:-translation}"
DATA_DIR="${DATA_DIR:-data/ddtp}"
ARCH="${ARCH:-lr_drop_transformer}"
ENCODER_LAYERS="${ENCODER_LAYERS:-3}"
DECODER_LAYERS="${DECODER_LAYERS:-3}"
EMBED_DIM="${EMBED_DIM:-256}"
FFN_DIM="${FFN_DIM:-1024}"
HEADS="${HEADS:-4}"
DROPOUT="${DROPOUT:-0.3}"
ATTN_DROPOUT="${ATTN_DROPOUT:-0.1}"
ACT_DROPOUT="${ACT_DROPOUT:-0.0}"
WEIGHT_DECAY="${WEIGHT_DECAY:-0.0001}"
CLIP_NORM="${CLIP_NORM:-0.0}"
LR="${LR:-5e-4}"
WARMUP="${WARMUP:-4000}"
LABEL_SMOOTHING="${LABEL_SMOOTHING:-0.1}"
HIDDEN_REG_WEIGHT="${HIDDEN_REG_WEIGHT:-0.1}"
ATTN_REG_WEIGHT="${ATTN_REG_WEIGHT:-0.1}"
OUTPUT_REG_WEIGHT="${OUTPUT_REG_WEIGHT:-5.0}"
RDROP_IMPL="${RDROP_IMPL:-fairseq}"
MAX_TOKENS="${MAX_TOKENS:-4096}"
UPDATE_FREQ="${UPDATE_FREQ:-1}"
MAX_UPDATE="${MAX_UPDATE:-0}"
MAX_EPOCH="${MAX_EPOCH:-0}"
STOP_TIME_HOURS="${STOP_TIME_HOURS:-0}"
PATIENCE="${PATIENCE:--1}"
SAVE_INTERVAL_UPDATES="${SAVE_INTERVAL_UPDATES:-0}"
KEEP_LAST="${KEEP_LAST:-2}"
LOG_INTERVAL="${LOG_INTERVAL:-50}"
VALIDATE_INTERVAL="${VALIDATE_INTERVAL:-1}"
NO_EPOCH_CHECKPOINTS="${NO_EPOCH_CHECKPOINTS:-1}"
SEED="${SEED:-1}"
CPU="${CPU:-auto}"
FP16="${FP16:-0}"
NUM_WORKERS="${NUM_WORKERS:-1}"
BATCH_MULTIPLE="${BATCH_MULTIPLE:-1}"
EXTRA_ARGS="${EXTRA_ARGS:-}"

die() { echo "error: $*" >&2; exit 1; }

case "$TASK" in
  translation) SRC=en; TGT=de; BIN_NAME=translation-en-de ;;
  summarization) SRC=src; TGT=tgt; BIN_NAME=summarization ;;
  *) die "unknown TASK '$TASK' (use translation or summarization)" ;;
esac
case "$MODE" in
  baseline)
    CRIT=(--criterion label_smoothed_cross_entropy --label-smoothing "$LABEL_SMOOTHING") ;;
  rdrop)
    case "$RDROP_IMPL" in
      fairseq) CRIT=(--criterion label_smoothed_cross_entropy_with_rdrop --label-smoothing "$LABEL_SMOOTHING"
                     --rdrop-alpha "$OUTPUT_REG_WEIGHT") ;;
      plugin) CRIT=(--criterion lr_drop_label_smoothed_cross_entropy --label-smoothing "$LABEL_SMOOTHING"
                    --hidden-reg-weight 0 --attn-reg-weight 0 --output-reg-weight "$OUTPUT_REG_WEIGHT") ;;
      *) die "unknown RDROP_IMPL '$RDROP_IMPL' (use fairseq or plugin)" ;;
    esac ;;
  lrdrop)
    CRIT=(--criterion lr_drop_label_smoothed_cross_entropy --label-smoothing "$LABEL_SMOOTHING"
          --hidden-reg-weight "$HIDDEN_REG_WEIGHT" --attn-reg-weight "$ATTN_REG_WEIGHT"
          --output-reg-weight "$OUTPUT_REG_WEIGHT") ;;
  *) die "unknown MODE '$MODE' (use baseline, rdrop or lrdrop)" ;;
esac
DATA_BIN="${DATA_BIN:-$DATA_DIR/bin/$BIN_NAME}"
SAVE_DIR="${SAVE_DIR:-runs/ddtp/$TASK-$MODE}"

[[ -d "$DATA_BIN" ]] || die "data directory $DATA_BIN not found (run: bash examples/ddtp/prepare.sh, or set DATA_DIR/DATA_BIN)"
for f in "dict.$SRC.txt" "dict.$TGT.txt" "train.$SRC-$TGT.$SRC.idx" "valid.$SRC-$TGT.$SRC.idx"; do
  [[ -f "$DATA_BIN/$f" ]] || die "$DATA_BIN/$f missing: $DATA_BIN is not prepare.sh's $TASK output (run: TASKS=$TASK bash examples/ddtp/prepare.sh)"
done
[[ -d "$REPO/fairseq_lrdrop" ]] || die "plugin directory $REPO/fairseq_lrdrop not found"
command -v fairseq-train >/dev/null 2>&1 || die "fairseq-train not on PATH (run 'make install' and put .venv/bin on PATH)"
if [[ "$MAX_UPDATE" == 0 && "$MAX_EPOCH" == 0 && "$STOP_TIME_HOURS" == 0 && "$PATIENCE" == -1 ]]; then
  die "no stopping rule: set MAX_UPDATE, MAX_EPOCH, STOP_TIME_HOURS or PATIENCE"
fi

DEVICE_ARGS=()
if [[ "$CPU" == auto ]]; then
  if [[ "$(python -c 'import torch;print(torch.cuda.is_available())' 2>/dev/null)" == True ]]; then CPU=0; else CPU=1; fi
fi
[[ "$CPU" == 1 ]] && DEVICE_ARGS+=(--cpu)
[[ "$FP16" == 1 ]] && DEVICE_ARGS+=(--fp16)
[[ "$NO_EPOCH_CHECKPOINTS" == 1 ]] && DEVICE_ARGS+=(--no-epoch-checkpoints)

mkdir -p "$SAVE_DIR"
# shellcheck disable=SC2206
EXTRA=($EXTRA_ARGS)
CMD=(fairseq-train "$DATA_BIN"
  --user-dir "$REPO/fairseq_lrdrop" --arch "$ARCH"
  --task translation --source-lang "$SRC" --target-lang "$TGT"
  --share-all-embeddings
  --encoder-layers "$ENCODER_LAYERS" --decoder-layers "$DECODER_LAYERS"
  --encoder-embed-dim "$EMBED_DIM" --decoder-embed-dim "$EMBED_DIM"
  --encoder-ffn-embed-dim "$FFN_DIM" --decoder-ffn-embed-dim "$FFN_DIM"
  --encoder-attention-heads "$HEADS" --decoder-attention-heads "$HEADS"
  --dropout "$DROPOUT" --attention-dropout "$ATTN_DROPOUT" --activation-dropout "$ACT_DROPOUT"
  "${CRIT[@]}"
  --optimizer adam --adam-betas '(0.9,0.98)' --weight-decay "$WEIGHT_DECAY" --clip-norm "$CLIP_NORM"
  --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP" --warmup-init-lr 1e-07
  --max-tokens "$MAX_TOKENS" --update-freq "$UPDATE_FREQ" --required-batch-size-multiple "$BATCH_MULTIPLE"
  --max-update "$MAX_UPDATE" --max-epoch "$MAX_EPOCH" --stop-time-hours "$STOP_TIME_HOURS"
  --patience "$PATIENCE" --validate-interval "$VALIDATE_INTERVAL"
  --save-interval-updates "$SAVE_INTERVAL_UPDATES" --keep-interval-updates "$KEEP_LAST"
  --skip-invalid-size-inputs-valid-test
  --seed "$SEED" --num-workers "$NUM_WORKERS"
  --save-dir "$SAVE_DIR"
  --log-format json --log-interval "$LOG_INTERVAL" --log-file "$SAVE_DIR/train.log"
  "${DEVICE_ARGS[@]}" "${EXTRA[@]}")
printf '%q ' "${CMD[@]}" > "$SAVE_DIR/command.txt"; echo >> "$SAVE_DIR/command.txt"
echo "training $TASK ($MODE, arch $ARCH) on $DATA_BIN -> $SAVE_DIR (log: $SAVE_DIR/train.log)"
"${CMD[@]}"
[[ -f "$SAVE_DIR/checkpoint_best.pt" ]] || die "training ended without $SAVE_DIR/checkpoint_best.pt (see $SAVE_DIR/train.log)"
echo "checkpoints: $SAVE_DIR/checkpoint_best.pt, $SAVE_DIR/checkpoint_last.pt; JSON log: $SAVE_DIR/train.log"
