#!/usr/bin/env bash
# CNN/DailyMail for BART fine-tuning: GPT-2 BPE + fairseq-preprocess with BART's dictionary
# (fairseq's examples/bart/README.summarization.md recipe).
#
# Inputs:
#   RAW_DIR/{train,val,test}.{source,target}   one article / summary per line, untokenised,
#       cased (the layout of fairseq's BART README; make it with
#       https://github.com/abisee/cnn-dailymail or https://github.com/artmatsak/cnn-dailymail)
#   BPE_DIR/encoder.json, BPE_DIR/vocab.bpe    GPT-2 BPE, from
#       https://dl.fbaipublicfiles.com/fairseq/gpt2_bpe/encoder.json
#       https://dl.fbaipublicfiles.com/fairseq/gpt2_bpe/vocab.bpe
#   DICT (BART_DIR/dict.txt)                   BART's dictionary, in bart.large.tar.gz
#       (https://dl.fbaipublicfiles.com/fairseq/models/bart.large.tar.gz) or
#       https://dl.fbaipublicfiles.com/fairseq/gpt2_bpe/dict.txt (the same file)
# Nothing is downloaded by this script.
#
# Outputs (OUT_DIR):
#   bpe/{train,val,test}.bpe.{source,target}   GPT-2 BPE ids (multiprocessing_bpe_encoder)
#   data-bin/ (DATA_BIN)   fairseq binary data: train/valid/test, dict.source.txt ==
#                          dict.target.txt == DICT, plus test.raw.{source,target} (copies of
#                          the raw test files, used by evaluate.sh) and encoder.json/vocab.bpe
# Every step writes to a temporary name and renames it when complete; a rerun skips the
# finished steps (delete DATA_BIN to rebinarise).
#
# Environment knobs (default):
#   RAW_DIR=$REPO/data/cnndm/raw
#   BPE_DIR=$REPO/data/gpt2_bpe
#   BART_DIR=$REPO/data/bart.large     DICT=$BART_DIR/dict.txt
#   OUT_DIR=$REPO/data/cnndm           DATA_BIN=$OUT_DIR/data-bin
#   WORKERS=$(nproc)
#   PYTHON    interpreter with fairseq (default: $REPO/.venv/bin/python, else python3)
#
# Usage: RAW_DIR=~/cnn_dm BPE_DIR=~/gpt2_bpe BART_DIR=~/bart.large bash examples/cnndm/prepare.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
source "$REPO/examples/lib.sh"

RAW_DIR=${RAW_DIR:-$REPO/data/cnndm/raw}
BPE_DIR=${BPE_DIR:-$REPO/data/gpt2_bpe}
BART_DIR=${BART_DIR:-$REPO/data/bart.large}
DICT=${DICT:-$BART_DIR/dict.txt}
OUT_DIR=${OUT_DIR:-$REPO/data/cnndm}
DATA_BIN=${DATA_BIN:-$OUT_DIR/data-bin}
WORKERS=${WORKERS:-$(nproc 2>/dev/null || echo 1)}
nonneg_int WORKERS "$WORKERS"; (( WORKERS >= 1 )) || WORKERS=1

# ---- checks (before anything slow) -------------------------------------------------------
[[ -d "$RAW_DIR" ]] || die "RAW_DIR=$RAW_DIR does not exist: it must hold {train,val,test}.{source,target} (see the header of $0)"
for s in train val test; do
  for l in source target; do
    [[ -s "$RAW_DIR/$s.$l" ]] || die "missing raw file RAW_DIR/$s.$l (RAW_DIR=$RAW_DIR): it must hold {train,val,test}.{source,target}, one article/summary per line"
  done
  ns=$(wc -l < "$RAW_DIR/$s.source"); nt=$(wc -l < "$RAW_DIR/$s.target")
  [[ $ns == "$nt" ]] || die "RAW_DIR/$s.source has $ns lines but $s.target has $nt: articles and summaries must align line by line"
done
need_file "$BPE_DIR/encoder.json" "GPT-2 BPE: https://dl.fbaipublicfiles.com/fairseq/gpt2_bpe/encoder.json, or set BPE_DIR"
need_file "$BPE_DIR/vocab.bpe" "GPT-2 BPE: https://dl.fbaipublicfiles.com/fairseq/gpt2_bpe/vocab.bpe, or set BPE_DIR"
need_file "$DICT" "BART dictionary: dict.txt of bart.large.tar.gz (https://dl.fbaipublicfiles.com/fairseq/models/bart.large.tar.gz), or set BART_DIR / DICT"

if [[ -s "$DATA_BIN/.done" ]]; then
  log "skip: all steps done (found $DATA_BIN/.done; delete $DATA_BIN to rebuild)"
  echo "binarized data: $DATA_BIN"
  exit 0
fi

# ---- GPT-2 BPE ---------------------------------------------------------------------------
mkdir -p "$OUT_DIR/bpe"
for s in train val test; do
  # one encoder run per split, source and target together (aligned line by line)
  outs=("$OUT_DIR/bpe/$s.bpe.source" "$OUT_DIR/bpe/$s.bpe.target")
  if [[ -s "${outs[0]}" && -s "${outs[1]}" ]]; then log "skip: GPT-2 BPE of $s (found ${outs[*]})"; continue; fi
  log "GPT-2 BPE: $RAW_DIR/$s.{source,target} -> $OUT_DIR/bpe/$s.bpe.{source,target}"
  "$PYTHON" -m fairseq.examples.roberta.multiprocessing_bpe_encoder \
    --encoder-json "$BPE_DIR/encoder.json" --vocab-bpe "$BPE_DIR/vocab.bpe" \
    --inputs "$RAW_DIR/$s.source" "$RAW_DIR/$s.target" --outputs "${outs[0]}.tmp.$$" "${outs[1]}.tmp.$$" \
    --workers "$WORKERS" --keep-empty > "$OUT_DIR/bpe/$s.log" 2>&1 ||
    { tail -n 5 "$OUT_DIR/bpe/$s.log" >&2; rm -f "${outs[0]}.tmp.$$" "${outs[1]}.tmp.$$"; die "GPT-2 BPE encoding of $RAW_DIR/$s.* failed (log: $OUT_DIR/bpe/$s.log)"; }
  n_in=$(wc -l < "$RAW_DIR/$s.source")
  for o in "${outs[@]}"; do
    n_out=$(wc -l < "$o.tmp.$$")
    [[ $n_in == "$n_out" ]] || { rm -f "${outs[0]}.tmp.$$" "${outs[1]}.tmp.$$"; die "BPE output $o has $n_out lines for $n_in input lines"; }
  done
  mv -f "${outs[1]}.tmp.$$" "${outs[1]}"
  mv -f "${outs[0]}.tmp.$$" "${outs[0]}"
done

# ---- binarise with BART's dictionary -----------------------------------------------------
log "fairseq-preprocess (srcdict = tgtdict = $DICT) -> $DATA_BIN"
rm -rf "$DATA_BIN.tmp"
"$PYTHON" -m fairseq_cli.preprocess --source-lang source --target-lang target \
  --trainpref "$OUT_DIR/bpe/train.bpe" --validpref "$OUT_DIR/bpe/val.bpe" --testpref "$OUT_DIR/bpe/test.bpe" \
  --destdir "$DATA_BIN.tmp" --srcdict "$DICT" --tgtdict "$DICT" --workers "$WORKERS" \
  > "$OUT_DIR/preprocess.log" 2>&1 ||
  { tail -n 20 "$OUT_DIR/preprocess.log" >&2; die "fairseq-preprocess failed (log: $OUT_DIR/preprocess.log)"; }
[[ -s "$DATA_BIN.tmp/test.source-target.target.bin" ]] || die "fairseq-preprocess wrote no data (log: $OUT_DIR/preprocess.log)"
cp "$RAW_DIR/test.source" "$DATA_BIN.tmp/test.raw.source"
cp "$RAW_DIR/test.target" "$DATA_BIN.tmp/test.raw.target"
cp "$BPE_DIR/encoder.json" "$BPE_DIR/vocab.bpe" "$DATA_BIN.tmp/"
echo "DICT=$DICT $(date -u +%FT%TZ)" > "$DATA_BIN.tmp/.done"
rm -rf "$DATA_BIN"
mv "$DATA_BIN.tmp" "$DATA_BIN"

echo "binarized data: $DATA_BIN"
echo "GPT-2 BPE text: $OUT_DIR/bpe"
