#!/usr/bin/env bash
# Pre-train a small RoBERTa with fairseq's masked_lm task on the DDTP pre-training text
# (prepare-nlu.sh: English and German descriptions of packages in train of both NLU tasks),
# once; examples/ddtp/finetune.sh starts every fine-tuning run from its checkpoint. Blocks of
# MAX_POSITIONS tokens run across descriptions (--sample-break-mode none): with `complete`,
# every description longer than a block would be skipped (measured: 15,239 of 55,396, 27.5%).
#
# Inputs:  $DATA_DIR/bin/pretraining (examples/ddtp/prepare-nlu.sh)
# Outputs: $SAVE_DIR/checkpoint_last.pt (the checkpoint to fine-tune: the end of the schedule),
#          checkpoint_best.pt (lowest valid loss), train.log (JSON lines), command.txt,
#          trained (wall seconds; a rerun with this file present does nothing)
#
# Environment knobs (default):
#   DATA_DIR=data/ddtp-nlu   SAVE_DIR=runs/ddtp-nlu/pretrained
#   model: LAYERS=2 EMBED_DIM=128 FFN_DIM=512 HEADS=4 MAX_POSITIONS=128 (examples/ddtp/encoder.sh)
#   MAX_UPDATE=1500 WARMUP=150 LR=2e-3 MAX_TOKENS=4096 (polynomial decay to 0, Adam; about
#                            one epoch of the default data: sized for 2 CPU cores)
#   DROPOUT=0.1 MASK_PROB=0.15 SEED=1 THREADS=      (torch threads; empty: torch's default)
#   PYTHON=python (the venv's)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
source "$HERE/encoder.sh"
DATA_DIR="${DATA_DIR:-data/ddtp-nlu}"
SAVE_DIR="${SAVE_DIR:-runs/ddtp-nlu/pretrained}"
MAX_UPDATE="${MAX_UPDATE:-1500}" WARMUP="${WARMUP:-150}" LR="${LR:-2e-3}" MAX_TOKENS="${MAX_TOKENS:-4096}"
DROPOUT="${DROPOUT:-0.1}" MASK_PROB="${MASK_PROB:-0.15}" SEED="${SEED:-1}" THREADS="${THREADS:-}"
PYTHON="${PYTHON:-python}"

die() { echo "error: $*" >&2; exit 1; }
DATA_BIN="$DATA_DIR/bin/pretraining"
[[ -f "$DATA_BIN/dict.txt" && -f "$DATA_BIN/train.idx" ]] || die "$DATA_BIN/dict.txt or train.idx missing (run: bash examples/ddtp/prepare-nlu.sh, or set DATA_DIR)"
for knob in MAX_UPDATE WARMUP MAX_TOKENS SEED; do [[ "${!knob}" =~ ^[0-9]+$ ]] || die "$knob must be a whole number, got '${!knob}'"; done
if [[ -s "$SAVE_DIR/trained" && -f "$SAVE_DIR/checkpoint_last.pt" ]]; then
  echo "pre-trained model cached: $SAVE_DIR/checkpoint_last.pt"; exit 0
fi
[[ -z "$THREADS" ]] || export OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS"
DEVICE=()
[[ "$("$PYTHON" -c 'import torch; print(torch.cuda.is_available())')" == True ]] || DEVICE=(--cpu)

mkdir -p "$SAVE_DIR"
CMD=("$PYTHON" -m fairseq_cli.train "$DATA_BIN" --user-dir "$REPO/fairseq_lrdrop"
  --task masked_lm --criterion masked_lm --arch roberta "${ENCODER_ARGS[@]}"
  --sample-break-mode none --tokens-per-sample "$MAX_POSITIONS" --mask-prob "$MASK_PROB"
  --dropout "$DROPOUT" --attention-dropout "$DROPOUT"
  --optimizer adam --adam-betas '(0.9,0.98)' --adam-eps 1e-06 --weight-decay 0.01 --clip-norm 0.0
  --lr-scheduler polynomial_decay --lr "$LR" --warmup-updates "$WARMUP" --total-num-update "$MAX_UPDATE"
  --max-update "$MAX_UPDATE" --max-tokens "$MAX_TOKENS" --required-batch-size-multiple 1
  --skip-invalid-size-inputs-valid-test --no-epoch-checkpoints --num-workers 0 --seed "$SEED"
  --save-dir "$SAVE_DIR" --log-format json --log-interval 100 --log-file "$SAVE_DIR/train.log"
  "${DEVICE[@]}")
printf '%q ' "${CMD[@]}" > "$SAVE_DIR/command.txt"; echo >> "$SAVE_DIR/command.txt"
echo "pre-training (masked_lm, $MAX_UPDATE updates) on $DATA_BIN -> $SAVE_DIR"
start=$SECONDS
"${CMD[@]}" > "$SAVE_DIR/train.out" 2>&1 || { tail -n 20 "$SAVE_DIR/train.out" >&2; die "pre-training failed (log: $SAVE_DIR/train.out)"; }
[[ -f "$SAVE_DIR/checkpoint_last.pt" ]] || die "pre-training ended without $SAVE_DIR/checkpoint_last.pt (see $SAVE_DIR/train.out)"
echo $((SECONDS - start)) > "$SAVE_DIR/trained"
echo "pre-trained model: $SAVE_DIR/checkpoint_last.pt"
