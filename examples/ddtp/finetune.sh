#!/usr/bin/env bash
# Fine-tune the pre-trained small RoBERTa (examples/ddtp/pretrain.sh) on a DDTP NLU task, plain,
# with R-Drop or with LR-Drop, then score its best-valid checkpoint on the test split with
# examples/glue/evaluate.py (stock fairseq-validate cannot run sentence_prediction).
#
# Inputs:  $DATA_DIR/bin/$TASK-$SIZE (examples/ddtp/prepare-nlu.sh); $PRETRAINED (unless none)
# Outputs: $SAVE_DIR/checkpoint_best.pt (best valid accuracy), train.log (JSON lines),
#          command.txt, result.json ({task, size, mode, seed, weights, valid_accuracy,
#          test_accuracy, train_seconds, epochs}); a rerun with result.json present does nothing
#
# Environment knobs (default):
#   TASK=classification       classification (10 Debian sections) | architecture (all or any,
#                             from the synopsis) | pairs (En-De synopsis match)
#   SIZE=1000                 train-set size binarized by prepare-nlu.sh (1000, 10000, all)
#   MODE=lrdrop               baseline | rdrop | lrdrop
#   HIDDEN_REG_WEIGHT=0.01 ATTN_REG_WEIGHT=0.01 OUTPUT_REG_WEIGHT=1.0   alpha, beta, gamma
#                             (lr_drop_sentence_prediction's defaults, chosen on valid by
#                             bench/nlu_study.sh; README "Default weights")
#                             (rdrop: alpha = beta = 0; baseline: stock sentence_prediction)
#   DATA_DIR=data/ddtp-nlu    PRETRAINED=runs/ddtp-nlu/pretrained/checkpoint_last.pt
#                             (none: no pre-training, the same recipe from a random start)
#   SAVE_DIR=runs/ddtp-nlu/$TASK-$SIZE-$MODE-seed$SEED (runs/ddtp-nlu-scratch/... with
#                             PRETRAINED=none, so that a pre-trained run's result is not reused)
#   model: LAYERS=2 EMBED_DIM=128 FFN_DIM=512 HEADS=4 MAX_POSITIONS=128 (as pre-trained)
#   IMPORTED=                 a BERT-family model imported with fairseq_lrdrop.import_bert
#                             (--num-classes = this task's): its finetune_flags.txt replaces
#                             the model knobs and PRETRAINED, and pairs get no separator token
#                             ([CLS] a [SEP] b [SEP]); DATA_DIR must then hold data binarized
#                             with its dict.txt (examples/ddtp/nlu_bert.py)
#   MAX_EPOCH=10 BATCH_SIZE=32 LR=2e-4 WARMUP_RATIO=0.06 DROPOUT=0.1 SEED=1
#   THREADS=                  torch threads (empty: torch's default)
#   PYTHON=python (the venv's)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
source "$HERE/encoder.sh"
source "$HERE/record.sh"
TASK="${TASK:-classification}" SIZE="${SIZE:-1000}" MODE="${MODE:-lrdrop}"
HIDDEN_REG_WEIGHT="${HIDDEN_REG_WEIGHT:-0.01}" ATTN_REG_WEIGHT="${ATTN_REG_WEIGHT:-0.01}" OUTPUT_REG_WEIGHT="${OUTPUT_REG_WEIGHT:-1.0}"
DATA_DIR="${DATA_DIR:-data/ddtp-nlu}"
PRETRAINED="${PRETRAINED:-runs/ddtp-nlu/pretrained/checkpoint_last.pt}"
SEED="${SEED:-1}"
RUNS=runs/ddtp-nlu
[[ "$PRETRAINED" == none ]] && RUNS=runs/ddtp-nlu-scratch
SAVE_DIR="${SAVE_DIR:-$RUNS/$TASK-$SIZE-$MODE-seed$SEED}"
MAX_EPOCH="${MAX_EPOCH:-10}" BATCH_SIZE="${BATCH_SIZE:-32}" LR="${LR:-2e-4}" WARMUP_RATIO="${WARMUP_RATIO:-0.06}"
DROPOUT="${DROPOUT:-0.1}" THREADS="${THREADS:-}" PYTHON="${PYTHON:-python}" IMPORTED="${IMPORTED:-}"

die() { echo "error: $*" >&2; exit 1; }
case "$TASK" in classification|architecture|pairs) ;; *) die "TASK=$TASK: choose classification, architecture or pairs" ;; esac
case "$MODE" in
  baseline) CRITERION=(--criterion sentence_prediction); HIDDEN_REG_WEIGHT=0 ATTN_REG_WEIGHT=0 OUTPUT_REG_WEIGHT=0 ;;
  rdrop) HIDDEN_REG_WEIGHT=0 ATTN_REG_WEIGHT=0 ;;
  lrdrop) ;;
  *) die "MODE=$MODE: choose baseline, rdrop or lrdrop" ;;
esac
[[ "$MODE" == baseline ]] || CRITERION=(--criterion lr_drop_sentence_prediction --hidden-reg-weight "$HIDDEN_REG_WEIGHT"
  --attn-reg-weight "$ATTN_REG_WEIGHT" --output-reg-weight "$OUTPUT_REG_WEIGHT")
for knob in HIDDEN_REG_WEIGHT ATTN_REG_WEIGHT OUTPUT_REG_WEIGHT LR WARMUP_RATIO DROPOUT; do
  [[ "${!knob}" =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] || die "$knob must be a number, got '${!knob}'"
done
for knob in MAX_EPOCH BATCH_SIZE SEED; do [[ "${!knob}" =~ ^[1-9][0-9]*$|^0$ ]] || die "$knob must be a whole number, got '${!knob}'"; done
DATA_BIN="$DATA_DIR/bin/$TASK-$SIZE"
[[ -f "$DATA_BIN/label/dict.txt" && -f "$DATA_BIN/input0/train.idx" ]] || die "$DATA_BIN/input0 or label missing (run: TRAIN_SIZES=\"... $SIZE\" bash examples/ddtp/prepare-nlu.sh, or set DATA_DIR)"
[[ -n "$IMPORTED" || "$PRETRAINED" == none || -s "$PRETRAINED" ]] || die "PRETRAINED=$PRETRAINED missing (run: bash examples/ddtp/pretrain.sh, or PRETRAINED=none)"
[[ -z "$IMPORTED" || -s "$IMPORTED/finetune_flags.txt" ]] || die "IMPORTED=$IMPORTED has no finetune_flags.txt (run: python -m fairseq_lrdrop.import_bert MODEL_DIR $IMPORTED --num-classes N)"
RESTORE=(--restore-file "$PRETRAINED")
[[ "$PRETRAINED" == none ]] && RESTORE=()
if [[ -s "$SAVE_DIR/result.json" ]]; then cat "$SAVE_DIR/result.json"; exit 0; fi
[[ -z "$THREADS" ]] || export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"

# fairseq-preprocess pads a dictionary with "madeupword" entries unless --padding-factor 1
CLASSES=$(grep -vc '^madeupword' "$DATA_BIN/label/dict.txt")
TRAIN_EXAMPLES=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["train"])' "$DATA_DIR/bin/stats.json" "$TASK-$SIZE")
TOTAL_UPDATES=$(( (TRAIN_EXAMPLES + BATCH_SIZE - 1) / BATCH_SIZE * MAX_EPOCH ))
WARMUP=$("$PYTHON" -c "print(max(1, int($TOTAL_UPDATES * $WARMUP_RATIO)))")
DEVICE=()
[[ "$("$PYTHON" -c 'import torch; print(torch.cuda.is_available())')" == True ]] || DEVICE=(--cpu)

if [[ -n "$IMPORTED" ]]; then
  read -ra MODEL < "$IMPORTED/finetune_flags.txt"   # --restore-file, --arch and its shapes, --task, --num-classes
  [[ " ${MODEL[*]} " == *" --num-classes $CLASSES "* ]] || die "IMPORTED=$IMPORTED was imported for another number of classes than $DATA_BIN/label's $CLASSES (rerun the import with --num-classes $CLASSES)"
else
  MODEL=(--task sentence_prediction --arch lr_drop_roberta "${ENCODER_ARGS[@]}" --num-classes "$CLASSES"
    --init-token 0 --separator-token 2 "${RESTORE[@]}" --reset-optimizer --reset-dataloader --reset-meters)
fi

rm -rf "$SAVE_DIR"; mkdir -p "$SAVE_DIR"
CMD=("$PYTHON" -m fairseq_cli.train "$DATA_BIN" --user-dir "$REPO/fairseq_lrdrop"
  "${MODEL[@]}" --reset-lr-scheduler --shorten-method truncate "${CRITERION[@]}"
  --dropout "$DROPOUT" --attention-dropout "$DROPOUT"
  --optimizer adam --adam-betas '(0.9,0.98)' --adam-eps 1e-06 --weight-decay 0.1 --clip-norm 0.0
  --lr-scheduler polynomial_decay --lr "$LR" --warmup-updates "$WARMUP" --total-num-update "$TOTAL_UPDATES"
  --batch-size "$BATCH_SIZE" --required-batch-size-multiple 1 --max-epoch "$MAX_EPOCH"
  --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric
  --no-epoch-checkpoints --no-last-checkpoints --num-workers 0 --seed "$SEED"
  --save-dir "$SAVE_DIR" --log-format json --log-interval 100 --log-file "$SAVE_DIR/train.log"
  "${DEVICE[@]}")
train_in_save_dir "${CMD[@]}"
# test accuracy through the checkpoint loader (stock fairseq-validate cannot run
# sentence_prediction: its parser has no criterion, and the task's classification_head_name
# interpolates the criterion's)
CPU_FLAG=()
[[ ${#DEVICE[@]} == 0 ]] || CPU_FLAG=(--cpu)
"$PYTHON" "$REPO/examples/glue/evaluate.py" --checkpoint "$SAVE_DIR/checkpoint_best.pt" --data-bin "$DATA_BIN" \
  --task other --split test "${CPU_FLAG[@]}" > "$SAVE_DIR/test.json" 2> "$SAVE_DIR/test.out" \
  || { tail -n 20 "$SAVE_DIR/test.out" >&2; die "scoring the test split failed (log: $SAVE_DIR/test.out)"; }
"$PYTHON" "$HERE/result.py" finetune "$SAVE_DIR" "$TASK" "$SIZE" "$MODE" "$SEED" \
  "$HIDDEN_REG_WEIGHT,$ATTN_REG_WEIGHT,$OUTPUT_REG_WEIGHT" "$TRAIN_SECONDS"
