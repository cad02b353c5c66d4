# Shared helpers of the example pipelines (examples/wmt14, examples/cnndm, examples/glue).
# Sourced, not run.
# Every pipeline script sets REPO before sourcing this file.

# PYTHON: interpreter with fairseq installed. Default: the project's venv when present,
# else python3 on PATH.
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

# Checkpoint loading: fairseq 0.12 calls torch.load without weights_only, which torch >= 2.6
# refuses for fairseq checkpoints. The plugin (USER_DIR, imported via --user-dir) makes
# fairseq's loader work again with weights_only=True plus an allow-list, so the scripts keep
# USER_DIR set by default. With USER_DIR= (stock fairseq) and torch >= 2.6, loading a
# checkpoint (resume, --restore-file, fairseq-generate) fails unless you accept full
# unpickling of your own files yourself (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1).

die() { echo "error: $*" >&2; exit 2; }
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# need_file PATH HINT: one-line error when PATH is not a non-empty file.
need_file() { [[ -s "$1" ]] || die "missing file $1 ($2)"; }

# nonneg_int NAME VALUE
nonneg_int() { [[ "$2" =~ ^[0-9]+$ ]] || die "$1 must be a non-negative integer, got '$2'"; }
number() { [[ "$2" =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] || die "$1 must be a number, got '$2'"; }

# detect_gpus: number of CUDA GPUs this process will see. NUM_GPUS overrides.
# Honours CUDA_VISIBLE_DEVICES (empty or -1 = none); nvidia-smi -L when present, else torch.
detect_gpus() {
  if [[ -n "${NUM_GPUS:-}" ]]; then nonneg_int NUM_GPUS "$NUM_GPUS"; echo "$NUM_GPUS"; return; fi
  local n=0
  if command -v nvidia-smi >/dev/null 2>&1; then
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  else
    n=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
  fi
  if [[ -n "${CUDA_VISIBLE_DEVICES+x}" ]]; then
    local cvd="${CUDA_VISIBLE_DEVICES// /}" k
    if [[ -z "$cvd" || "$cvd" == -1* ]]; then k=0; else k=$(awk -F, '{print NF}' <<<"$cvd"); fi
    (( k < n )) && n=$k
  fi
  echo "${n:-0}"
}

# update_freq TOKENS_PER_UPDATE WORLD MAX_TOKENS -> ceil(T / (W * M)), at least 1
update_freq() {
  local t=$1 w=$2 m=$3
  (( w < 1 )) && w=1
  local uf=$(( (t + w * m - 1) / (w * m) ))
  (( uf < 1 )) && uf=1
  echo "$uf"
}

# same_dicts DIR SRC TGT: dict.SRC.txt and dict.TGT.txt are identical (joined dictionary)
same_dicts() { cmp -s "$1/dict.$2.txt" "$1/dict.$3.txt"; }

# user_dir_args: --user-dir flag unless USER_DIR is empty
user_dir_args() { if [[ -n "${USER_DIR:-}" ]]; then printf '%s\n' --user-dir "$USER_DIR"; fi; }

# atomic_cat OUT IN...: concatenate into OUT via a temporary file
atomic_cat() {
  local out=$1; shift
  cat "$@" > "$out.tmp.$$"
  mv -f "$out.tmp.$$" "$out"
}

# done_or_run MARKER DESCRIPTION: returns 0 (skip) when MARKER exists
skip_if_done() {
  if [[ -e "$1" ]]; then log "skip: $2 (found $1)"; return 0; fi
  return 1
}

# run_fairseq_train SAVE_DIR ARG...: fairseq-train (through $LAUNCH, e.g. torchrun, when set),
# the command and its output appended to SAVE_DIR/train.log; fails when no checkpoint came out.
run_fairseq_train() {
  local save_dir=$1 cmd
  shift
  if [[ -n "${LAUNCH:-}" ]]; then
    read -r -a cmd <<< "$LAUNCH"
    cmd+=(-m fairseq_cli.train)
  else
    cmd=("$PYTHON" -m fairseq_cli.train)
  fi
  echo "# $(date -u +%FT%TZ) ${cmd[*]} $*" >> "$save_dir/train.log"
  "${cmd[@]}" "$@" 2>&1 | tee -a "$save_dir/train.log"
  [[ -s "$save_dir/checkpoint_last.pt" ]] || die "training wrote no checkpoint (see $save_dir/train.log)"
  echo "checkpoints written to: $save_dir"
}

# generate_once OUT ERR_LOG CHECKPOINT COMMAND...: run COMMAND (a fairseq-generate line) with
# stdout to OUT and stderr to ERR_LOG, unless OUT exists, is newer than CHECKPOINT and was
# made by the very same command line (kept in OUT.cmd): a rerun with other decoding settings
# (BEAM, LENPEN, lengths, EXTRA_ARGS, ...) generates again. OUT is written atomically.
generate_once() {
  local out=$1 err_log=$2 checkpoint=$3 cmd
  shift 3
  cmd=$(printf '%q ' "$@")
  if [[ -s "$out" && "$out" -nt "$checkpoint" && -s "$out.cmd" && "$(cat "$out.cmd")" == "$cmd" ]]; then
    log "skip: generation (found $out, newer than $checkpoint, same command line)"
    return 0
  fi
  rm -f "$out.cmd"
  "$@" > "$out.tmp.$$" 2> "$err_log" ||
    { tail -n 20 "$err_log" >&2; rm -f "$out.tmp.$$"; die "fairseq-generate failed (log: $err_log)"; }
  mv -f "$out.tmp.$$" "$out"
  printf '%s\n' "$cmd" > "$out.cmd"
}

# check_user_dir: USER_DIR is empty (stock fairseq) or the plugin package
check_user_dir() {
  if [[ -n "${USER_DIR:-}" && ! -f "$USER_DIR/__init__.py" ]]; then
    die "USER_DIR=$USER_DIR is not the plugin package (no __init__.py); set USER_DIR to .../fairseq_lrdrop, or USER_DIR= for stock fairseq"
  fi
}

# check_mode: MODE is one of baseline, rdrop, lrdrop
check_mode() {
  case "$MODE" in baseline|rdrop|lrdrop) ;; *) die "unknown MODE='$MODE': use MODE=baseline, MODE=rdrop or MODE=lrdrop" ;; esac
}
