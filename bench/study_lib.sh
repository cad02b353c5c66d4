# Shared by bench/nlu_study.sh and bench/lm_study.sh (sourced, not run): the error line, the
# lanes that run a job file, and bench/diagnose.py on a finished run.
#
# Reads: HERE (bench/), PYTHON, LANES, THREADS (torch threads of each diagnosis, as of each
# run), DIAGNOSE (1: diagnose each run; 0: skip, the report's entropy columns then show "-");
# a job file's lines go to the function `job`, which the sourcing script defines and exports.

die() { echo "error: $*" >&2; exit 1; }

# run_jobs FILE: each line of FILE to `job`, LANES at a time
run_jobs() { [[ -s "$1" ]] || return 0; tr '\n' '\0' < "$1" | xargs -0 -P "$LANES" -I{} bash -c 'job "$@"' _ {}; }

# diagnose_run SAVE_DIR DATA_BIN: test-split entropies of SAVE_DIR/checkpoint_best.pt into
# SAVE_DIR/diagnose-test.json (kept on a rerun), its log in SAVE_DIR.diagnose.out
diagnose_run() {
  [[ "$DIAGNOSE" == 1 && ! -s "$1/diagnose-test.json" ]] || return 0
  OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" "$PYTHON" "$HERE/diagnose.py" --checkpoint "$1/checkpoint_best.pt" --data-bin "$2" --subset test \
    --json "$1/diagnose-test.json" > "$1.diagnose.out" 2>&1 \
    || { echo "FAILED diagnosing $1 (log: $1.diagnose.out)"; return 1; }
}
export -f diagnose_run
