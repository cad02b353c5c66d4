# Sourced by bench/quality-cpu.sh and bench/quality-converged-cpu.sh: the CPU-sized model and
# optimizer of BENCHMARKS.md's quality studies, as defaults the caller's environment overrides.
# Knobs (default): ENCODER_LAYERS=2 DECODER_LAYERS=2 EMBED_DIM=128 FFN_DIM=512 HEADS=4
#   DROPOUT=0.3 MAX_TOKENS=2048 LR=2e-3 WARMUP=200 NUM_WORKERS=0 SPM_VOCAB=2000 SUM_SPM_VOCAB=2000
export ENCODER_LAYERS="${ENCODER_LAYERS:-2}" DECODER_LAYERS="${DECODER_LAYERS:-2}"
export EMBED_DIM="${EMBED_DIM:-128}" FFN_DIM="${FFN_DIM:-512}" HEADS="${HEADS:-4}"
export DROPOUT="${DROPOUT:-0.3}" MAX_TOKENS="${MAX_TOKENS:-2048}" LR="${LR:-2e-3}"
export WARMUP="${WARMUP:-200}" NUM_WORKERS="${NUM_WORKERS:-0}"
export SPM_VOCAB="${SPM_VOCAB:-2000}" SUM_SPM_VOCAB="${SUM_SPM_VOCAB:-2000}"
