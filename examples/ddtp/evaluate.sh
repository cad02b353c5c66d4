#!/usr/bin/env bash
# Evaluate a checkpoint trained by train.sh on the DDTP data: decode with fairseq-generate,
# undo sentencepiece, and score against the plain-text references written by prepare.sh:
# sacreBLEU (with its signature) for translation, ROUGE-1/2/L (rouge-score package,
# stemming on) for summarization. Prints a few examples.
#
# Inputs:  $CHECKPOINT (default $SAVE_DIR/checkpoint_best.pt), $DATA_BIN
# Outputs (under $OUT_DIR, default $SAVE_DIR/eval-$SUBSET-<checkpoint name>):
#   generate.log  fairseq-generate output;  hyp.txt, ref.txt, src.txt  one line per segment
#   (detokenized, in corpus order);  score.txt  the score line(s)
#
# Environment knobs (default):
#   TASK=translation          translation | summarization
#   MODE=lrdrop               only used for the default SAVE_DIR
#   DATA_DIR=data/ddtp, DATA_BIN= (default from DATA_DIR and TASK, as in train.sh)
#   SAVE_DIR=runs/ddtp/$TASK-$MODE
#   CHECKPOINT=$SAVE_DIR/checkpoint_best.pt
#   SUBSET=test               test | valid
#   BEAM=5 LENPEN=1.0
#   MAX_LEN_A=1.2 MAX_LEN_B=10 (translation); summarization: MAX_LEN_A=0 MAX_LEN_B=60
#   GEN_MAX_TOKENS=4000 (tokens per decoding batch)
#   (decoding uses --required-batch-size-multiple 1: with the default 8, fairseq's
#   batch_by_size silently drops a last batch whose size is not a multiple of 8, i.e. up
#   to 7 test segments; seen with fairseq-fixed 0.12.3.1, fairseq issue #5036)
#   N_EXAMPLES=5              examples printed
#   CPU=auto                  as in train.sh
#   OUT_DIR=                  see Outputs
#   EXTRA_ARGS=               more fairseq-generate arguments
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
TASK="${TASK:-translation}"
MODE="${MODE:-lrdrop}"
DATA_DIR="${DATA_DIR:-data/ddtp}"
SUBSET="${SUBSET:-test}"
BEAM="${BEAM:-5}"
LENPEN="${LENPEN:-1.0}"
GEN_MAX_TOKENS="${GEN_MAX_TOKENS:-4000}"
N_EXAMPLES="${N_EXAMPLES:-5}"
CPU="${CPU:-auto}"
EXTRA_ARGS="${EXTRA_ARGS:-}"

die() { echo "error: $*" >&2; exit 1; }

case "$TASK" in
  translation) SRC=en; TGT=de; BIN_NAME=translation-en-de
               MAX_LEN_A="${MAX_LEN_A:-1.2}"; MAX_LEN_B="${MAX_LEN_B:-10}" ;;
  summarization) SRC=src; TGT=tgt; BIN_NAME=summarization
               MAX_LEN_A="${MAX_LEN_A:-0}"; MAX_LEN_B="${MAX_LEN_B:-60}" ;;
  *) die "unknown TASK '$TASK' (use translation or summarization)" ;;
esac
case "$SUBSET" in test|valid) ;; *) die "unknown SUBSET '$SUBSET' (use test or valid)";; esac
DATA_BIN="${DATA_BIN:-$DATA_DIR/bin/$BIN_NAME}"
SAVE_DIR="${SAVE_DIR:-runs/ddtp/$TASK-$MODE}"
CHECKPOINT="${CHECKPOINT:-$SAVE_DIR/checkpoint_best.pt}"

[[ -f "$CHECKPOINT" ]] || die "checkpoint $CHECKPOINT not found (train one with examples/ddtp/train.sh, or set SAVE_DIR/CHECKPOINT)"
[[ -d "$DATA_BIN" ]] || die "data directory $DATA_BIN not found (run: bash examples/ddtp/prepare.sh, or set DATA_DIR/DATA_BIN)"
for f in "dict.$SRC.txt" "$SUBSET.$SRC-$TGT.$SRC.idx" "$SUBSET.raw.$SRC" "$SUBSET.raw.$TGT"; do
  [[ -f "$DATA_BIN/$f" ]] || die "$DATA_BIN/$f missing: $DATA_BIN is not prepare.sh's $TASK output (run: TASKS=$TASK bash examples/ddtp/prepare.sh)"
done
command -v fairseq-generate >/dev/null 2>&1 || die "fairseq-generate not on PATH (run 'make install' and put .venv/bin on PATH)"
if [[ "$TASK" == translation ]]; then
  python -c 'import sacrebleu' 2>/dev/null || die "python package sacrebleu missing (pip install sacrebleu)"
else
  python -c 'import rouge_score' 2>/dev/null || die "python package rouge-score missing (pip install rouge-score)"
fi

CKPT_NAME="$(basename "$CHECKPOINT" .pt)"
OUT_DIR="${OUT_DIR:-$SAVE_DIR/eval-$SUBSET-$CKPT_NAME}"
mkdir -p "$OUT_DIR"
DEVICE_ARGS=()
if [[ "$CPU" == auto ]]; then
  if [[ "$(python -c 'import torch;print(torch.cuda.is_available())' 2>/dev/null)" == True ]]; then CPU=0; else CPU=1; fi
fi
[[ "$CPU" == 1 ]] && DEVICE_ARGS+=(--cpu)
# shellcheck disable=SC2206
EXTRA=($EXTRA_ARGS)

echo "decoding $DATA_BIN ($SUBSET) with $CHECKPOINT -> $OUT_DIR"
fairseq-generate "$DATA_BIN" --user-dir "$REPO/fairseq_lrdrop" \
  --task translation --source-lang "$SRC" --target-lang "$TGT" \
  --path "$CHECKPOINT" --gen-subset "$SUBSET" \
  --beam "$BEAM" --lenpen "$LENPEN" --max-len-a "$MAX_LEN_A" --max-len-b "$MAX_LEN_B" \
  --max-tokens "$GEN_MAX_TOKENS" --post-process sentencepiece \
  --skip-invalid-size-inputs-valid-test --required-batch-size-multiple 1 \
  "${DEVICE_ARGS[@]}" "${EXTRA[@]}" > "$OUT_DIR/generate.log.tmp" 2> "$OUT_DIR/generate.err" \
  || { tail -20 "$OUT_DIR/generate.err" >&2; die "fairseq-generate failed (log: $OUT_DIR/generate.err)"; }
mv -f "$OUT_DIR/generate.log.tmp" "$OUT_DIR/generate.log"

python - "$TASK" "$OUT_DIR" "$DATA_BIN/$SUBSET.raw.$SRC" "$DATA_BIN/$SUBSET.raw.$TGT" "$N_EXAMPLES" <<'EOF'
import os, sys
task, out_dir, src_file, ref_file, n_examples = sys.argv[1:]
with open(src_file, encoding="utf-8") as fh:
    srcs = [l.rstrip("\n") for l in fh]
with open(ref_file, encoding="utf-8") as fh:
    refs = [l.rstrip("\n") for l in fh]
hyps = {}
with open(os.path.join(out_dir, "generate.log"), encoding="utf-8") as fh:
    for line in fh:
        if line.startswith("D-"):   # detokenized hypothesis: D-<id>\t<score>\t<text>
            parts = line.rstrip("\n").split("\t")
            hyps[int(parts[0][2:])] = parts[2] if len(parts) >= 3 else ""
if not hyps:
    sys.exit("error: no hypotheses in %s" % os.path.join(out_dir, "generate.log"))
# segments fairseq skipped (too long for the model) count as empty hypotheses
ids = range(len(refs))
missing = sum(1 for i in ids if i not in hyps)
hyp_list = [hyps.get(i, "") for i in ids]
def write(name, lines):
    tmp = os.path.join(out_dir, name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(l + "\n" for l in lines)
    os.replace(tmp, os.path.join(out_dir, name))
write("hyp.txt", hyp_list); write("ref.txt", refs); write("src.txt", srcs)
if task == "translation":
    from sacrebleu.metrics import BLEU
    bleu = BLEU()
    score = bleu.corpus_score(hyp_list, [refs])
    lines = ["BLEU = %.2f" % score.score, "sacreBLEU: %s" % score, "signature: %s" % bleu.get_signature()]
else:
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    tot = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for h, r in zip(hyp_list, refs):
        s = scorer.score(r, h)
        for k in tot:
            tot[k] += s[k].fmeasure
    n = max(1, len(refs))
    lines = ["ROUGE-1 = %.2f ROUGE-2 = %.2f ROUGE-L = %.2f" % tuple(100 * tot[k] / n for k in ("rouge1", "rouge2", "rougeL")),
             "(F1 x 100, rouge-score package, stemming on, %d segments)" % len(refs)]
if missing:
    lines.append("note: %d of %d segments were skipped by fairseq-generate (scored as empty)" % (missing, len(refs)))
write("score.txt", lines)
print("examples:")
for i in list(ids)[: int(n_examples)]:
    print("  SRC: %s\n  REF: %s\n  HYP: %s\n" % (srcs[i][:300], refs[i], hyp_list[i]))
print("\n".join(lines))
print("hypotheses: %s  references: %s  scores: %s" % (
    os.path.join(out_dir, "hyp.txt"), os.path.join(out_dir, "ref.txt"), os.path.join(out_dir, "score.txt")))
EOF
