#!/usr/bin/env bash
# Evaluate a WMT14 model on newstest2014 with the published protocol.
#
#   1. average the last AVG_LAST checkpoints of SAVE_DIR (examples/average_checkpoints.py;
#      update checkpoints checkpoint_<epoch>_<update>.pt, else epoch checkpoints; with fewer
#      available, all of them; with none, checkpoint_last.pt). CHECKPOINT=path skips this.
#   2. fairseq-generate, beam BEAM=4, length penalty LENPEN=0.6, --post-process sentencepiece,
#      --required-batch-size-multiple 1 (with fairseq's default of 8, batch_by_size silently
#      drops the last batch when its size is not a multiple of 8: fairseq issue #5036)
#   3. Moses detokenisation of the output (sacremoses)
#   4. scores (examples/wmt14/score.py):
#      (a) tokenized BLEU with compound splitting: hypothesis and raw reference are Moses-
#          tokenised, hyphens split as " ##AT##-##AT## " (examples/compound_split.py), BLEU with
#          sacrebleu tokenize='none' -- the number the WMT14 papers (Vaswani et al., Ott et al.,
#          R-Drop) report;
#      (b) sacreBLEU on the detokenised output with its signature (compare with this one).
#
# Inputs : DATA_BIN (examples/wmt14/prepare.sh; needs test.raw.<tgt>), SAVE_DIR (train.sh)
# Outputs: OUT_DIR/generate-test.txt  raw fairseq-generate output (+ .cmd: its command line)
#          OUT_DIR/hyp.spm-decoded     hypotheses in test order (Moses-tokenised, as trained)
#          OUT_DIR/hyp.detok           detokenised hypotheses (what sacreBLEU scores)
#          OUT_DIR/{hyp,ref}.tok, {hyp,ref}.atat  tokenised / compound-split text
#          OUT_DIR/bleu.txt, bleu.json  both scores and the sacreBLEU signature
#          SAVE_DIR/checkpoint.avg<N>.pt  the averaged model (+ .inputs: the averaged files)
# Each step is skipped on a rerun when its output exists and is newer than its input;
# generation also needs the same command line (kept in generate-<subset>.txt.cmd), so a rerun
# with other decoding settings (BEAM, LENPEN, MAX_LEN_*, EXTRA_ARGS...) generates again.
#
# Environment knobs (default):
#   PAIR=en-de               en-de | en-fr
#   DATA_BIN=$REPO/data/wmt14_<src>_<tgt>/data-bin
#   SAVE_DIR=$REPO/checkpoints/wmt14_<pair>_base_lrdrop
#   AVG_LAST=5               checkpoints to average (0 = no averaging: checkpoint_best.pt)
#   CHECKPOINT               explicit checkpoint to evaluate (skips averaging)
#   OUT_DIR=$SAVE_DIR/eval_<subset>_<checkpoint name>
#   GEN_SUBSET=test          binarized split to translate
#   BEAM=4 LENPEN=0.6 MAX_LEN_A=1 MAX_LEN_B=50 (max output length = A * src_len + B subword
#                            tokens; Vaswani et al.: input length + 50)
#   GEN_MAX_TOKENS=8000      batch size of generation in tokens
#   USER_DIR=$REPO/fairseq_lrdrop   plugin dir (needed for lr_drop_* archs); empty = stock
#   FP16=1                   --fp16 on GPU
#   NUM_GPUS                 overrides GPU detection (0 = CPU); generation uses one GPU
#   EXTRA_ARGS               appended to the fairseq-generate command line
#   PYTHON                   interpreter with fairseq
#
# Usage: SAVE_DIR=checkpoints/wmt14_en-de_big_lrdrop AVG_LAST=10 bash examples/wmt14/evaluate.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
source "$REPO/examples/lib.sh"

PAIR=${PAIR:-en-de}
case "$PAIR" in en-de|en-fr) SRC=en; TGT=${PAIR#en-} ;; *) die "unknown PAIR='$PAIR': use PAIR=en-de or PAIR=en-fr" ;; esac
DATA_BIN=${DATA_BIN:-$REPO/data/wmt14_${SRC}_${TGT}/data-bin}
SAVE_DIR=${SAVE_DIR:-$REPO/checkpoints/wmt14_${PAIR}_base_lrdrop}
AVG_LAST=${AVG_LAST:-5}
CHECKPOINT=${CHECKPOINT:-}
GEN_SUBSET=${GEN_SUBSET:-test}
BEAM=${BEAM:-4}
LENPEN=${LENPEN:-0.6}
MAX_LEN_A=${MAX_LEN_A:-1}
MAX_LEN_B=${MAX_LEN_B:-50}
GEN_MAX_TOKENS=${GEN_MAX_TOKENS:-8000}
USER_DIR=${USER_DIR-$REPO/fairseq_lrdrop}
FP16=${FP16:-1}
EXTRA_ARGS=${EXTRA_ARGS:-}

nonneg_int AVG_LAST "$AVG_LAST"; nonneg_int BEAM "$BEAM"; nonneg_int GEN_MAX_TOKENS "$GEN_MAX_TOKENS"
number LENPEN "$LENPEN"; number MAX_LEN_A "$MAX_LEN_A"; nonneg_int MAX_LEN_B "$MAX_LEN_B"
check_user_dir

[[ -d "$DATA_BIN" ]] || die "DATA_BIN=$DATA_BIN does not exist: run examples/wmt14/prepare.sh (PAIR=$PAIR) first"
for f in dict.$SRC.txt dict.$TGT.txt $GEN_SUBSET.$SRC-$TGT.$SRC.idx $GEN_SUBSET.$SRC-$TGT.$TGT.idx; do
  [[ -s "$DATA_BIN/$f" ]] || die "DATA_BIN=$DATA_BIN lacks $f: it is not a binarized $PAIR data dir (run examples/wmt14/prepare.sh with PAIR=$PAIR)"
done
REF=$DATA_BIN/$GEN_SUBSET.raw.$TGT
[[ -s "$REF" ]] || die "DATA_BIN lacks the raw reference $REF: rerun examples/wmt14/prepare.sh (it copies test.raw.$TGT into DATA_BIN)"

# ---- 1. checkpoint ---------------------------------------------------------------------
if [[ -n "$CHECKPOINT" ]]; then
  [[ -s "$CHECKPOINT" ]] || die "CHECKPOINT=$CHECKPOINT not found"
  CKPT=$CHECKPOINT
else
  [[ -d "$SAVE_DIR" ]] || die "SAVE_DIR=$SAVE_DIR does not exist: train first (examples/wmt14/train.sh) or set CHECKPOINT"
  if (( AVG_LAST == 0 )); then
    CKPT=$SAVE_DIR/checkpoint_best.pt
    [[ -s "$CKPT" ]] || die "no checkpoint_best.pt in SAVE_DIR=$SAVE_DIR: train first or set CHECKPOINT"
  else
    mapfile -t SEL < <("$PYTHON" "$REPO/examples/average_checkpoints.py" --inputs "$SAVE_DIR" --auto "$AVG_LAST" --list-only 2>/dev/null || true)
    if (( ${#SEL[@]} == 0 )); then
      [[ -s "$SAVE_DIR/checkpoint_last.pt" ]] || die "no checkpoints in SAVE_DIR=$SAVE_DIR: train first (examples/wmt14/train.sh) or set CHECKPOINT"
      log "warning: no interval/epoch checkpoints to average in $SAVE_DIR; using checkpoint_last.pt"
      CKPT=$SAVE_DIR/checkpoint_last.pt
    else
      (( ${#SEL[@]} < AVG_LAST )) && log "warning: only ${#SEL[@]} checkpoint(s) available, averaging those"
      CKPT=$SAVE_DIR/checkpoint.avg$AVG_LAST.pt
      if [[ -s "$CKPT" && -s "$CKPT.inputs" ]] && diff -q <(printf '%s\n' "${SEL[@]}") "$CKPT.inputs" >/dev/null; then
        log "skip: averaging (found $CKPT of the same ${#SEL[@]} checkpoints)"
      else
        log "averaging ${#SEL[@]} checkpoints -> $CKPT"
        "$PYTHON" "$REPO/examples/average_checkpoints.py" --inputs "${SEL[@]}" --output "$CKPT" >/dev/null
        printf '%s\n' "${SEL[@]}" > "$CKPT.inputs.tmp.$$" && mv -f "$CKPT.inputs.tmp.$$" "$CKPT.inputs"
      fi
    fi
  fi
fi
CK_NAME=$(basename "$CKPT" .pt)
OUT_DIR=${OUT_DIR:-$SAVE_DIR/eval_${GEN_SUBSET}_${CK_NAME}}
mkdir -p "$OUT_DIR"

# ---- 2. generate -----------------------------------------------------------------------
NGPU=$(detect_gpus)
DEVICE_ARGS=()
if (( NGPU == 0 )); then DEVICE_ARGS+=(--cpu); elif [[ $FP16 == 1 ]]; then DEVICE_ARGS+=(--fp16); fi
mapfile -t UD < <(user_dir_args)
read -r -a EXTRA <<< "$EXTRA_ARGS"  # split on whitespace, no globbing, no quoting
GEN=$OUT_DIR/generate-$GEN_SUBSET.txt
log "fairseq-generate $CKPT on $GEN_SUBSET (beam $BEAM, lenpen $LENPEN)"
generate_once "$GEN" "$OUT_DIR/generate.log" "$CKPT" \
  "$PYTHON" -m fairseq_cli.generate "$DATA_BIN" "${UD[@]}" --task translation \
  --source-lang "$SRC" --target-lang "$TGT" --gen-subset "$GEN_SUBSET" --path "$CKPT" \
  --beam "$BEAM" --lenpen "$LENPEN" --max-len-a "$MAX_LEN_A" --max-len-b "$MAX_LEN_B" \
  --max-tokens "$GEN_MAX_TOKENS" --required-batch-size-multiple 1 --post-process sentencepiece \
  "${DEVICE_ARGS[@]}" "${EXTRA[@]}"

# ---- 3. hypotheses in test order, detokenised ------------------------------------------
HYP=$OUT_DIR/hyp.spm-decoded
if [[ ! -s "$HYP" || "$GEN" -nt "$HYP" ]]; then
  awk -F'\t' '/^H-[0-9]+\t/ { id = substr($1, 3); print id "\t" $3 }' "$GEN" | sort -n -k1,1 | cut -f2- > "$HYP.tmp.$$"
  mv -f "$HYP.tmp.$$" "$HYP"
fi
nh=$(wc -l < "$HYP"); nr=$(wc -l < "$REF")
[[ $nh == "$nr" ]] || die "generation produced $nh hypotheses for $nr reference lines (see $GEN; too long inputs are skipped)"
if [[ ! -s "$OUT_DIR/hyp.detok" || "$HYP" -nt "$OUT_DIR/hyp.detok" ]]; then
  "$PYTHON" "$HERE/textproc.py" detok --lang "$TGT" --input "$HYP" --output "$OUT_DIR/hyp.detok" 2>/dev/null
fi

# ---- 4. scores -------------------------------------------------------------------------
echo "checkpoint: $CKPT"
"$PYTHON" "$HERE/score.py" --hyp "$OUT_DIR/hyp.detok" --ref "$REF" --lang "$TGT" --out-dir "$OUT_DIR"
echo "outputs written to: $OUT_DIR (generate-$GEN_SUBSET.txt, hyp.detok, bleu.txt, bleu.json)"
