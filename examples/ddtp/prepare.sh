#!/usr/bin/env bash
# Prepare the DDTP example data: Debian package descriptions and their German translations
# (Debian Description Translation Project) as an En-De translation task, and the English
# descriptions as a summarization task (long description -> one-line synopsis).
#
# Steps (each skipped on a rerun when its `.done` marker exists and records the same
# settings; every step writes to a temporary name and renames, so an interrupted run is
# redone rather than half-reused):
#   1. indexes  Translation-en, Translation-de and Packages of a Debian release, fetched with
#               apt itself under a private configuration ($DATA_DIR/apt: own sources, lists,
#               cache, status; the system's apt lists are never read or written). The archive
#               URI and suite come from the system's apt sources (/etc/apt/sources.list,
#               /etc/apt/sources.list.d/*.list|*.sources): the first `deb` entry with
#               component main, preferring the release suite over -updates/-security.
#               Works as root and as an unprivileged user.
#   2. raw      examples/ddtp/ddtp.py: pairing, cleaning, split by source package
#   3. spm      one sentencepiece model per task (joint En+De; joint src+tgt)
#   4. encode   sentencepiece pieces of every split
#   5. bin      fairseq-preprocess (--joined-dictionary)
#
# Inputs: network access to a Debian (or Ubuntu) archive through apt, or DDTP_INDEX_DIR.
# Outputs (under DATA_DIR):
#   apt/lists/                     fetched index files (cache; a rerun does not fetch again)
#   raw/translation/{train,valid,test}.{en,de}, raw/summarization/{train,valid,test}.{src,tgt}
#                                  plain text, plus stats.json (pair counts, split sizes)
#   spm/translation.model, spm/summarization.model (+ .vocab)
#   spm-enc/<task>/...             encoded text
#   bin/translation-en-de, bin/summarization   fairseq binarized data for train.sh, with
#                                  {valid,test}.raw.<lang> (plain references) and spm.model
#
# Environment knobs (default):
#   DATA_DIR=data/ddtp            where everything is written (relative to the current dir)
#   TASKS="translation summarization"   which tasks to build
#   FETCH_ONLY=0                  1: stop after step 1 (fetch/cache the indexes)
#   DDTP_INDEX_DIR=               directory with already-downloaded index files
#                                 (*Translation-en*, *Translation-de*, optional *Packages*;
#                                 plain, .gz, .xz, .bz2, .lz4 or .zst, e.g. a copy of an apt
#                                 lists directory): no apt, no network
#   DDTP_URI=, DDTP_SUITE=        archive URI and suite instead of the system's apt sources
#   DDTP_COMPONENT=main           archive component
#   DDTP_SOURCES_LIST=/etc/apt/sources.list, DDTP_SOURCES_PARTS=/etc/apt/sources.list.d
#   VALID_SIZE=0.02 TEST_SIZE=0.02  per task: fraction (<1) or number (>=1) of pairs
#   MAX_WORDS=100                 translation: drop pairs with a side longer than this (words)
#   SUM_MAX_WORDS=400             summarization: drop long descriptions longer than this
#   MAX_TRAIN_PAIRS=0             cap on train pairs per task (0 = all)
#   SPLIT_SALT=ddtp               salt of the split hash (another salt = another split)
#   SPM_VOCAB=8000, SUM_SPM_VOCAB=8000   sentencepiece vocabulary sizes
#   SPM_MAX_SENTENCES=300000      sentences sampled to train sentencepiece
#   WORKERS=2                     fairseq-preprocess workers
#   PYTHON=python                 interpreter with sentencepiece + fairseq (the venv's)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA_DIR="${DATA_DIR:-data/ddtp}"
TASKS="${TASKS:-translation summarization}"
FETCH_ONLY="${FETCH_ONLY:-0}"
DDTP_INDEX_DIR="${DDTP_INDEX_DIR:-}"
DDTP_URI="${DDTP_URI:-}"
DDTP_SUITE="${DDTP_SUITE:-}"
DDTP_COMPONENT="${DDTP_COMPONENT:-main}"
DDTP_SOURCES_LIST="${DDTP_SOURCES_LIST:-/etc/apt/sources.list}"
DDTP_SOURCES_PARTS="${DDTP_SOURCES_PARTS:-/etc/apt/sources.list.d}"
VALID_SIZE="${VALID_SIZE:-0.02}"
TEST_SIZE="${TEST_SIZE:-0.02}"
MAX_WORDS="${MAX_WORDS:-100}"
SUM_MAX_WORDS="${SUM_MAX_WORDS:-400}"
MAX_TRAIN_PAIRS="${MAX_TRAIN_PAIRS:-0}"
SPLIT_SALT="${SPLIT_SALT:-ddtp}"
SPM_VOCAB="${SPM_VOCAB:-8000}"
SUM_SPM_VOCAB="${SUM_SPM_VOCAB:-8000}"
SPM_MAX_SENTENCES="${SPM_MAX_SENTENCES:-300000}"
WORKERS="${WORKERS:-2}"
PYTHON="${PYTHON:-python}"

die() { echo "error: $*" >&2; exit 1; }

# ---- check inputs before any long step
command -v "$PYTHON" >/dev/null 2>&1 || die "python interpreter '$PYTHON' not found (set PYTHON, or run 'make install' and put .venv/bin on PATH)"
if [[ "$FETCH_ONLY" != 1 ]]; then
  "$PYTHON" -c 'import sentencepiece' 2>/dev/null || die "python module sentencepiece missing for $PYTHON (run 'make install' and use .venv/bin/python)"
  command -v fairseq-preprocess >/dev/null 2>&1 || die "fairseq-preprocess not on PATH (run 'make install' and put .venv/bin on PATH)"
fi
for task in $TASKS; do
  case "$task" in translation|summarization) ;; *) die "unknown task '$task' in TASKS (use translation and/or summarization)";; esac
done
if [[ -n "$DDTP_INDEX_DIR" ]]; then
  [[ -d "$DDTP_INDEX_DIR" ]] || die "DDTP_INDEX_DIR=$DDTP_INDEX_DIR does not exist (a directory with Translation-en, Translation-de and optionally Packages index files)"
  "$PYTHON" "$HERE/ddtp.py" locate --index-dir "$DDTP_INDEX_DIR" >/dev/null \
    || die "DDTP_INDEX_DIR=$DDTP_INDEX_DIR holds no Translation-en and Translation-de files (copy them from an apt lists directory or dists/<suite>/main/i18n/ of a Debian mirror)"
else
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: on a machine without apt set DDTP_INDEX_DIR to a directory with Translation-en, Translation-de and Packages files"
fi

mkdir -p "$DATA_DIR"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
echo "DDTP data directory: $DATA_DIR"

# step_done NAME SIGNATURE: true when the step completed earlier with the same settings
step_done() { [[ -f "$DATA_DIR/.done.$1" ]] && [[ "$(cat "$DATA_DIR/.done.$1")" == "$2" ]]; }
mark_done() { printf '%s' "$2" > "$DATA_DIR/.done.$1.tmp" && mv -f "$DATA_DIR/.done.$1.tmp" "$DATA_DIR/.done.$1"; }
# publish TMPDIR DEST: replace DEST by the finished TMPDIR
publish() { rm -rf "$2"; mv "$1" "$2"; }

# ---- 1. indexes
if [[ -n "$DDTP_INDEX_DIR" ]]; then
  INDEX_DIR="$(cd "$DDTP_INDEX_DIR" && pwd)"
  echo "[indexes] using DDTP_INDEX_DIR=$INDEX_DIR (no download)"
else
  APT_DIR="$DATA_DIR/apt"
  INDEX_DIR="$APT_DIR/lists"
  ARCH="$(dpkg --print-architecture 2>/dev/null || true)"
  STANZA="$("$PYTHON" "$HERE/ddtp.py" apt-source --sources-list "$DDTP_SOURCES_LIST" \
             --sources-parts "$DDTP_SOURCES_PARTS" --component "$DDTP_COMPONENT" \
             --uri "$DDTP_URI" --suite "$DDTP_SUITE" --arch "$ARCH")" \
    || die "could not find the archive in the system's apt sources; set DDTP_URI and DDTP_SUITE (e.g. the URI and suite of your Debian mirror) or DDTP_INDEX_DIR"
  if step_done indexes "$STANZA" && "$PYTHON" "$HERE/ddtp.py" locate --index-dir "$INDEX_DIR" >/dev/null; then
    echo "[indexes] cached in $INDEX_DIR"
  else
    echo "[indexes] fetching Packages, Translation-en, Translation-de with apt into $APT_DIR"
    rm -rf "$APT_DIR"
    mkdir -p "$APT_DIR"/{lists/partial,cache/archives/partial,etc/sources.list.d,etc/preferences.d,state,log}
    : > "$APT_DIR/etc/sources.list"
    : > "$APT_DIR/state/status"
    printf '%s' "$STANZA" > "$APT_DIR/etc/sources.list.d/ddtp.sources"
    # Read after the system configuration (-c), so it wins over e.g. a container's
    # Acquire::Languages "none"; the system's proxy settings still apply.
    cat > "$APT_DIR/apt.conf" <<EOF
Dir::State "$APT_DIR/state";
Dir::State::Lists "$APT_DIR/lists";
Dir::State::status "$APT_DIR/state/status";
Dir::State::extended_states "$APT_DIR/state/extended_states";
Dir::Cache "$APT_DIR/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Dir::Log "$APT_DIR/log";
Dir::Etc::sourcelist "$APT_DIR/etc/sources.list";
Dir::Etc::sourceparts "$APT_DIR/etc/sources.list.d";
Dir::Etc::preferences "$APT_DIR/etc/preferences";
Dir::Etc::preferencesparts "$APT_DIR/etc/preferences.d";
#clear Acquire::Languages;
Acquire::Languages { "en"; "de"; };
Acquire::GzipIndexes "false";
Acquire::PDiffs "false";
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear APT::Update::Post-Invoke-Stats;
#clear DPkg::Post-Invoke;
EOF
    APT_OPTS=(-c "$APT_DIR/apt.conf" -q)
    if [[ "$(id -u)" != 0 ]]; then
      # unprivileged: no lock on (and no privilege drop to _apt for) our private dirs
      APT_OPTS+=(-o Debug::NoLocking=1 -o "APT::Sandbox::User=$(id -un)")
    fi
    apt-get "${APT_OPTS[@]}" update || die "apt-get update with the private configuration $APT_DIR/apt.conf failed (network? set DDTP_INDEX_DIR to use downloaded files)"
    "$PYTHON" "$HERE/ddtp.py" locate --index-dir "$INDEX_DIR" >/dev/null \
      || die "apt fetched no Translation-en/Translation-de into $INDEX_DIR (does the archive in $APT_DIR/etc/sources.list.d/ddtp.sources carry i18n files? set DDTP_URI/DDTP_SUITE or DDTP_INDEX_DIR)"
    rm -f "$DATA_DIR"/.done.{raw,spm,encode,bin}.*   # new indexes: rebuild what depends on them
    mark_done indexes "$STANZA"
  fi
fi
"$PYTHON" "$HERE/ddtp.py" locate --index-dir "$INDEX_DIR" | sed 's/^/  /'
INDEX_FP="$("$PYTHON" "$HERE/ddtp.py" locate --index-dir "$INDEX_DIR" --fingerprint)"
if [[ "$FETCH_ONLY" == 1 ]]; then echo "done: indexes in $INDEX_DIR (FETCH_ONLY=1)"; exit 0; fi

# ---- 2-5 per task
for task in $TASKS; do
  if [[ "$task" == translation ]]; then
    SRC=en; TGT=de; BIN_NAME=translation-en-de; VOCAB="$SPM_VOCAB"; TASK_MAX_WORDS="$MAX_WORDS"
  else
    SRC=src; TGT=tgt; BIN_NAME=summarization; VOCAB="$SUM_SPM_VOCAB"; TASK_MAX_WORDS="$SUM_MAX_WORDS"
  fi
  RAW="$DATA_DIR/raw/$task"
  SIG_RAW="index=$INDEX_DIR@$INDEX_FP valid=$VALID_SIZE test=$TEST_SIZE max_words=$TASK_MAX_WORDS max_pairs=$MAX_TRAIN_PAIRS salt=$SPLIT_SALT"
  SIG_SPM="$SIG_RAW vocab=$VOCAB spm_max=$SPM_MAX_SENTENCES"

  # 2. raw text splits
  if step_done "raw.$task" "$SIG_RAW" && [[ -f "$RAW/stats.json" ]]; then
    echo "[$task] raw splits cached in $RAW"
  else
    rm -f "$DATA_DIR"/.done.{spm,encode,bin}."$task"
    rm -rf "$RAW.tmp"
    "$PYTHON" "$HERE/ddtp.py" "$task" --index-dir "$INDEX_DIR" --out "$RAW.tmp" \
      --valid-size "$VALID_SIZE" --test-size "$TEST_SIZE" --max-words "$TASK_MAX_WORDS" \
      --max-pairs "$MAX_TRAIN_PAIRS" --salt "$SPLIT_SALT"
    publish "$RAW.tmp" "$RAW"
    mark_done "raw.$task" "$SIG_RAW"
  fi
  for split in train valid test; do
    [[ -s "$RAW/$split.$SRC" ]] || die "split $RAW/$split.$SRC is empty (too little data for VALID_SIZE=$VALID_SIZE TEST_SIZE=$TEST_SIZE? give more index data or sizes as counts)"
  done

  # 3. sentencepiece model
  SPM_DIR="$DATA_DIR/spm"
  mkdir -p "$SPM_DIR"
  if step_done "spm.$task" "$SIG_SPM" && [[ -f "$SPM_DIR/$task.model" ]]; then
    echo "[$task] sentencepiece model cached: $SPM_DIR/$task.model"
  else
    rm -f "$DATA_DIR"/.done.{encode,bin}."$task"
    echo "[$task] training sentencepiece (vocab $VOCAB) on $RAW/train.{$SRC,$TGT}"
    "$PYTHON" - "$RAW/train.$SRC" "$RAW/train.$TGT" "$SPM_DIR" "$task" "$VOCAB" "$SPM_MAX_SENTENCES" <<'EOF'
import os, sys, tempfile, logging
import sentencepiece as spm
src, tgt, out_dir, name, vocab, max_sent = sys.argv[1:]
tmp = tempfile.mkdtemp(prefix="." + name + ".", dir=out_dir)
prefix = os.path.join(tmp, name)
def train(vocab_size):
    spm.SentencePieceTrainer.train(
        input=[src, tgt], model_prefix=prefix, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, input_sentence_size=int(max_sent),
        shuffle_input_sentence=True, hard_vocab_limit=False, num_threads=2,
        bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2)
try:
    train(int(vocab))
except RuntimeError as err:   # tiny corpora: vocabulary larger than the data supports
    words = set()
    for f in (src, tgt):
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                words.update(line.split())
    small = max(50, min(int(vocab), len(words) // 2))
    print("sentencepiece: %s; retrying with vocab %d" % (str(err).splitlines()[0], small))
    train(small)
for ext in ("model", "vocab"):
    os.replace(prefix + "." + ext, os.path.join(out_dir, name + "." + ext))
os.rmdir(tmp)
EOF
    mark_done "spm.$task" "$SIG_SPM"
  fi

  # 4. encode
  ENC="$DATA_DIR/spm-enc/$task"
  if step_done "encode.$task" "$SIG_SPM" && [[ -f "$ENC/test.$TGT" ]]; then
    echo "[$task] encoded text cached in $ENC"
  else
    rm -f "$DATA_DIR/.done.bin.$task"
    rm -rf "$ENC.tmp"; mkdir -p "$ENC.tmp"
    "$PYTHON" - "$SPM_DIR/$task.model" "$RAW" "$ENC.tmp" "$SRC" "$TGT" <<'EOF'
import os, sys
import sentencepiece as spm
model, raw, out, src, tgt = sys.argv[1:]
sp = spm.SentencePieceProcessor(model_file=model)
for split in ("train", "valid", "test"):
    for ext in (src, tgt):
        with open(os.path.join(raw, "%s.%s" % (split, ext)), encoding="utf-8") as fh:
            lines = [l.rstrip("\n") for l in fh]
        pieces = sp.encode(lines, out_type=str)
        with open(os.path.join(out, "%s.%s" % (split, ext)), "w", encoding="utf-8") as fh:
            for p in pieces:
                fh.write(" ".join(p) + "\n")
EOF
    publish "$ENC.tmp" "$ENC"
    mark_done "encode.$task" "$SIG_SPM"
  fi

  # 5. binarize
  BIN="$DATA_DIR/bin/$BIN_NAME"
  if step_done "bin.$task" "$SIG_SPM" && [[ -f "$BIN/spm.model" ]]; then
    echo "[$task] binarized data cached in $BIN"
  else
    rm -rf "$BIN.tmp"; mkdir -p "$(dirname "$BIN")"
    fairseq-preprocess --source-lang "$SRC" --target-lang "$TGT" \
      --trainpref "$ENC/train" --validpref "$ENC/valid" --testpref "$ENC/test" \
      --destdir "$BIN.tmp" --joined-dictionary --workers "$WORKERS" \
      > "$DATA_DIR/preprocess.$task.log" 2>&1 \
      || { tail -20 "$DATA_DIR/preprocess.$task.log" >&2; die "fairseq-preprocess failed for $task (log: $DATA_DIR/preprocess.$task.log)"; }
    # keep the raw references and the spm model beside the binarized data for evaluate.sh
    for split in valid test; do for ext in $SRC $TGT; do cp "$RAW/$split.$ext" "$BIN.tmp/$split.raw.$ext"; done; done
    cp "$SPM_DIR/$task.model" "$BIN.tmp/spm.model"
    publish "$BIN.tmp" "$BIN"
    mark_done "bin.$task" "$SIG_SPM"
  fi
  echo "[$task] $("$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("pairs: train %d, valid %d, test %d (source packages: %d / %d / %d)" % (d["train"], d["valid"], d["test"], d["sources_train"], d["sources_valid"], d["sources_test"]))' "$RAW/stats.json")"
  echo "[$task] binarized data: $BIN"
done
echo "done: outputs in $DATA_DIR (raw/, spm/, bin/)"
