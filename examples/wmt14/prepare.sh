#!/usr/bin/env bash
# WMT14 En-De / En-Fr data preparation (the standard recipe behind the published WMT14
# numbers: Vaswani et al. 2017, Ott et al. 2018, R-Drop, LR-Drop).
#
#   train  En-De: europarl v7 + commoncrawl + news-commentary v9   (~4.5M pairs)
#          En-Fr: europarl v7 + commoncrawl + UN + news-commentary v9 + giga-fren (~36M pairs)
#   valid  newstest2013            test  newstest2014 (the full set: 3003 En-De sentences)
#
# Steps (each one is skipped on a rerun when its output exists; every output is written
# to a temporary name and renamed when complete, so a half-written file is never reused):
#   1. download + extract the archives into RAW_DIR (only when DOWNLOAD=1 and files are missing)
#   2. Moses punctuation normalisation, non-printing-char removal and tokenisation
#      (sacremoses, aggressive hyphen splitting "@-@", no XML escaping), as fairseq's
#      prepare-wmt14en2de.sh does with the Moses perl scripts
#   3. cleaning of the training pairs: 1..CLEAN_MAX tokens per side, length ratio <= CLEAN_RATIO
#      (the rule of Moses clean-corpus-n.perl)
#   4. a JOINT sentencepiece model (SPM_TYPE, SPM_VOCAB pieces) trained on the cleaned,
#      tokenised training text of both languages; applied to train/valid/test
#   5. fairseq-preprocess --joined-dictionary (needed for --share-all-embeddings)
#
# Notes on the protocol:
#   * Subwords come from sentencepiece (not subword-nmt BPE as in fairseq's script).
#     Training text is Moses-tokenised first, so the model emits Moses-tokenised text;
#     evaluate.sh decodes the pieces (--post-process sentencepiece) and detokenises.
#   * Tokenized BLEU with compound splitting (the number papers report for WMT14) is
#     computed by evaluate.sh on the Moses-tokenised detokenised output against the
#     Moses-tokenised raw reference, hyphens split as " ##AT##-##AT## " on both sides
#     (as tensor2tensor's get_ende_bleu.sh). sacreBLEU on the detokenised output is
#     reported next to it and is the number to compare with other work.
#   * The test reference kept for scoring (DATA_BIN/test.raw.TGT) is the raw newstest2014
#     text from the .sgm file, without normalisation.
#
# Inputs: the WMT archives below (downloaded) or, with RAW_DIR, the extracted files:
#   En-De: training/europarl-v7.de-en.{en,de}  commoncrawl.de-en.{en,de}
#          training/news-commentary-v9.de-en.{en,de}  dev/newstest2013.{en,de}
#          test-full/newstest2014-deen-src.en.sgm  test-full/newstest2014-deen-ref.de.sgm
#   En-Fr: training/europarl-v7.fr-en.{en,fr}  commoncrawl.fr-en.{en,fr}
#          un/undoc.2000.fr-en.{en,fr}  training/news-commentary-v9.fr-en.{en,fr}
#          giga-fren.release2.fixed.{en,fr}  dev/newstest2013.{en,fr}
#          test-full/newstest2014-fren-src.en.sgm  test-full/newstest2014-fren-ref.fr.sgm
# Outputs (OUT_DIR):
#   tmp/            tokenised / cleaned text (can be deleted after the run)
#   spm.model/.vocab  the joint sentencepiece model
#   spm/            train/valid/test.{SRC,TGT} as pieces
#   data-bin/       (DATA_BIN) fairseq binary data, dict.SRC.txt == dict.TGT.txt, plus
#                   spm.model and test.raw.{SRC,TGT} (raw newstest2014, used by evaluate.sh)
#
# Environment knobs (default):
#   PAIR=en-de          en-de or en-fr (translation direction English -> X)
#   OUT_DIR=$REPO/data/wmt14_<src>_<tgt>
#   RAW_DIR=$OUT_DIR/orig   where the extracted WMT files are (or are downloaded to)
#   DOWNLOAD            1 = download missing archives; default 0 when you set RAW_DIR, else 1
#   DATA_BIN=$OUT_DIR/data-bin
#   SPM_VOCAB           32000 for en-de, 40000 for en-fr (project defaults; Vaswani et al.
#                       used ~37k shared BPE for En-De, fairseq's script 40k BPE)
#   SPM_TYPE=bpe        sentencepiece model type (bpe or unigram)
#   SPM_SAMPLE=5000000  sentences sampled for sentencepiece training (project default)
#   SPM_CHAR_COVERAGE=1.0
#   CLEAN_MIN=1 CLEAN_MAX=250 CLEAN_RATIO=1.5
#   WORKERS=$(nproc)    processes for tokenisation / encoding / binarisation
#   PYTHON              interpreter with fairseq (default: $REPO/.venv/bin/python, else python3)
#
# Usage: PAIR=en-de bash examples/wmt14/prepare.sh
#        RAW_DIR=/data/wmt14_raw PAIR=en-fr bash examples/wmt14/prepare.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
source "$REPO/examples/lib.sh"

PAIR=${PAIR:-en-de}
case "$PAIR" in
  en-de) SRC=en; TGT=de; X=de; DEFAULT_VOCAB=32000 ;;
  en-fr) SRC=en; TGT=fr; X=fr; DEFAULT_VOCAB=40000 ;;
  *) die "unknown PAIR='$PAIR': use PAIR=en-de or PAIR=en-fr" ;;
esac
OUT_DIR=${OUT_DIR:-$REPO/data/wmt14_${SRC}_${TGT}}
if [[ -n "${RAW_DIR:-}" ]]; then DOWNLOAD=${DOWNLOAD:-0}; else DOWNLOAD=${DOWNLOAD:-1}; fi
RAW_DIR=${RAW_DIR:-$OUT_DIR/orig}
DATA_BIN=${DATA_BIN:-$OUT_DIR/data-bin}
SPM_VOCAB=${SPM_VOCAB:-$DEFAULT_VOCAB}
SPM_TYPE=${SPM_TYPE:-bpe}
SPM_SAMPLE=${SPM_SAMPLE:-5000000}
SPM_CHAR_COVERAGE=${SPM_CHAR_COVERAGE:-1.0}
CLEAN_MIN=${CLEAN_MIN:-1}
CLEAN_MAX=${CLEAN_MAX:-250}
CLEAN_RATIO=${CLEAN_RATIO:-1.5}
WORKERS=${WORKERS:-$(nproc 2>/dev/null || echo 1)}

nonneg_int SPM_VOCAB "$SPM_VOCAB"; nonneg_int SPM_SAMPLE "$SPM_SAMPLE"; nonneg_int WORKERS "$WORKERS"
nonneg_int CLEAN_MIN "$CLEAN_MIN"; nonneg_int CLEAN_MAX "$CLEAN_MAX"; number CLEAN_RATIO "$CLEAN_RATIO"
[[ "$SPM_TYPE" == bpe || "$SPM_TYPE" == unigram ]] || die "SPM_TYPE must be bpe or unigram, got '$SPM_TYPE'"
[[ "$DOWNLOAD" == 0 || "$DOWNLOAD" == 1 ]] || die "DOWNLOAD must be 0 or 1, got '$DOWNLOAD'"
(( WORKERS >= 1 )) || WORKERS=1

# corpus prefixes (relative to RAW_DIR), archive of each, URLs
STATMT=http://statmt.org
if [[ $X == de ]]; then
  CORPORA=(training/europarl-v7.de-en commoncrawl.de-en training/news-commentary-v9.de-en)
  ARCHIVES=(training-parallel-europarl-v7.tgz training-parallel-commoncrawl.tgz training-parallel-nc-v9.tgz)
  TEST_SRC=test-full/newstest2014-deen-src.$SRC.sgm
  TEST_REF=test-full/newstest2014-deen-ref.$TGT.sgm
else
  CORPORA=(training/europarl-v7.fr-en commoncrawl.fr-en un/undoc.2000.fr-en training/news-commentary-v9.fr-en giga-fren.release2.fixed)
  ARCHIVES=(training-parallel-europarl-v7.tgz training-parallel-commoncrawl.tgz training-parallel-un.tgz training-parallel-nc-v9.tgz training-giga-fren.tar)
  TEST_SRC=test-full/newstest2014-fren-src.$SRC.sgm
  TEST_REF=test-full/newstest2014-fren-ref.$TGT.sgm
fi
VALID=dev/newstest2013
declare -A URL=(
  [training-parallel-europarl-v7.tgz]=$STATMT/wmt13/training-parallel-europarl-v7.tgz
  [training-parallel-commoncrawl.tgz]=$STATMT/wmt13/training-parallel-commoncrawl.tgz
  [training-parallel-un.tgz]=$STATMT/wmt13/training-parallel-un.tgz
  [training-parallel-nc-v9.tgz]=$STATMT/wmt14/training-parallel-nc-v9.tgz
  [training-giga-fren.tar]=$STATMT/wmt10/training-giga-fren.tar
  [dev.tgz]=$STATMT/wmt14/dev.tgz
  [test-full.tgz]=$STATMT/wmt14/test-full.tgz
)

required_files() {
  local c l
  for c in "${CORPORA[@]}"; do for l in $SRC $TGT; do echo "$c.$l"; done; done
  for l in $SRC $TGT; do echo "$VALID.$l"; done
  echo "$TEST_SRC"; echo "$TEST_REF"
}
archive_of() {  # the archive that provides a required file
  local f=$1 i
  case "$f" in
    dev/*) echo dev.tgz; return ;;
    test-full/*) echo test-full.tgz; return ;;
  esac
  for i in "${!CORPORA[@]}"; do [[ "$f" == "${CORPORA[$i]}".* ]] && { echo "${ARCHIVES[$i]}"; return; }; done
}
missing_files() { local f; while read -r f; do [[ -s "$RAW_DIR/$f" ]] || echo "$f"; done < <(required_files); }
gunzip_giga() {  # giga-fren ships gzipped text
  local l g
  for l in $SRC $TGT; do
    g="$RAW_DIR/giga-fren.release2.fixed.$l"
    if [[ -s "$g.gz" && ! -s "$g" ]]; then log "gunzip $g.gz"; gunzip -c "$g.gz" > "$g.tmp.$$" && mv -f "$g.tmp.$$" "$g"; fi
  done
}

# ---- 1. raw files --------------------------------------------------------------------
[[ $X == fr ]] && gunzip_giga
mapfile -t MISSING < <(missing_files)
if (( ${#MISSING[@]} > 0 )); then
  if [[ $DOWNLOAD != 1 ]]; then
    more=""; (( ${#MISSING[@]} > 1 )) && more=" (+$(( ${#MISSING[@]} - 1 )) more)"
    die "missing raw file RAW_DIR/${MISSING[0]}$more in RAW_DIR=$RAW_DIR: put the extracted WMT14 files there (see the header of $0) or run with DOWNLOAD=1"
  fi
  command -v wget >/dev/null 2>&1 || command -v curl >/dev/null 2>&1 || die "DOWNLOAD=1 needs wget or curl"
  mkdir -p "$RAW_DIR"
  declare -A NEEDED=()
  for f in "${MISSING[@]}"; do NEEDED[$(archive_of "$f")]=1; done
  for a in "${!NEEDED[@]}"; do
    if [[ ! -s "$RAW_DIR/$a" ]]; then
      log "downloading ${URL[$a]}"
      if command -v wget >/dev/null 2>&1; then wget -q -O "$RAW_DIR/$a.part" "${URL[$a]}"
      else curl -fsSL -o "$RAW_DIR/$a.part" "${URL[$a]}"; fi
      mv -f "$RAW_DIR/$a.part" "$RAW_DIR/$a"
    fi
    log "extracting $a"
    case "$a" in
      *.tgz) tar -xzf "$RAW_DIR/$a" -C "$RAW_DIR" ;;
      *.tar) tar -xf "$RAW_DIR/$a" -C "$RAW_DIR" ;;
    esac
  done
  [[ $X == fr ]] && gunzip_giga
  mapfile -t MISSING < <(missing_files)
  (( ${#MISSING[@]} == 0 )) || die "still missing after download: RAW_DIR/${MISSING[0]} (RAW_DIR=$RAW_DIR)"
fi
for c in "${CORPORA[@]}" "$VALID"; do
  ns=$(wc -l < "$RAW_DIR/$c.$SRC"); nt=$(wc -l < "$RAW_DIR/$c.$TGT")
  [[ $ns == "$nt" ]] || die "RAW_DIR/$c.$SRC has $ns lines but RAW_DIR/$c.$TGT has $nt: the corpus is truncated or mismatched"
done

if [[ -s "$DATA_BIN/.done" ]]; then
  log "skip: all steps done (found $DATA_BIN/.done; delete $DATA_BIN to rebuild)"
  echo "binarized data: $DATA_BIN"
  exit 0
fi
log "PAIR=$PAIR RAW_DIR=$RAW_DIR OUT_DIR=$OUT_DIR WORKERS=$WORKERS"
TMP=$OUT_DIR/tmp
mkdir -p "$TMP" "$OUT_DIR/spm"
TP=("$PYTHON" "$HERE/textproc.py")

# ---- 2. tokenisation -------------------------------------------------------------------
for l in $SRC $TGT; do
  if ! skip_if_done "$TMP/train.raw.$l" "concatenated training text ($l)"; then
    files=(); for c in "${CORPORA[@]}"; do files+=("$RAW_DIR/$c.$l"); done
    atomic_cat "$TMP/train.raw.$l" "${files[@]}"
  fi
  skip_if_done "$TMP/train.tok.$l" "tokenise train.$l" ||
    "${TP[@]}" tok --lang "$l" --aggressive --workers "$WORKERS" --input "$TMP/train.raw.$l" --output "$TMP/train.tok.$l"
  skip_if_done "$TMP/valid.tok.$l" "tokenise valid.$l" ||
    "${TP[@]}" tok --lang "$l" --aggressive --workers "$WORKERS" --input "$RAW_DIR/$VALID.$l" --output "$TMP/valid.tok.$l"
done
skip_if_done "$TMP/test.raw.$SRC" "extract test source" ||
  "${TP[@]}" sgm --input "$RAW_DIR/$TEST_SRC" --output "$TMP/test.raw.$SRC"
skip_if_done "$TMP/test.raw.$TGT" "extract test reference" ||
  "${TP[@]}" sgm --input "$RAW_DIR/$TEST_REF" --output "$TMP/test.raw.$TGT"
ns=$(wc -l < "$TMP/test.raw.$SRC"); nt=$(wc -l < "$TMP/test.raw.$TGT")
[[ $ns == "$nt" ]] || die "test source has $ns segments but the reference has $nt ($RAW_DIR/$TEST_SRC, $RAW_DIR/$TEST_REF)"
for l in $SRC $TGT; do
  skip_if_done "$TMP/test.tok.$l" "tokenise test.$l" ||
    "${TP[@]}" tok --lang "$l" --aggressive --workers "$WORKERS" --input "$TMP/test.raw.$l" --output "$TMP/test.tok.$l"
done

# ---- 3. cleaning -----------------------------------------------------------------------
if ! skip_if_done "$TMP/train.clean.$SRC" "clean training pairs"; then
  # textproc.py renames the source side last: its presence marks completion
  "${TP[@]}" clean --min "$CLEAN_MIN" --max "$CLEAN_MAX" --ratio "$CLEAN_RATIO" \
    --src-in "$TMP/train.tok.$SRC" --tgt-in "$TMP/train.tok.$TGT" \
    --src-out "$TMP/train.clean.$SRC" --tgt-out "$TMP/train.clean.$TGT"
fi

# ---- 4. joint sentencepiece --------------------------------------------------------------
if ! skip_if_done "$OUT_DIR/spm.model" "sentencepiece training"; then
  log "training joint sentencepiece ($SPM_TYPE, $SPM_VOCAB pieces) on cleaned train.$SRC + train.$TGT"
  "${TP[@]}" spm-train --inputs "$TMP/train.clean.$SRC" "$TMP/train.clean.$TGT" \
    --model-prefix "$OUT_DIR/spm" --vocab-size "$SPM_VOCAB" --model-type "$SPM_TYPE" \
    --character-coverage "$SPM_CHAR_COVERAGE" --input-sentence-size "$SPM_SAMPLE" --workers "$WORKERS"
fi
for l in $SRC $TGT; do
  for s in train valid test; do
    in="$TMP/$s.tok.$l"; [[ $s == train ]] && in="$TMP/train.clean.$l"
    skip_if_done "$OUT_DIR/spm/$s.$l" "sentencepiece-encode $s.$l" ||
      "${TP[@]}" spm-encode --model "$OUT_DIR/spm.model" --workers "$WORKERS" --input "$in" --output "$OUT_DIR/spm/$s.$l"
  done
done

# ---- 5. binarise -----------------------------------------------------------------------
log "fairseq-preprocess --joined-dictionary -> $DATA_BIN"
rm -rf "$DATA_BIN.tmp"
"$PYTHON" -m fairseq_cli.preprocess --source-lang "$SRC" --target-lang "$TGT" \
  --trainpref "$OUT_DIR/spm/train" --validpref "$OUT_DIR/spm/valid" --testpref "$OUT_DIR/spm/test" \
  --destdir "$DATA_BIN.tmp" --joined-dictionary --workers "$WORKERS" > "$OUT_DIR/preprocess.log" 2>&1 ||
  { tail -n 20 "$OUT_DIR/preprocess.log" >&2; die "fairseq-preprocess failed (log: $OUT_DIR/preprocess.log)"; }
[[ -s "$DATA_BIN.tmp/dict.$SRC.txt" && -s "$DATA_BIN.tmp/test.$SRC-$TGT.$TGT.bin" ]] || die "fairseq-preprocess wrote no data (log: $OUT_DIR/preprocess.log)"
cp "$OUT_DIR/spm.model" "$OUT_DIR/spm.vocab" "$DATA_BIN.tmp/"
cp "$TMP/test.raw.$SRC" "$DATA_BIN.tmp/test.raw.$SRC"
cp "$TMP/test.raw.$TGT" "$DATA_BIN.tmp/test.raw.$TGT"
echo "PAIR=$PAIR SPM_VOCAB=$SPM_VOCAB SPM_TYPE=$SPM_TYPE $(date -u +%FT%TZ)" > "$DATA_BIN.tmp/.done"
rm -rf "$DATA_BIN"
mv "$DATA_BIN.tmp" "$DATA_BIN"

echo "binarized data: $DATA_BIN"
echo "sentencepiece model: $OUT_DIR/spm.model"
echo "raw test set (for scoring): $DATA_BIN/test.raw.$SRC, $DATA_BIN/test.raw.$TGT"
