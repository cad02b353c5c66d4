#!/usr/bin/env bash
# Fine-tune a pre-trained RoBERTa on one GLUE task with fairseq's published per-task settings
# (examples/roberta/config/finetuning/*.yaml of fairseq), plain, with R-Drop or with LR-Drop.
#
# Inputs:  $DATA_BIN made by examples/glue/prepare.py; $ROBERTA_PATH (roberta.base/model.pt or
#          any stock roberta checkpoint; "none" trains from scratch, for smoke tests only)
# Outputs: $SAVE_DIR/checkpoint_best.pt (best valid accuracy; STS-B: lowest valid loss),
#          checkpoint_last.pt, train.log (fairseq's JSON log lines), command.txt
#
# Environment knobs (default):
#   TASK                      required: CoLA SST-2 MRPC QQP STS-B MNLI QNLI RTE
#   DATA_BIN=$TASK-bin
#   ROBERTA_PATH              required (see Inputs)
#   MODE=lrdrop               baseline | rdrop | lrdrop
#   ARCH=roberta_base         stock arch name; the lr_drop_ twin is used (same weights)
#   HIDDEN_REG_WEIGHT=0.01 ATTN_REG_WEIGHT=0.01 OUTPUT_REG_WEIGHT=1.0   alpha, beta, gamma (the
#                             criterion's defaults; README "Default weights")
#                             (rdrop: alpha = beta = 0; gamma 1.0 is in R-Drop's GLUE range 0.5-1.0)
#   LR, BATCH_SIZE, MAX_UPDATE, WARMUP: the published values of the task (table below)
#   MAX_EPOCH=10 DROPOUT=0.1 ATTN_DROPOUT=0.1 WEIGHT_DECAY=0.1 MAX_TOKENS=4400 SEED=1
#   SAVE_DIR=runs/glue/$TASK-$MODE
#   CPU=auto                  auto: --cpu when no GPU is detected (nvidia-smi -L, honouring
#                             CUDA_VISIBLE_DEVICES; NUM_GPUS overrides); 1: force; 0: never
#   NUM_GPUS                  overrides GPU detection (0 = CPU)
#   PYTHON                    interpreter with fairseq (default: $REPO/.venv/bin/python, else python3)
#   FP16=auto                 auto: --fp16 on a GPU (as published), never on CPU; 1 / 0
#   EXTRA_ARGS=               more fairseq-train arguments, appended as is
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
source "$REPO/examples/lib.sh"

TASK="${TASK:?set TASK to one of CoLA SST-2 MRPC QQP STS-B MNLI QNLI RTE}"
# task: classes lr batch-size max-update warmup (fairseq's RoBERTa GLUE configs)
case "$TASK" in
  CoLA)  read -r CLASSES T_LR T_BSZ T_UPDATES T_WARMUP <<< "2 1e-05 16 5336 320" ;;
  SST-2) read -r CLASSES T_LR T_BSZ T_UPDATES T_WARMUP <<< "2 1e-05 32 20935 1256" ;;
  MRPC)  read -r CLASSES T_LR T_BSZ T_UPDATES T_WARMUP <<< "2 1e-05 16 2296 137" ;;
  QQP)   read -r CLASSES T_LR T_BSZ T_UPDATES T_WARMUP <<< "2 1e-05 32 113272 28318" ;;
  STS-B) read -r CLASSES T_LR T_BSZ T_UPDATES T_WARMUP <<< "1 2e-05 16 3598 214" ;;
  MNLI)  read -r CLASSES T_LR T_BSZ T_UPDATES T_WARMUP <<< "3 1e-05 32 123873 7432" ;;
  QNLI)  read -r CLASSES T_LR T_BSZ T_UPDATES T_WARMUP <<< "2 1e-05 32 33112 1986" ;;
  RTE)   read -r CLASSES T_LR T_BSZ T_UPDATES T_WARMUP <<< "2 2e-05 16 2036 122" ;;
  *) die "TASK=$TASK is not a GLUE task (CoLA SST-2 MRPC QQP STS-B MNLI QNLI RTE)" ;;
esac
DATA_BIN="${DATA_BIN:-$TASK-bin}"
ROBERTA_PATH="${ROBERTA_PATH:?set ROBERTA_PATH to the pre-trained roberta model.pt (or none)}"
MODE="${MODE:-lrdrop}"
ARCH="${ARCH:-roberta_base}"
HIDDEN_REG_WEIGHT="${HIDDEN_REG_WEIGHT:-0.01}"
ATTN_REG_WEIGHT="${ATTN_REG_WEIGHT:-0.01}"
OUTPUT_REG_WEIGHT="${OUTPUT_REG_WEIGHT:-1.0}"
LR="${LR:-$T_LR}" BATCH_SIZE="${BATCH_SIZE:-$T_BSZ}" MAX_UPDATE="${MAX_UPDATE:-$T_UPDATES}" WARMUP="${WARMUP:-$T_WARMUP}"
MAX_EPOCH="${MAX_EPOCH:-10}"
DROPOUT="${DROPOUT:-0.1}"
ATTN_DROPOUT="${ATTN_DROPOUT:-0.1}"
WEIGHT_DECAY="${WEIGHT_DECAY:-0.1}"
MAX_TOKENS="${MAX_TOKENS:-4400}"
SEED="${SEED:-1}"
SAVE_DIR="${SAVE_DIR:-runs/glue/$TASK-$MODE}"
CPU="${CPU:-auto}"
FP16="${FP16:-auto}"
EXTRA_ARGS="${EXTRA_ARGS:-}"

for knob in HIDDEN_REG_WEIGHT ATTN_REG_WEIGHT OUTPUT_REG_WEIGHT LR WEIGHT_DECAY DROPOUT ATTN_DROPOUT; do number "$knob" "${!knob}"; done
for knob in BATCH_SIZE MAX_UPDATE WARMUP MAX_EPOCH MAX_TOKENS SEED; do nonneg_int "$knob" "${!knob}"; done
need_file "$DATA_BIN/input0/dict.txt" "DATA_BIN: run examples/glue/prepare.py first"
[[ "$ROBERTA_PATH" == none ]] || need_file "$ROBERTA_PATH" "ROBERTA_PATH: the pre-trained roberta model.pt"
case "$MODE" in
  baseline) CRITERION=(--criterion sentence_prediction) ;;
  rdrop) CRITERION=(--criterion lr_drop_sentence_prediction --hidden-reg-weight 0 --attn-reg-weight 0
                    --output-reg-weight "$OUTPUT_REG_WEIGHT") ;;
  lrdrop) CRITERION=(--criterion lr_drop_sentence_prediction --hidden-reg-weight "$HIDDEN_REG_WEIGHT"
                     --attn-reg-weight "$ATTN_REG_WEIGHT" --output-reg-weight "$OUTPUT_REG_WEIGHT") ;;
  *) die "MODE=$MODE: choose baseline, rdrop or lrdrop" ;;
esac
if [[ "$TASK" == STS-B ]]; then
  TARGET=(--regression-target --best-checkpoint-metric loss)
else
  TARGET=(--best-checkpoint-metric accuracy --maximize-best-checkpoint-metric)
fi
DEVICE=()
if [[ "$CPU" == 1 || ( "$CPU" == auto && $(detect_gpus) == 0 ) ]]; then DEVICE=(--cpu); fi
if [[ "$FP16" == 1 || ( "$FP16" == auto && ${#DEVICE[@]} == 0 ) ]]; then DEVICE+=(--fp16 --fp16-init-scale 4 --threshold-loss-scale 1 --fp16-scale-window 128); fi
RESTORE=()
[[ "$ROBERTA_PATH" == none ]] || RESTORE=(--restore-file "$ROBERTA_PATH")

mkdir -p "$SAVE_DIR"
cmd=("$PYTHON" -m fairseq_cli.train "$DATA_BIN" --user-dir "$REPO/fairseq_lrdrop"
  --task sentence_prediction --arch "lr_drop_$ARCH" --num-classes "$CLASSES" "${TARGET[@]}" "${CRITERION[@]}"
  --init-token 0 --separator-token 2 --max-positions 512 --shorten-method truncate
  "${RESTORE[@]}" --reset-optimizer --reset-dataloader --reset-meters
  --dropout "$DROPOUT" --attention-dropout "$ATTN_DROPOUT"
  --optimizer adam --adam-betas "(0.9,0.98)" --adam-eps 1e-06 --weight-decay "$WEIGHT_DECAY" --clip-norm 0.0
  --lr-scheduler polynomial_decay --lr "$LR" --total-num-update "$MAX_UPDATE" --warmup-updates "$WARMUP"
  --batch-size "$BATCH_SIZE" --max-tokens "$MAX_TOKENS" --required-batch-size-multiple 1
  --max-update "$MAX_UPDATE" --max-epoch "$MAX_EPOCH" --find-unused-parameters --no-epoch-checkpoints
  --seed "$SEED" --save-dir "$SAVE_DIR" --log-format json --log-interval 50 "${DEVICE[@]}")
# shellcheck disable=SC2206
[[ -z "$EXTRA_ARGS" ]] || cmd+=($EXTRA_ARGS)
printf '%q ' "${cmd[@]}" > "$SAVE_DIR/command.txt"
log "training $TASK ($MODE) -> $SAVE_DIR"
"${cmd[@]}" 2>&1 | tee "$SAVE_DIR/train.log"
