# Sourced by examples/ddtp/pretrain.sh and finetune.sh: the small RoBERTa both build, so a
# fine-tuning run loads the pre-trained weights into exactly the same shapes.
# Knobs (default): LAYERS=2 EMBED_DIM=128 FFN_DIM=512 HEADS=4 MAX_POSITIONS=128
LAYERS="${LAYERS:-2}" EMBED_DIM="${EMBED_DIM:-128}" FFN_DIM="${FFN_DIM:-512}" HEADS="${HEADS:-4}"
MAX_POSITIONS="${MAX_POSITIONS:-128}"
for knob in LAYERS EMBED_DIM FFN_DIM HEADS MAX_POSITIONS; do
  [[ "${!knob}" =~ ^[1-9][0-9]*$ ]] || { echo "error: $knob must be a positive whole number, got '${!knob}'" >&2; exit 1; }
done
ENCODER_ARGS=(--encoder-layers "$LAYERS" --encoder-embed-dim "$EMBED_DIM" --encoder-ffn-embed-dim "$FFN_DIM"
  --encoder-attention-heads "$HEADS" --max-positions "$MAX_POSITIONS")
