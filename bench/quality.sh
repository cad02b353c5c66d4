#!/usr/bin/env bash
# Quality study on real data (DDTP): baseline vs R-Drop vs LR-Drop with the same model, data,
# seeds and stopping rule; test sacreBLEU (translation) or ROUGE (summarization) of the
# valid-best checkpoint. The LR-Drop weights are chosen on the VALID split only.
#
# Steps:
#   1. examples/ddtp/prepare.sh with the study's data knobs (cached on reruns)
#   2. sweep: LR-Drop with each "alpha,beta,gamma" of SWEEP on the first seed; the triple with
#      the best VALID score is kept (R-Drop uses the same gamma)
#   3. every MODE x SEED trains until the valid loss stops improving (PATIENCE epochs) or
#      MAX_EPOCH; each run's wall time is recorded
#   4. test scores of checkpoint_best.pt -> $RUN_DIR/results.md and results.json, with what
#      bench/diagnose.py measures of each run (length ratio, repetition loops, attention and
#      output entropy, EOS probability where the reference ends)
# A rerun skips runs whose results exist (each run writes result.json last).
#
# Inputs:  apt access (or DDTP_INDEX_DIR), see examples/ddtp/prepare.sh
# Outputs: $RUN_DIR/<mode>-<weights>-seed<k>/ (checkpoints, train.log, eval-*/),
#          <run>/diagnose-<subset>.json, $RUN_DIR/sweep.txt, $RUN_DIR/results.md, results.json
#
# Environment knobs (default):
#   TASK=translation            translation | summarization
#   MODES="baseline rdrop lrdrop"
#   SEEDS="1 2"
#   SWEEP="1,1,5 0.5,0.5,5 2,2,5"  LR-Drop alpha,beta,gamma triples tried on valid
#   WEIGHTS=                    alpha,beta,gamma fixed in advance: no sweep (lets two
#                               invocations with different MODES share RUN_DIR side by side)
#   RUN_DIR=runs/quality-$TASK
#   DATA_DIR=data/ddtp-quality  MAX_WORDS=25 (translation segments, words per side)
#   DATA_BIN=$DATA_DIR/bin/translation-en-de or .../summarization (what bench/diagnose.py reads)
#   DIAGNOSE=1                  0 skips bench/diagnose.py (its table columns then show "-")
#   PATIENCE=5 MAX_EPOCH=60     stopping rule (validation every epoch)
#   ENCODER_LAYERS=3 DECODER_LAYERS=3 EMBED_DIM=256 FFN_DIM=1024 HEADS=4 DROPOUT=0.3
#   MAX_TOKENS=4096 LR=5e-4 WARMUP=4000
#   BEAM=5                      decoding beam for valid and test scoring
#   STOP_TIME_HOURS=0           per-run training time cap (0 = off); a run that hits it is
#                               marked "time cap" (not converged) in results.md
#   OMP_NUM_THREADS             torch CPU threads per run (e.g. 1 to run two studies side by side)
#   PYTHON=python3              interpreter with fairseq and the plugin
#   any other examples/ddtp/train.sh or evaluate.sh knob passes through the environment
# On a GPU machine the same command runs there (train.sh picks the GPU); raise the model
# and MAX_EPOCH for a full-scale study.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DDTP="$HERE/../examples/ddtp"
export TASK="${TASK:-translation}"
MODES="${MODES:-baseline rdrop lrdrop}"
SEEDS="${SEEDS:-1 2}"
SWEEP="${SWEEP:-1,1,5 0.5,0.5,5 2,2,5}"
RUN_DIR="${RUN_DIR:-runs/quality-$TASK}"
export DATA_DIR="${DATA_DIR:-data/ddtp-quality}"
export MAX_WORDS="${MAX_WORDS:-25}"
export PATIENCE="${PATIENCE:-5}" MAX_EPOCH="${MAX_EPOCH:-60}"
export BEAM="${BEAM:-5}"
PYTHON="${PYTHON:-python3}"
DIAGNOSE="${DIAGNOSE:-1}"
case "$TASK" in translation) BIN_NAME=translation-en-de ;; *) BIN_NAME=summarization ;; esac
DATA_BIN="${DATA_BIN:-$DATA_DIR/bin/$BIN_NAME}"

case "$TASK" in translation|summarization) ;; *) echo "error: unknown TASK='$TASK' (translation or summarization)" >&2; exit 1;; esac
for mode in $MODES; do
  case "$mode" in baseline|rdrop|lrdrop) ;; *) echo "error: unknown mode '$mode' in MODES (baseline, rdrop, lrdrop)" >&2; exit 1;; esac
done
WEIGHTS="${WEIGHTS:-}"
for triple in $SWEEP $WEIGHTS; do
  [[ "$triple" =~ ^[0-9.]+,[0-9.]+,[0-9.]+$ ]] || { echo "error: SWEEP or WEIGHTS entry '$triple' is not alpha,beta,gamma (e.g. 1,1,5)" >&2; exit 1; }
done
mkdir -p "$RUN_DIR"

# score FILE -> the headline number (BLEU, or ROUGE-L) of an evaluate.sh score.txt
score() { "$PYTHON" -c '
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"BLEU = ([0-9.]+)", text) or re.search(r"ROUGE-L = ([0-9.]+)", text)
print(m.group(1))' "$1"; }

# stop_reason TRAIN_OUT -> why fairseq-train stopped: patience (converged), time cap, max update
# or max epoch
stop_reason() {
  if grep -q "early stop since valid performance" "$1"; then echo patience
  elif grep -q "Stopping training due to cumulative_training_time" "$1"; then echo "time cap"
  elif grep -q "Stopping training due to num_updates" "$1"; then echo "max update"
  else echo "max epoch"; fi
}
# log_fields TRAIN_LOG (fairseq json log) -> the JSON fields "fairseq_train_wall" (seconds spent
# training: each epoch's train_train_wall, summed; also right for a run that was interrupted and
# resumed), "epochs" (the last validated epoch) and "best_valid_loss"
log_fields() { "$PYTHON" -c '
import json, sys
walls, valid = {}, []
for line in open(sys.argv[1]):
    if not line.startswith("{\""):  # json records; skips the config dump
        continue
    row = json.loads(line)
    if "train_train_wall" in row:
        walls[row["epoch"]] = float(row["train_train_wall"])
    if "valid_loss" in row:
        valid.append(row)
print(json.dumps({"fairseq_train_wall": round(sum(walls.values())),
                  "epochs": valid[-1]["epoch"] if valid else 0,
                  "best_valid_loss": min(float(r["valid_loss"]) for r in valid) if valid else None})[1:-1])' "$1"; }

# run MODE ALPHA BETA GAMMA SEED SUBSET -> trains (unless done) and prints the run directory
run() {
  local mode=$1 alpha=$2 beta=$3 gamma=$4 seed=$5 subset=$6
  local tag="$mode"
  [[ $mode == lrdrop ]] && tag="$mode-$alpha-$beta-$gamma"
  [[ $mode == rdrop ]] && tag="$mode-$gamma"
  local dir="$RUN_DIR/$tag-seed$seed"
  if [[ ! -s "$dir/result-$subset.json" ]]; then
    if [[ ! -s "$dir/trained" ]]; then
      local start=$SECONDS
      MODE=$mode SEED=$seed SAVE_DIR="$dir" HIDDEN_REG_WEIGHT=$alpha ATTN_REG_WEIGHT=$beta \
        OUTPUT_REG_WEIGHT=$gamma bash "$DDTP/train.sh" > "$dir.train.out" 2>&1 \
        || { tail -n 20 "$dir.train.out" >&2; echo "error: training $tag seed $seed failed (log: $dir.train.out)" >&2; exit 1; }
      echo $((SECONDS - start)) > "$dir/trained"
    fi
    SUBSET=$subset SAVE_DIR="$dir" bash "$DDTP/evaluate.sh" > "$dir.eval-$subset.out" 2>&1 \
      || { tail -n 20 "$dir.eval-$subset.out" >&2; echo "error: evaluating $tag failed" >&2; exit 1; }
    local sc eval_dir="$dir/eval-$subset-checkpoint_best"
    sc=$(score "$eval_dir/score.txt")
    if [[ $DIAGNOSE == 1 ]]; then
      "$PYTHON" "$HERE/diagnose.py" --checkpoint "$dir/checkpoint_best.pt" --data-bin "$DATA_BIN" --subset "$subset" \
        --hyp "$eval_dir/hyp.txt" --ref "$eval_dir/ref.txt" --json "$dir/diagnose-$subset.json" > "$dir.diagnose-$subset.out" 2>&1 \
        || { tail -n 20 "$dir.diagnose-$subset.out" >&2; echo "error: diagnosing $tag failed" >&2; exit 1; }
    else
      echo null > "$dir/diagnose-$subset.json"
    fi
    printf '{"mode": "%s", "weights": [%s, %s, %s], "seed": %s, "subset": "%s", "score": %s, "train_seconds": %s, "stopped_by": "%s", %s, "diagnosis": %s}\n' \
      "$mode" "$alpha" "$beta" "$gamma" "$seed" "$subset" "$sc" "$(cat "$dir/trained")" \
      "$(stop_reason "$dir.train.out")" "$(log_fields "$dir/train.log")" \
      "$(tr -d '\n' < "$dir/diagnose-$subset.json")" > "$dir/result-$subset.json.tmp"
    mv "$dir/result-$subset.json.tmp" "$dir/result-$subset.json"
  fi
  echo "$dir"
}

echo "=== [1/4] data ($TASK) -> $DATA_DIR"
TASKS=$TASK bash "$DDTP/prepare.sh" > "$RUN_DIR/prepare.out" 2>&1 \
  || { tail -n 20 "$RUN_DIR/prepare.out" >&2; echo "error: data preparation failed (log: $RUN_DIR/prepare.out)" >&2; exit 1; }

first_seed=${SEEDS%% *}
if [[ -n "$WEIGHTS" ]]; then
  echo "=== [2/4] LR-Drop weights fixed in advance: $WEIGHTS (no sweep)"
  best=$WEIGHTS
else
  best="" best_score=-1
  echo "=== [2/4] LR-Drop weights on the valid split (seed $first_seed)"
  : > "$RUN_DIR/sweep.txt.tmp"
  for triple in $SWEEP; do
    IFS=, read -r a b g <<< "$triple"
    dir=$(run lrdrop "$a" "$b" "$g" "$first_seed" valid)
    sc=$(score "$dir/eval-valid-checkpoint_best/score.txt")
    echo "alpha=$a beta=$b gamma=$g valid=$sc" | tee -a "$RUN_DIR/sweep.txt.tmp"
    if "$PYTHON" -c "import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)" "$sc" "$best_score"; then
      best=$triple best_score=$sc
    fi
  done
  echo "chosen: $best (valid $best_score)" | tee -a "$RUN_DIR/sweep.txt.tmp"
  mv "$RUN_DIR/sweep.txt.tmp" "$RUN_DIR/sweep.txt"
fi
IFS=, read -r ALPHA BETA GAMMA <<< "$best"

echo "=== [3/4] training every mode x seed"
dirs=()
for seed in $SEEDS; do
  for mode in $MODES; do
    dirs+=("$(run "$mode" "$ALPHA" "$BETA" "$GAMMA" "$seed" test)")
  done
done

echo "=== [4/4] results"
"$PYTHON" - "$RUN_DIR" "$TASK" "${dirs[@]}" <<'PY'
import json, statistics, sys
run_dir, task, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
rows = [json.load(open(f"{d}/result-test.json")) for d in dirs]
metric = "test sacreBLEU" if task == "translation" else "test ROUGE-L"
by_mode = {}
for r in rows:
    by_mode.setdefault(r["mode"], []).append(r)
lines = [f"| mode | weights (alpha, beta, gamma) | {metric} per seed | mean | training time (s) per seed | epochs, stopped by "
         "| length ratio | loops % | attention entropy enc / dec / cross | output entropy | P(EOS) at end |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]

def per_seed(rs, fmt, get):
    """One value per seed, or '-' for a run recorded before the diagnosis existed."""
    values = []
    for r in rs:
        try:
            values.append(fmt % get(r["diagnosis"]))
        except (KeyError, TypeError):
            values.append("-")
    return ", ".join(values)

for mode, rs in by_mode.items():
    weights = "-" if mode == "baseline" else ", ".join(map(str, rs[0]["weights"])) if mode == "lrdrop" else f"gamma {rs[0]['weights'][2]}"
    scores = ", ".join("%.2f" % r["score"] for r in rs)
    walls = ", ".join(str(r.get("fairseq_train_wall", r["train_seconds"])) for r in rs)
    mean = statistics.mean(r["score"] for r in rs)
    stops = ", ".join(f"{r.get('epochs', '?')} ({r.get('stopped_by', '?')})" for r in rs)
    attention = lambda d: tuple(d["attention_entropy"][m] for m in ("encoder_self", "decoder_self", "decoder_cross"))
    lines.append(f"| {mode} | {weights} | {scores} | {mean:.2f} | {walls} | {stops} "
                 f"| {per_seed(rs, '%.3f', lambda d: d['length_ratio'])} "
                 f"| {per_seed(rs, '%.1f', lambda d: 100 * d['loop_share'])} "
                 f"| {per_seed(rs, '%.2f / %.2f / %.2f', attention)} "
                 f"| {per_seed(rs, '%.2f', lambda d: d['output_entropy'])} "
                 f"| {per_seed(rs, '%.3f', lambda d: d['eos_prob_at_end'])} |")
open(f"{run_dir}/results.md", "w").write("\n".join(lines) + "\n")
json.dump(rows, open(f"{run_dir}/results.json", "w"), indent=1)
print("\n".join(lines))
print(f"wrote {run_dir}/results.md and {run_dir}/results.json")
PY
