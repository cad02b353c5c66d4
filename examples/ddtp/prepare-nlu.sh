#!/usr/bin/env bash
# Prepare the DDTP data of the encoder-only and decoder-only studies: a classification task
# (a package's Section from its English description), an architecture task (is the package
# built per machine architecture, or the same for all, from its English synopsis; for encoders
# pre-trained elsewhere: the pre-training text below does not hold its valid/test packages
# out), a pair task (is this German synopsis a translation of this English one?), and
# pre-training text (English and German descriptions of the packages that the classification
# and pair tasks put in train) for masked_lm and language_modeling, binarized with one shared
# sentencepiece vocabulary and fairseq dictionary.
#
# Steps: 1. the Debian indexes through prepare.sh's apt route (FETCH_ONLY=1), or DDTP_INDEX_DIR
#        2. ddtp.py classification / architecture / pairs / pretraining (split by source package)
#        3. nlu.py: sentencepiece, train subsets, fairseq-preprocess
# A rerun with the same settings and index files does nothing; any change rebuilds steps 2-3
# (a few minutes). Outputs appear only when complete (built under *.tmp, then renamed).
#
# Inputs: network access to a Debian archive through apt, or DDTP_INDEX_DIR (a directory with
#         Translation-en, Translation-de and Packages index files; see prepare.sh)
# Outputs (under DATA_DIR):
#   raw/{classification,architecture,pairs,pretraining}/   plain text splits + stats.json (ddtp.py)
#   bin/                                      nlu.py's output: spm.model, pretraining/, lm-en[-<N>]/,
#                                             {classification,architecture,pairs}-<N>/, stats.json
#
# Environment knobs (default):
#   DATA_DIR=data/ddtp-nlu
#   DDTP_INDEX_DIR=, DDTP_URI=, DDTP_SUITE=, ...   as in prepare.sh
#   VALID_SIZE=1000 TEST_SIZE=1000   examples per task (count >= 1, or a fraction < 1)
#   MAX_WORDS=64                     longest description (classification) / synopsis (architecture, pairs)
#   TOP_CLASSES=10                   classification: the most frequent sections kept
#   TRAIN_SIZES="1000 10000 all"     train-set sizes binarized per task (seeded subsets)
#   LM_TRAIN_SIZES="1000"            language_modeling train subsets (bin/lm-en-<N>; bin/lm-en
#                                    always holds every train description)
#   SUBSET_SEED=1                    seed of the train subsets
#   PRETRAIN_VALID_SIZE=0.01         pre-training descriptions kept for valid
#   SPM_VOCAB=8000 SPM_MAX_SENTENCES=300000
#   SPLIT_SALT=ddtp WORKERS=2 PYTHON=python
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA_DIR="${DATA_DIR:-data/ddtp-nlu}"
VALID_SIZE="${VALID_SIZE:-1000}"
TEST_SIZE="${TEST_SIZE:-1000}"
MAX_WORDS="${MAX_WORDS:-64}"
TOP_CLASSES="${TOP_CLASSES:-10}"
TRAIN_SIZES="${TRAIN_SIZES:-1000 10000 all}"
LM_TRAIN_SIZES="${LM_TRAIN_SIZES-1000}"
SUBSET_SEED="${SUBSET_SEED:-1}"
PRETRAIN_VALID_SIZE="${PRETRAIN_VALID_SIZE:-0.01}"
SPM_VOCAB="${SPM_VOCAB:-8000}"
SPM_MAX_SENTENCES="${SPM_MAX_SENTENCES:-300000}"
SPLIT_SALT="${SPLIT_SALT:-ddtp}"
WORKERS="${WORKERS:-2}"
PYTHON="${PYTHON:-python}"

die() { echo "error: $*" >&2; exit 1; }
for knob in MAX_WORDS TOP_CLASSES SUBSET_SEED SPM_VOCAB SPM_MAX_SENTENCES WORKERS; do
  [[ "${!knob}" =~ ^[0-9]+$ ]] || die "$knob must be a whole number, got '${!knob}'"
done
for size in $TRAIN_SIZES; do
  [[ "$size" == all || "$size" =~ ^[1-9][0-9]*$ ]] || die "TRAIN_SIZES entry '$size' is neither a positive count nor 'all'"
done
for size in $LM_TRAIN_SIZES; do
  [[ "$size" =~ ^[1-9][0-9]*$ ]] || die "LM_TRAIN_SIZES entry '$size' is not a positive count (bin/lm-en holds every description)"
done
command -v "$PYTHON" >/dev/null 2>&1 || die "python interpreter '$PYTHON' not found (set PYTHON, or run 'make install' and use .venv/bin/python)"

# 1. indexes: prepare.sh checks DDTP_INDEX_DIR or fetches with apt into $DATA_DIR/apt/lists
mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
DATA_DIR="$DATA_DIR" TASKS=translation FETCH_ONLY=1 bash "$HERE/prepare.sh" >&2
INDEX_DIR="${DDTP_INDEX_DIR:-$DATA_DIR/apt/lists}"
INDEX_DIR="$(cd "$INDEX_DIR" && pwd)"
"$PYTHON" "$HERE/ddtp.py" locate --index-dir "$INDEX_DIR" | grep -q '^Packages: /' \
  || die "no Packages index in $INDEX_DIR: the classification labels are its Section fields (copy it from the apt lists directory)"

SIGNATURE="tasks=classification,architecture,pairs index=$INDEX_DIR@$("$PYTHON" "$HERE/ddtp.py" locate --index-dir "$INDEX_DIR" --fingerprint) valid=$VALID_SIZE test=$TEST_SIZE max_words=$MAX_WORDS top=$TOP_CLASSES sizes=$TRAIN_SIZES lm_sizes=$LM_TRAIN_SIZES subset_seed=$SUBSET_SEED pretrain_valid=$PRETRAIN_VALID_SIZE vocab=$SPM_VOCAB spm_max=$SPM_MAX_SENTENCES salt=$SPLIT_SALT"
if [[ -f "$DATA_DIR/.done.nlu" && "$(cat "$DATA_DIR/.done.nlu")" == "$SIGNATURE" && -f "$DATA_DIR/bin/stats.json" ]]; then
  echo "NLU data cached in $DATA_DIR/bin"
  exit 0
fi
rm -f "$DATA_DIR/.done.nlu"

# 2. raw splits
rm -rf "$DATA_DIR/raw.tmp"
common=(--index-dir "$INDEX_DIR" --valid-size "$VALID_SIZE" --test-size "$TEST_SIZE" --max-words "$MAX_WORDS" --salt "$SPLIT_SALT")
"$PYTHON" "$HERE/ddtp.py" classification "${common[@]}" --top-classes "$TOP_CLASSES" --out "$DATA_DIR/raw.tmp/classification"
"$PYTHON" "$HERE/ddtp.py" architecture "${common[@]}" --out "$DATA_DIR/raw.tmp/architecture"
"$PYTHON" "$HERE/ddtp.py" pairs "${common[@]}" --out "$DATA_DIR/raw.tmp/pairs"
"$PYTHON" "$HERE/ddtp.py" pretraining "${common[@]}" --top-classes "$TOP_CLASSES" \
  --pretrain-valid-size "$PRETRAIN_VALID_SIZE" --out "$DATA_DIR/raw.tmp/pretraining"
for task in classification architecture pairs; do
  for split in train valid test; do
    [[ -s "$DATA_DIR/raw.tmp/$task/$split.label" ]] || die "the $task $split split is empty (too little index data for VALID_SIZE=$VALID_SIZE TEST_SIZE=$TEST_SIZE?)"
  done
done
for split in train valid; do
  [[ -s "$DATA_DIR/raw.tmp/pretraining/$split.en" ]] || die "the pre-training $split text is empty (raise PRETRAIN_VALID_SIZE, e.g. to a count such as 2, or give more index data)"
done
rm -rf "$DATA_DIR/raw"
mv "$DATA_DIR/raw.tmp" "$DATA_DIR/raw"

# 3. sentencepiece + binarized data
# shellcheck disable=SC2086
"$PYTHON" "$HERE/nlu.py" --raw "$DATA_DIR/raw" --out "$DATA_DIR/bin" --train-sizes $TRAIN_SIZES \
  --lm-train-sizes $LM_TRAIN_SIZES \
  --subset-seed "$SUBSET_SEED" --vocab "$SPM_VOCAB" --spm-max-sentences "$SPM_MAX_SENTENCES" --workers "$WORKERS"
printf '%s' "$SIGNATURE" > "$DATA_DIR/.done.nlu"
echo "done: NLU data in $DATA_DIR/bin"
