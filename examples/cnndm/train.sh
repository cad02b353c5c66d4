#!/usr/bin/env bash
# Fine-tune BART-large on CNN/DailyMail: plain fine-tuning, R-Drop or LR-Drop, with R-Drop's
# published CNN/DM setting (lr 3e-5, 20000 updates, warmup 500, polynomial decay, label
# smoothing 0.1, dropout 0.1, attention dropout 0.1, weight decay 0.01, clip-norm 0.1,
# max-tokens 1024 x update-freq 16 on 4 GPUs, KL weight 0.7).
#
#   MODE=baseline  --criterion label_smoothed_cross_entropy --label-smoothing 0.1
#   MODE=rdrop     --criterion label_smoothed_cross_entropy_with_rdrop --rdrop-alpha $OUTPUT_REG_WEIGHT
#   MODE=lrdrop    --criterion lr_drop_label_smoothed_cross_entropy --hidden-reg-weight
#                  $HIDDEN_REG_WEIGHT --attn-reg-weight $ATTN_REG_WEIGHT --output-reg-weight
#                  $OUTPUT_REG_WEIGHT
# Weights: OUTPUT_REG_WEIGHT=0.7 is R-Drop's published KL weight for CNN/DM;
# HIDDEN_REG_WEIGHT=0.1 and ATTN_REG_WEIGHT=0.1 are the plugin's defaults, chosen on valid
# splits (README, "Default weights"; not from a paper).
#
# Starting point: RESTORE_FILE (default BART_DIR/model.pt of bart.large, from
# https://dl.fbaipublicfiles.com/fairseq/models/bart.large.tar.gz) with --reset-optimizer
# --reset-dataloader --reset-meters. RESTORE_FILE= (empty) trains from scratch (tests).
# A rerun with SAVE_DIR/checkpoint_last.pt present resumes from it instead (optimizer and
# progress kept; the restore/reset flags are left out).
#
# Batch size: update_freq = ceil(TOKENS_PER_UPDATE / (GPUs x MAX_TOKENS)), so the effective
# batch is 4 x 1024 x 16 = 65536 tokens whatever the GPU count (printed). R-Drop/LR-Drop
# run the batch twice: on out-of-memory halve MAX_TOKENS; update_freq doubles.
# GPUs: nvidia-smi -L (honours CUDA_VISIBLE_DEVICES; NUM_GPUS overrides); fairseq-train
# uses all visible GPUs; none: --cpu. Multi-node: NUM_GPUS = total GPUs, and LAUNCH=
# "torchrun --nnodes N --nproc_per_node G --node_rank R --master_addr HOST --master_port P"
# or EXTRA_ARGS="--distributed-world-size W --distributed-rank R0 --distributed-init-method
# tcp://HOST:PORT" on every node (see examples/wmt14/train.sh).
#
# Inputs : DATA_BIN from examples/cnndm/prepare.sh (dict.source.txt == dict.target.txt)
# Outputs: SAVE_DIR/checkpoint_best.pt, checkpoint_last.pt, train.log (appended)
#
# Environment knobs (default):
#   MODE=lrdrop            baseline | rdrop | lrdrop
#   ARCH=lr_drop_bart_large  any registered arch (e.g. bart_large, lr_drop_bart_base)
#   DATA_BIN=$REPO/data/cnndm/data-bin
#   BART_DIR=$REPO/data/bart.large   RESTORE_FILE=$BART_DIR/model.pt (empty: from scratch)
#   SAVE_DIR=$REPO/checkpoints/cnndm_<arch>_<mode>
#   USER_DIR=$REPO/fairseq_lrdrop    plugin dir (--user-dir); empty = stock fairseq only
#   HIDDEN_REG_WEIGHT=0.1 ATTN_REG_WEIGHT=0.1 OUTPUT_REG_WEIGHT=0.7 LABEL_SMOOTHING=0.1
#   LR=3e-5 MAX_UPDATE=20000 WARMUP=500 (polynomial decay to 0 at MAX_UPDATE)
#   DROPOUT=0.1 ATTN_DROPOUT=0.1 WEIGHT_DECAY=0.01 CLIP_NORM=0.1
#   MAX_TOKENS=1024 TOKENS_PER_UPDATE=65536 UPDATE_FREQ (overrides the computed value)
#   LOG_INTERVAL=100 SEED=1 FP16=1 (--fp16 on GPU)  NUM_GPUS (overrides detection)
#   LAUNCH (launcher prefix, e.g. torchrun ...)  EXTRA_ARGS (appended to fairseq-train)
#   PYTHON   interpreter with fairseq
#
# Usage: MODE=lrdrop BART_DIR=~/bart.large bash examples/cnndm/train.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
source "$REPO/examples/lib.sh"

MODE=${MODE:-lrdrop}
check_mode
ARCH=${ARCH:-lr_drop_bart_large}
DATA_BIN=${DATA_BIN:-$REPO/data/cnndm/data-bin}
BART_DIR=${BART_DIR:-$REPO/data/bart.large}
RESTORE_FILE=${RESTORE_FILE-$BART_DIR/model.pt}
SAVE_DIR=${SAVE_DIR:-$REPO/checkpoints/cnndm_${ARCH}_${MODE}}
USER_DIR=${USER_DIR-$REPO/fairseq_lrdrop}
HIDDEN_REG_WEIGHT=${HIDDEN_REG_WEIGHT:-0.1}
ATTN_REG_WEIGHT=${ATTN_REG_WEIGHT:-0.1}
OUTPUT_REG_WEIGHT=${OUTPUT_REG_WEIGHT:-0.7}
LABEL_SMOOTHING=${LABEL_SMOOTHING:-0.1}
LR=${LR:-3e-5}
MAX_UPDATE=${MAX_UPDATE:-20000}
WARMUP=${WARMUP:-500}
DROPOUT=${DROPOUT:-0.1}
ATTN_DROPOUT=${ATTN_DROPOUT:-0.1}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.01}
CLIP_NORM=${CLIP_NORM:-0.1}
MAX_TOKENS=${MAX_TOKENS:-1024}
TOKENS_PER_UPDATE=${TOKENS_PER_UPDATE:-65536}
LOG_INTERVAL=${LOG_INTERVAL:-100}
SEED=${SEED:-1}
FP16=${FP16:-1}
LAUNCH=${LAUNCH:-}
EXTRA_ARGS=${EXTRA_ARGS:-}

for v in HIDDEN_REG_WEIGHT ATTN_REG_WEIGHT OUTPUT_REG_WEIGHT LABEL_SMOOTHING LR DROPOUT ATTN_DROPOUT WEIGHT_DECAY CLIP_NORM; do
  number "$v" "${!v}"
done
for v in MAX_UPDATE WARMUP MAX_TOKENS TOKENS_PER_UPDATE LOG_INTERVAL SEED; do nonneg_int "$v" "${!v}"; done
(( MAX_TOKENS > 0 )) || die "MAX_TOKENS must be > 0"
if [[ $MODE == lrdrop && -z "$USER_DIR" ]]; then die "MODE=lrdrop needs the plugin: set USER_DIR to the fairseq_lrdrop directory"; fi
check_user_dir

[[ -d "$DATA_BIN" ]] || die "DATA_BIN=$DATA_BIN does not exist: run examples/cnndm/prepare.sh first"
for f in dict.source.txt dict.target.txt train.source-target.source.idx train.source-target.target.idx valid.source-target.source.idx valid.source-target.target.idx; do
  [[ -s "$DATA_BIN/$f" ]] || die "DATA_BIN=$DATA_BIN lacks $f: it is not a binarized CNN/DM data dir (run examples/cnndm/prepare.sh)"
done
same_dicts "$DATA_BIN" source target ||
  die "--share-all-embeddings needs a joined dictionary but $DATA_BIN/dict.source.txt != dict.target.txt: rebinarize with --srcdict and --tgtdict both set to BART's dict.txt (examples/cnndm/prepare.sh does)"

RESUME=0
if [[ -s "$SAVE_DIR/checkpoint_last.pt" ]]; then
  RESUME=1
elif [[ -n "$RESTORE_FILE" && ! -s "$RESTORE_FILE" ]]; then
  die "pretrained model $RESTORE_FILE not found: download https://dl.fbaipublicfiles.com/fairseq/models/bart.large.tar.gz and extract it (BART_DIR=.../bart.large), or set RESTORE_FILE= to train from scratch"
fi

NGPU=$(detect_gpus)
WORLD=$NGPU; (( WORLD < 1 )) && WORLD=1
if [[ -n "${UPDATE_FREQ:-}" ]]; then nonneg_int UPDATE_FREQ "$UPDATE_FREQ"; (( UPDATE_FREQ >= 1 )) || die "UPDATE_FREQ must be >= 1"
else UPDATE_FREQ=$(update_freq "$TOKENS_PER_UPDATE" "$WORLD" "$MAX_TOKENS"); fi
DEVICE_ARGS=()
if (( NGPU == 0 )); then DEVICE_ARGS+=(--cpu); DEV=CPU
else
  DEV="$NGPU GPU(s)"; [[ $FP16 == 1 ]] && DEVICE_ARGS+=(--fp16)
  (( NGPU > 1 )) && DEVICE_ARGS+=(--find-unused-parameters)
fi

case "$MODE" in
  baseline) CRIT=(--criterion label_smoothed_cross_entropy --label-smoothing "$LABEL_SMOOTHING") ;;
  rdrop) CRIT=(--criterion label_smoothed_cross_entropy_with_rdrop --label-smoothing "$LABEL_SMOOTHING"
               --rdrop-alpha "$OUTPUT_REG_WEIGHT") ;;
  lrdrop) CRIT=(--criterion lr_drop_label_smoothed_cross_entropy --label-smoothing "$LABEL_SMOOTHING"
                --hidden-reg-weight "$HIDDEN_REG_WEIGHT" --attn-reg-weight "$ATTN_REG_WEIGHT"
                --output-reg-weight "$OUTPUT_REG_WEIGHT") ;;
esac
INIT=()
if (( RESUME )); then
  START="resuming from $SAVE_DIR/checkpoint_last.pt"
elif [[ -n "$RESTORE_FILE" ]]; then
  INIT=(--restore-file "$RESTORE_FILE" --reset-optimizer --reset-dataloader --reset-meters)
  START="fine-tuning from $RESTORE_FILE"
else
  START="training from scratch (RESTORE_FILE is empty)"
fi

mkdir -p "$SAVE_DIR"
mapfile -t UD < <(user_dir_args)
read -r -a EXTRA <<< "$EXTRA_ARGS"  # split on whitespace, no globbing, no quoting
ARGS=("$DATA_BIN" "${UD[@]}" "${INIT[@]}"
  --task translation --source-lang source --target-lang target --truncate-source
  --arch "$ARCH" --layernorm-embedding --share-all-embeddings --share-decoder-input-output-embed
  --required-batch-size-multiple 1
  "${CRIT[@]}"
  --dropout "$DROPOUT" --attention-dropout "$ATTN_DROPOUT" --weight-decay "$WEIGHT_DECAY"
  --optimizer adam --adam-betas "(0.9, 0.999)" --adam-eps 1e-08 --clip-norm "$CLIP_NORM"
  --lr-scheduler polynomial_decay --lr "$LR" --total-num-update "$MAX_UPDATE" --warmup-updates "$WARMUP"
  --max-update "$MAX_UPDATE" --max-tokens "$MAX_TOKENS" --update-freq "$UPDATE_FREQ"
  --skip-invalid-size-inputs-valid-test --no-epoch-checkpoints
  --save-dir "$SAVE_DIR" --log-format simple --log-interval "$LOG_INTERVAL" --seed "$SEED"
  "${DEVICE_ARGS[@]}" "${EXTRA[@]}")

echo "mode=$MODE arch=$ARCH device=$DEV; $START"
echo "effective batch: $WORLD worker(s) x $MAX_TOKENS tokens x update_freq $UPDATE_FREQ = $(( WORLD * MAX_TOKENS * UPDATE_FREQ )) tokens/update (target TOKENS_PER_UPDATE=$TOKENS_PER_UPDATE)"
echo "checkpoints: $SAVE_DIR   log: $SAVE_DIR/train.log"
run_fairseq_train "$SAVE_DIR" "${ARGS[@]}"
