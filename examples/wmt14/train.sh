#!/usr/bin/env bash
# Train a Transformer on WMT14 En-De / En-Fr: plain training, R-Drop or LR-Drop, with the
# same architecture and hyperparameters in all three modes.
#
#   MODE=baseline  --criterion label_smoothed_cross_entropy --label-smoothing 0.1
#   MODE=rdrop     --criterion label_smoothed_cross_entropy_with_rdrop (fairseq's R-Drop)
#                  --rdrop-alpha $OUTPUT_REG_WEIGHT
#   MODE=lrdrop    --criterion lr_drop_label_smoothed_cross_entropy (this project)
#                  --hidden-reg-weight $HIDDEN_REG_WEIGHT --attn-reg-weight $ATTN_REG_WEIGHT
#                  --output-reg-weight $OUTPUT_REG_WEIGHT
# Weights: OUTPUT_REG_WEIGHT=5.0 is R-Drop's published KL weight for WMT; HIDDEN_REG_WEIGHT=0.1
# and ATTN_REG_WEIGHT=0.1 are the plugin's defaults, chosen on valid splits (README, "Default
# weights"; the LR-Drop paper treats them as task hyperparameters and does not pin them).
#
# Batch size: the effective batch is kept at TOKENS_PER_UPDATE target tokens per update,
# whatever the number of GPUs: update_freq = ceil(TOKENS_PER_UPDATE / (GPUs x MAX_TOKENS)).
#   base: 8 GPUs x 4096 tokens x 1   = 32768   (project default, ~Vaswani et al.'s 25k+25k)
#   big : 8 GPUs x 3584 tokens x 16  = 458752  (Ott et al. 2018, "Scaling NMT", lr 1e-3)
# The computed value is printed. R-Drop/LR-Drop run the batch twice (one forward over
# [x; x]): activation memory doubles. On out-of-memory halve MAX_TOKENS; update_freq doubles
# and the effective batch stays the same.
# Recipes (RECIPE=...), and the published numbers each one is for (tokenized BLEU with
# compound splitting on newstest2014, examples/wmt14/evaluate.sh):
#   project      (default) ARCH=base: Transformer-base as Vaswani et al. (27.3 En-De); ARCH=big:
#                Transformer-big with Ott et al.'s batch ("Scaling NMT": 29.3 En-De, 43.2 En-Fr),
#                shortened to 30,000 updates, dropout 0.3 (En-De) / 0.1 (En-Fr).
#   rdrop-paper  the WMT14 En-De configuration the R-Drop authors posted (their repository's
#                issue 19) for R-Drop's 30.91 (En-De): transformer_vaswani_wmt_en_de_big,
#                lr 1e-3, dropout / attention dropout / activation (relu) dropout 0.1, 4096 tokens
#                x update-freq 16 per GPU, KL weight 5, 300,000 updates, 6,000 warm-up updates,
#                inverse_sqrt from 1e-7, Adam (0.9, 0.98), no clipping or weight decay, fp16;
#                decode with beam 4, lenpen 0.6 (evaluate.sh's defaults). The post does not give
#                the GPU count; RECIPE_GPUS=8 (the Scaling-NMT setup it follows) sets the effective
#                batch to 8 x 4096 x 16 = 524,288 tokens per update, kept on any GPU count.
#                MODE=baseline and MODE=lrdrop run the same setup for the comparison.
# Every knob below still overrides a recipe's value.
#
# GPUs: counted with nvidia-smi -L (honouring CUDA_VISIBLE_DEVICES; NUM_GPUS overrides);
# fairseq-train uses every visible GPU by itself. No GPU: runs on CPU with --cpu.
# Multi-node: set NUM_GPUS to the TOTAL GPU count over all nodes (so update_freq is right)
# and either launch with torchrun on every node, e.g.
#   LAUNCH="torchrun --nnodes 2 --nproc_per_node 8 --node_rank R --master_addr HOST --master_port 29500"
# (fairseq picks up the env:// rendezvous), or pass fairseq's own flags in EXTRA_ARGS on
# every node: "--distributed-world-size 16 --distributed-rank $((R*8))
# --distributed-init-method tcp://HOST:29500".
#
# Inputs : DATA_BIN from examples/wmt14/prepare.sh (joined dictionary)
# Outputs: SAVE_DIR/checkpoint_<epoch>_<update>.pt every SAVE_INTERVAL_UPDATES updates
#          (last KEEP_INTERVAL_UPDATES kept), checkpoint_best.pt, checkpoint_last.pt,
#          SAVE_DIR/train.log (appended). Rerunning resumes from checkpoint_last.pt.
#
# Environment knobs (default):
#   RECIPE=project       project | rdrop-paper (see above)
#   RECIPE_GPUS=8        rdrop-paper: GPUs the posted per-GPU batch was meant for
#   MODE=lrdrop          baseline | rdrop | lrdrop
#   PAIR=en-de           en-de | en-fr (selects DATA_BIN and the big model's dropout)
#   ARCH=base            (big under RECIPE=rdrop-paper)
#                        base -> lr_drop_transformer_wmt_en_de,
#                        big  -> lr_drop_transformer_vaswani_wmt_en_de_big,
#                        anything else: a registered fairseq arch name, used as is (settings
#                        of "big" apply when the name contains "big", else of "base")
#   DATA_BIN=$REPO/data/wmt14_<src>_<tgt>/data-bin
#   SAVE_DIR=$REPO/checkpoints/wmt14_<pair>_<arch>_<mode>
#   USER_DIR=$REPO/fairseq_lrdrop   plugin dir (--user-dir); empty = stock fairseq only
#   HIDDEN_REG_WEIGHT=0.1 ATTN_REG_WEIGHT=0.1 OUTPUT_REG_WEIGHT=5.0 LABEL_SMOOTHING=0.1
#   LR                   base 7e-4, big 1e-3 (rdrop-paper 1e-3)
#   WARMUP               4000 (rdrop-paper 6000); inverse_sqrt schedule, warmup from 1e-7; Adam (0.9, 0.98)
#   DROPOUT              base 0.1; big 0.3 (en-de) / 0.1 (en-fr), as Vaswani et al. (rdrop-paper 0.1)
#   ATTENTION_DROPOUT ACTIVATION_DROPOUT   the arch's defaults (0 for these archs; rdrop-paper 0.1)
#   WEIGHT_DECAY=0.0 CLIP_NORM=0.0
#   MAX_TOKENS           per GPU per step: base 4096, big 3584 (rdrop-paper 4096)
#   TOKENS_PER_UPDATE    base 32768, big 458752 (rdrop-paper 4096 x 16 x RECIPE_GPUS)
#   UPDATE_FREQ          overrides the computed value
#   MAX_UPDATE           base 100000, big 30000 (project defaults; raise them if the
#                        validation loss still falls; rdrop-paper 300000)
#   SAVE_INTERVAL_UPDATES=1000 KEEP_INTERVAL_UPDATES=20 LOG_INTERVAL=100 SEED=1
#   FP16=1               --fp16 on GPU (ignored on CPU)
#   NUM_GPUS             overrides GPU detection (0 = CPU)
#   LAUNCH               launcher prefix run as "$LAUNCH -m fairseq_cli.train ..." (torchrun)
#   EXTRA_ARGS           appended to the fairseq-train command line (word-split)
#   PYTHON               interpreter with fairseq (default: $REPO/.venv/bin/python, else python3)
#
# Usage: MODE=lrdrop ARCH=big bash examples/wmt14/train.sh
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
source "$REPO/examples/lib.sh"

RECIPE=${RECIPE:-project}
case "$RECIPE" in project|rdrop-paper) ;; *) die "unknown RECIPE='$RECIPE': use RECIPE=project or RECIPE=rdrop-paper" ;; esac
RECIPE_GPUS=${RECIPE_GPUS:-8}
nonneg_int RECIPE_GPUS "$RECIPE_GPUS"; (( RECIPE_GPUS >= 1 )) || die "RECIPE_GPUS must be >= 1"
MODE=${MODE:-lrdrop}
check_mode
PAIR=${PAIR:-en-de}
case "$PAIR" in en-de|en-fr) SRC=en; TGT=${PAIR#en-} ;; *) die "unknown PAIR='$PAIR': use PAIR=en-de or PAIR=en-fr" ;; esac
if [[ $RECIPE == rdrop-paper ]]; then ARCH=${ARCH:-big}; else ARCH=${ARCH:-base}; fi
case "$ARCH" in
  base) ARCH_NAME=lr_drop_transformer_wmt_en_de; SIZE=base ;;
  big) ARCH_NAME=lr_drop_transformer_vaswani_wmt_en_de_big; SIZE=big ;;
  *) ARCH_NAME=$ARCH; if [[ $ARCH == *big* ]]; then SIZE=big; else SIZE=base; fi ;;
esac
if [[ $SIZE == big ]]; then
  D_LR=1e-3; D_MAX_TOKENS=3584; D_TPU=458752; D_MAX_UPDATE=30000
  if [[ $TGT == fr ]]; then D_DROPOUT=0.1; else D_DROPOUT=0.3; fi
else
  D_LR=7e-4; D_MAX_TOKENS=4096; D_TPU=32768; D_MAX_UPDATE=100000; D_DROPOUT=0.1
fi
D_WARMUP=4000; D_ATTENTION_DROPOUT=; D_ACTIVATION_DROPOUT=
if [[ $RECIPE == rdrop-paper ]]; then
  [[ $TGT == de ]] || die "RECIPE=rdrop-paper is the posted En-De setup: use PAIR=en-de"
  D_LR=1e-3; D_MAX_TOKENS=4096; D_TPU=$(( 4096 * 16 * RECIPE_GPUS )); D_MAX_UPDATE=300000; D_WARMUP=6000
  D_DROPOUT=0.1; D_ATTENTION_DROPOUT=0.1; D_ACTIVATION_DROPOUT=0.1
fi
DATA_BIN=${DATA_BIN:-$REPO/data/wmt14_${SRC}_${TGT}/data-bin}
SAVE_DIR=${SAVE_DIR:-$REPO/checkpoints/wmt14_${PAIR}_${ARCH}_${MODE}}
USER_DIR=${USER_DIR-$REPO/fairseq_lrdrop}
HIDDEN_REG_WEIGHT=${HIDDEN_REG_WEIGHT:-0.1}
ATTN_REG_WEIGHT=${ATTN_REG_WEIGHT:-0.1}
OUTPUT_REG_WEIGHT=${OUTPUT_REG_WEIGHT:-5.0}
LABEL_SMOOTHING=${LABEL_SMOOTHING:-0.1}
LR=${LR:-$D_LR}
WARMUP=${WARMUP:-$D_WARMUP}
DROPOUT=${DROPOUT:-$D_DROPOUT}
ATTENTION_DROPOUT=${ATTENTION_DROPOUT:-$D_ATTENTION_DROPOUT}
ACTIVATION_DROPOUT=${ACTIVATION_DROPOUT:-$D_ACTIVATION_DROPOUT}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.0}
CLIP_NORM=${CLIP_NORM:-0.0}
MAX_TOKENS=${MAX_TOKENS:-$D_MAX_TOKENS}
TOKENS_PER_UPDATE=${TOKENS_PER_UPDATE:-$D_TPU}
MAX_UPDATE=${MAX_UPDATE:-$D_MAX_UPDATE}
SAVE_INTERVAL_UPDATES=${SAVE_INTERVAL_UPDATES:-1000}
KEEP_INTERVAL_UPDATES=${KEEP_INTERVAL_UPDATES:-20}
LOG_INTERVAL=${LOG_INTERVAL:-100}
SEED=${SEED:-1}
FP16=${FP16:-1}
LAUNCH=${LAUNCH:-}
EXTRA_ARGS=${EXTRA_ARGS:-}

for v in HIDDEN_REG_WEIGHT ATTN_REG_WEIGHT OUTPUT_REG_WEIGHT LABEL_SMOOTHING LR DROPOUT WEIGHT_DECAY CLIP_NORM; do
  number "$v" "${!v}"
done
DROPOUT_ARGS=(--dropout "$DROPOUT")
if [[ -n "$ATTENTION_DROPOUT" ]]; then number ATTENTION_DROPOUT "$ATTENTION_DROPOUT"; DROPOUT_ARGS+=(--attention-dropout "$ATTENTION_DROPOUT"); fi
if [[ -n "$ACTIVATION_DROPOUT" ]]; then number ACTIVATION_DROPOUT "$ACTIVATION_DROPOUT"; DROPOUT_ARGS+=(--activation-dropout "$ACTIVATION_DROPOUT"); fi
for v in WARMUP MAX_TOKENS TOKENS_PER_UPDATE MAX_UPDATE SAVE_INTERVAL_UPDATES KEEP_INTERVAL_UPDATES LOG_INTERVAL SEED; do
  nonneg_int "$v" "${!v}"
done
(( MAX_TOKENS > 0 )) || die "MAX_TOKENS must be > 0"
if [[ $MODE == lrdrop && -z "$USER_DIR" ]]; then die "MODE=lrdrop needs the plugin: set USER_DIR to the fairseq_lrdrop directory"; fi
check_user_dir

# data checks (before anything slow)
[[ -d "$DATA_BIN" ]] || die "DATA_BIN=$DATA_BIN does not exist: run examples/wmt14/prepare.sh (PAIR=$PAIR) first"
for f in dict.$SRC.txt dict.$TGT.txt train.$SRC-$TGT.$SRC.idx train.$SRC-$TGT.$TGT.idx valid.$SRC-$TGT.$SRC.idx valid.$SRC-$TGT.$TGT.idx; do
  [[ -s "$DATA_BIN/$f" ]] || die "DATA_BIN=$DATA_BIN lacks $f: it is not a binarized $PAIR data dir (run examples/wmt14/prepare.sh with PAIR=$PAIR)"
done
same_dicts "$DATA_BIN" "$SRC" "$TGT" ||
  die "--share-all-embeddings needs a joined dictionary but $DATA_BIN/dict.$SRC.txt != dict.$TGT.txt: rebinarize with fairseq-preprocess --joined-dictionary (examples/wmt14/prepare.sh does)"

NGPU=$(detect_gpus)
WORLD=$NGPU; (( WORLD < 1 )) && WORLD=1
if [[ -n "${UPDATE_FREQ:-}" ]]; then nonneg_int UPDATE_FREQ "$UPDATE_FREQ"; (( UPDATE_FREQ >= 1 )) || die "UPDATE_FREQ must be >= 1"
else UPDATE_FREQ=$(update_freq "$TOKENS_PER_UPDATE" "$WORLD" "$MAX_TOKENS"); fi
DEVICE_ARGS=()
if (( NGPU == 0 )); then DEVICE_ARGS+=(--cpu); DEV="CPU"
else DEV="$NGPU GPU(s)"; [[ $FP16 == 1 ]] && DEVICE_ARGS+=(--fp16); fi

case "$MODE" in
  baseline) CRIT=(--criterion label_smoothed_cross_entropy --label-smoothing "$LABEL_SMOOTHING") ;;
  rdrop) CRIT=(--criterion label_smoothed_cross_entropy_with_rdrop --label-smoothing "$LABEL_SMOOTHING"
               --rdrop-alpha "$OUTPUT_REG_WEIGHT") ;;
  lrdrop) CRIT=(--criterion lr_drop_label_smoothed_cross_entropy --label-smoothing "$LABEL_SMOOTHING"
                --hidden-reg-weight "$HIDDEN_REG_WEIGHT" --attn-reg-weight "$ATTN_REG_WEIGHT"
                --output-reg-weight "$OUTPUT_REG_WEIGHT") ;;
esac

mkdir -p "$SAVE_DIR"
mapfile -t UD < <(user_dir_args)
read -r -a EXTRA <<< "$EXTRA_ARGS"  # split on whitespace, no globbing, no quoting
ARGS=("$DATA_BIN" "${UD[@]}" --task translation --source-lang "$SRC" --target-lang "$TGT"
  --arch "$ARCH_NAME" --share-all-embeddings
  "${CRIT[@]}"
  --optimizer adam --adam-betas "(0.9, 0.98)" --clip-norm "$CLIP_NORM" --weight-decay "$WEIGHT_DECAY"
  --lr "$LR" --lr-scheduler inverse_sqrt --warmup-updates "$WARMUP" --warmup-init-lr 1e-07
  "${DROPOUT_ARGS[@]}"
  --max-tokens "$MAX_TOKENS" --update-freq "$UPDATE_FREQ" --max-update "$MAX_UPDATE"
  --save-dir "$SAVE_DIR" --save-interval-updates "$SAVE_INTERVAL_UPDATES"
  --keep-interval-updates "$KEEP_INTERVAL_UPDATES" --no-epoch-checkpoints
  --skip-invalid-size-inputs-valid-test
  --log-format simple --log-interval "$LOG_INTERVAL" --seed "$SEED"
  "${DEVICE_ARGS[@]}" "${EXTRA[@]}")

echo "recipe=$RECIPE mode=$MODE arch=$ARCH_NAME pair=$PAIR device=$DEV"
echo "effective batch: $WORLD worker(s) x $MAX_TOKENS tokens x update_freq $UPDATE_FREQ = $(( WORLD * MAX_TOKENS * UPDATE_FREQ )) tokens/update (target TOKENS_PER_UPDATE=$TOKENS_PER_UPDATE)"
if [[ -s "$SAVE_DIR/checkpoint_last.pt" ]]; then echo "resuming from $SAVE_DIR/checkpoint_last.pt"; fi
echo "checkpoints: $SAVE_DIR   log: $SAVE_DIR/train.log"
run_fairseq_train "$SAVE_DIR" "${ARGS[@]}"
