#!/usr/bin/env bash
# Summarise the CNN/DailyMail test set with a fine-tuned BART and score it with ROUGE.
#
#   1. fairseq-generate on the binarized test split (the same truncated source the model was
#      trained on), BART's CNN/DM decoding: beam 4, lenpen 2.0, max-len-b 140, min-len 55,
#      no-repeat-ngram 3; GPT-2 BPE decoded by fairseq (--bpe gpt2); and
#      --required-batch-size-multiple 1 (fairseq's default 8 silently drops the last batch when
#      its size is not a multiple of 8: fairseq issue #5036)
#   2. ROUGE-1/2/L with the rouge-score package (examples/cnndm/rouge.py), plus the files
#      files2rouge expects, for the exact ROUGE-1.5.5 numbers of the papers.
#
# Inputs : DATA_BIN (examples/cnndm/prepare.sh: test split, test.raw.target, encoder.json,
#          vocab.bpe), CHECKPOINT (default SAVE_DIR/checkpoint_best.pt)
# Outputs: OUT_DIR/generate-test.txt          raw fairseq-generate output (+ .cmd: its command line)
#          OUT_DIR/test.hypo                  one summary per line, in test order
#          OUT_DIR/test.target                reference summaries (raw)
#          OUT_DIR/test.{hypo,target}.tokenized  PTB-tokenised, lowercased (files2rouge input)
#          OUT_DIR/rouge.txt, rouge.json
# Generation is skipped on a rerun when generate-test.txt exists, is newer than the
# checkpoint and was made by the same fairseq-generate command line (kept in
# generate-test.txt.cmd): other decoding settings (BEAM, LENPEN, MIN_LEN, MAX_LEN_B,
# NO_REPEAT_NGRAM, EXTRA_ARGS...) generate again. It is written to a temporary file and renamed.
#
# Environment knobs (default):
#   DATA_BIN=$REPO/data/cnndm/data-bin
#   SAVE_DIR=$REPO/checkpoints/cnndm_lr_drop_bart_large_lrdrop
#   CHECKPOINT=$SAVE_DIR/checkpoint_best.pt
#   OUT_DIR=$SAVE_DIR/eval_test_<checkpoint name>
#   BPE_DIR=$DATA_BIN (encoder.json, vocab.bpe)
#   BEAM=4 LENPEN=2.0 MAX_LEN_B=140 MIN_LEN=55 NO_REPEAT_NGRAM=3
#   BATCH_SIZE=32                sentences per generation batch
#   USER_DIR=$REPO/fairseq_lrdrop plugin dir (needed for lr_drop_* archs); empty = stock
#   FP16=1 (--fp16 on GPU)  NUM_GPUS (overrides detection; generation uses one GPU)
#   EXTRA_ARGS                   appended to the fairseq-generate command line
#   PYTHON                       interpreter with fairseq
#
# Usage: SAVE_DIR=checkpoints/cnndm_lr_drop_bart_large_lrdrop bash examples/cnndm/evaluate.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
source "$REPO/examples/lib.sh"

DATA_BIN=${DATA_BIN:-$REPO/data/cnndm/data-bin}
SAVE_DIR=${SAVE_DIR:-$REPO/checkpoints/cnndm_lr_drop_bart_large_lrdrop}
CHECKPOINT=${CHECKPOINT:-$SAVE_DIR/checkpoint_best.pt}
BPE_DIR=${BPE_DIR:-$DATA_BIN}
BEAM=${BEAM:-4}
LENPEN=${LENPEN:-2.0}
MAX_LEN_B=${MAX_LEN_B:-140}
MIN_LEN=${MIN_LEN:-55}
NO_REPEAT_NGRAM=${NO_REPEAT_NGRAM:-3}
BATCH_SIZE=${BATCH_SIZE:-32}
USER_DIR=${USER_DIR-$REPO/fairseq_lrdrop}
FP16=${FP16:-1}
EXTRA_ARGS=${EXTRA_ARGS:-}

nonneg_int BEAM "$BEAM"; number LENPEN "$LENPEN"; nonneg_int MAX_LEN_B "$MAX_LEN_B"
nonneg_int MIN_LEN "$MIN_LEN"; nonneg_int NO_REPEAT_NGRAM "$NO_REPEAT_NGRAM"; nonneg_int BATCH_SIZE "$BATCH_SIZE"
check_user_dir

[[ -d "$DATA_BIN" ]] || die "DATA_BIN=$DATA_BIN does not exist: run examples/cnndm/prepare.sh first"
for f in dict.source.txt dict.target.txt test.source-target.source.idx test.source-target.target.idx; do
  [[ -s "$DATA_BIN/$f" ]] || die "DATA_BIN=$DATA_BIN lacks $f: it is not a binarized CNN/DM data dir (run examples/cnndm/prepare.sh)"
done
REF=$DATA_BIN/test.raw.target
[[ -s "$REF" ]] || die "DATA_BIN lacks the raw reference $REF: rerun examples/cnndm/prepare.sh (it copies test.target there)"
need_file "$BPE_DIR/encoder.json" "GPT-2 BPE; set BPE_DIR"
need_file "$BPE_DIR/vocab.bpe" "GPT-2 BPE; set BPE_DIR"
[[ -s "$CHECKPOINT" ]] || die "checkpoint $CHECKPOINT not found: train first (examples/cnndm/train.sh) or set CHECKPOINT / SAVE_DIR"

OUT_DIR=${OUT_DIR:-$SAVE_DIR/eval_test_$(basename "$CHECKPOINT" .pt)}
mkdir -p "$OUT_DIR"

NGPU=$(detect_gpus)
DEVICE_ARGS=()
if (( NGPU == 0 )); then DEVICE_ARGS+=(--cpu); elif [[ $FP16 == 1 ]]; then DEVICE_ARGS+=(--fp16); fi
mapfile -t UD < <(user_dir_args)
read -r -a EXTRA <<< "$EXTRA_ARGS"  # split on whitespace, no globbing, no quoting
GEN=$OUT_DIR/generate-test.txt
log "fairseq-generate $CHECKPOINT on test (beam $BEAM, lenpen $LENPEN, min-len $MIN_LEN, max-len-b $MAX_LEN_B, no-repeat-ngram $NO_REPEAT_NGRAM)"
generate_once "$GEN" "$OUT_DIR/generate.log" "$CHECKPOINT" \
  "$PYTHON" -m fairseq_cli.generate "$DATA_BIN" "${UD[@]}" --task translation \
  --source-lang source --target-lang target --truncate-source --gen-subset test \
  --path "$CHECKPOINT" --beam "$BEAM" --lenpen "$LENPEN" --max-len-a 0 --max-len-b "$MAX_LEN_B" \
  --min-len "$MIN_LEN" --no-repeat-ngram-size "$NO_REPEAT_NGRAM" \
  --batch-size "$BATCH_SIZE" --required-batch-size-multiple 1 \
  --bpe gpt2 --gpt2-encoder-json "$BPE_DIR/encoder.json" --gpt2-vocab-bpe "$BPE_DIR/vocab.bpe" \
  "${DEVICE_ARGS[@]}" "${EXTRA[@]}"

# D- lines: detokenised (GPT-2 BPE decoded) hypotheses; put them back in test order
awk -F'\t' '/^D-[0-9]+\t/ { id = substr($1, 3); print id "\t" $3 }' "$GEN" | sort -n -k1,1 | cut -f2- > "$OUT_DIR/test.hypo.tmp.$$"
mv -f "$OUT_DIR/test.hypo.tmp.$$" "$OUT_DIR/test.hypo"
cp "$REF" "$OUT_DIR/test.target.tmp.$$" && mv -f "$OUT_DIR/test.target.tmp.$$" "$OUT_DIR/test.target"
nh=$(wc -l < "$OUT_DIR/test.hypo"); nr=$(wc -l < "$OUT_DIR/test.target")
[[ $nh == "$nr" ]] || die "generation produced $nh summaries for $nr references (see $GEN)"

echo "checkpoint: $CHECKPOINT"
"$PYTHON" "$HERE/rouge.py" --hyp "$OUT_DIR/test.hypo" --ref "$OUT_DIR/test.target" --out-dir "$OUT_DIR"
echo "outputs written to: $OUT_DIR (test.hypo, test.target, test.hypo.tokenized, test.target.tokenized, rouge.txt, rouge.json)"
