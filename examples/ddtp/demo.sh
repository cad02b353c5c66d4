#!/usr/bin/env bash
# CPU demo (what `make demo` runs): fetch Debian's package descriptions and their German
# translations (DDTP) with apt, train a small LR-Drop Transformer En->De for a fixed time
# budget (CPU, or the GPU when torch sees one), translate the test split and print its
# sacreBLEU and a few example translations.
#
# Sized for `make demo` on a 2-core machine: about 1 minute of data preparation, DEMO_MINUTES
# of training, about 1 minute of decoding. Short segments only (<= DEMO_MAX_WORDS words per
# side), a 4k sentencepiece vocabulary and a 2+2-layer, 128-dim model; the BLEU is that of a
# few-minute model, far from converged (scale the knobs below for a real run).
#
# Inputs:  network access through apt (or DDTP_INDEX_DIR, see prepare.sh)
# Outputs: $DATA_DIR (data), $SAVE_DIR (checkpoints, train.log, eval-test-*/ hyp/ref/score)
#
# Environment knobs (default):
#   DATA_DIR=data/ddtp-demo   data directory (indexes are cached: a rerun does not fetch)
#   SAVE_DIR=runs/ddtp-demo/$MODE
#   MODE=lrdrop               baseline | rdrop | lrdrop
#   DEMO_MINUTES=7            training time budget (fairseq --stop-time-hours)
#   DEMO_MAX_WORDS=20         longest segment kept (words per side)
#   DEMO_VOCAB=4000           sentencepiece vocabulary
#   DEMO_TEST=500 DEMO_VALID=300   test / valid pairs (counts)
#   ENCODER_LAYERS=2 DECODER_LAYERS=2 EMBED_DIM=128 FFN_DIM=512 HEADS=4 DROPOUT=0.1 ATTN_DROPOUT=0.0
#   LR=2e-3 WARMUP=200 MAX_TOKENS=1024 MAX_EPOCH=100 (the time budget ends it first)
#   NUM_WORKERS=0 LOG_INTERVAL=50
#   HIDDEN_REG_WEIGHT=0.1 ATTN_REG_WEIGHT=0.1 OUTPUT_REG_WEIGHT=1.0
#   BEAM=4                    decoding beam
#   (any other train.sh / evaluate.sh / prepare.sh knob passes through)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export MODE="${MODE:-lrdrop}"
export DATA_DIR="${DATA_DIR:-data/ddtp-demo}"
export SAVE_DIR="${SAVE_DIR:-runs/ddtp-demo/$MODE}"
DEMO_MINUTES="${DEMO_MINUTES:-7}"
export TASK=translation TASKS=translation
export MAX_WORDS="${DEMO_MAX_WORDS:-20}"
export SPM_VOCAB="${DEMO_VOCAB:-4000}"
export TEST_SIZE="${DEMO_TEST:-500}" VALID_SIZE="${DEMO_VALID:-300}"
export ENCODER_LAYERS="${ENCODER_LAYERS:-2}" DECODER_LAYERS="${DECODER_LAYERS:-2}"
export EMBED_DIM="${EMBED_DIM:-128}" FFN_DIM="${FFN_DIM:-512}" HEADS="${HEADS:-4}"
export DROPOUT="${DROPOUT:-0.1}" ATTN_DROPOUT="${ATTN_DROPOUT:-0.0}"
export LR="${LR:-2e-3}" WARMUP="${WARMUP:-200}" MAX_TOKENS="${MAX_TOKENS:-1024}"
export NUM_WORKERS="${NUM_WORKERS:-0}"
export MAX_EPOCH="${MAX_EPOCH:-100}"
export HIDDEN_REG_WEIGHT="${HIDDEN_REG_WEIGHT:-0.1}" ATTN_REG_WEIGHT="${ATTN_REG_WEIGHT:-0.1}"
export OUTPUT_REG_WEIGHT="${OUTPUT_REG_WEIGHT:-1.0}"
export BEAM="${BEAM:-4}" LOG_INTERVAL="${LOG_INTERVAL:-50}"
export STOP_TIME_HOURS
STOP_TIME_HOURS="$(python -c "import sys; print(round(float(sys.argv[1]) / 60, 4))" "$DEMO_MINUTES")" \
  || { echo "error: DEMO_MINUTES=$DEMO_MINUTES is not a number" >&2; exit 1; }
case "$MODE" in baseline|rdrop|lrdrop) ;; *) echo "error: unknown MODE '$MODE' (use baseline, rdrop or lrdrop)" >&2; exit 1;; esac

start=$SECONDS
echo "=== [1/3] data: DDTP En-De (segments <= $MAX_WORDS words, spm vocab $SPM_VOCAB) -> $DATA_DIR"
bash "$HERE/prepare.sh"
t_prep=$((SECONDS - start))
echo "=== [2/3] training $MODE for up to $DEMO_MINUTES min ($ENCODER_LAYERS+$DECODER_LAYERS layers, dim $EMBED_DIM) -> $SAVE_DIR"
# a rerun trains afresh rather than resuming a finished time budget
rm -f "$SAVE_DIR"/checkpoint_*.pt "$SAVE_DIR"/checkpoint[0-9]*.pt
bash "$HERE/train.sh" 2>&1 | grep --line-buffered -E '\| (train_inner|train|valid) \||done training|error|Error|checkpoints:' || true
[[ -f "$SAVE_DIR/checkpoint_best.pt" ]] || { echo "error: training produced no $SAVE_DIR/checkpoint_best.pt (log: $SAVE_DIR/train.log)" >&2; exit 1; }
t_train=$((SECONDS - start - t_prep))
echo "=== [3/3] translating the test split"
bash "$HERE/evaluate.sh"
echo "=== demo done in $((SECONDS - start)) s (data $t_prep s, training $t_train s, decoding $((SECONDS - start - t_prep - t_train)) s)"
