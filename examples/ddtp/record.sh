# Sourced by examples/ddtp/finetune.sh and lm.sh. Needs SAVE_DIR and a die() that prints one
# line and exits.
#
# train_in_save_dir CMD...  runs one training: writes $SAVE_DIR/command.txt, logs to
#                           $SAVE_DIR/train.out, sets TRAIN_SECONDS; one line and exit 1 on
#                           failure or when no checkpoint_best.pt came out
train_in_save_dir() {
  printf '%q ' "$@" > "$SAVE_DIR/command.txt"; echo >> "$SAVE_DIR/command.txt"
  local start=$SECONDS
  "$@" > "$SAVE_DIR/train.out" 2>&1 || { tail -n 20 "$SAVE_DIR/train.out" >&2; die "training failed (log: $SAVE_DIR/train.out)"; }
  TRAIN_SECONDS=$((SECONDS - start))
  [[ -f "$SAVE_DIR/checkpoint_best.pt" ]] || die "training ended without $SAVE_DIR/checkpoint_best.pt (see $SAVE_DIR/train.out)"
}
