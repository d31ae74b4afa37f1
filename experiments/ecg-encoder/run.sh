#!/usr/bin/env bash
# ECG encoder cost: qoq-policy's time_series_embedding (Rust, tch/libtorch 2.11) vs the PyTorch
# reference (tools/ecg_jepa_reference.py, torch 2.11), fp32 on CPU, same weights (ECG-JEPA's
# full-size encoder + projection 768 -> HIDDEN, seeded random) and same input. Per repetition,
# per configuration, the Rust side then the PyTorch side, each in its own process, pinned to
# the same cores:
#   no-grad forward, threads 1 and 2, B = 1 (1 warm-up, 3 timed) and B = 8 (1 timed);
#   forward + backward (--grad), 2 threads, B = 1 (1 warm-up, 2 timed);
#   bf16 weights and input, no-grad, 2 threads, B = 1 and 8 (1 warm-up, 1 timed);
# then once per side a memory-only check (no-grad B = 1, 8; --grad B = 1) with glibc's mmap
# threshold fixed at 64 KiB (every tensor its own mapping, returned on free, so the RSS follows
# the live tensors).
# Writes experiments/ecg-encoder/results.json and prints the table (medians over repetitions).
#   bash experiments/ecg-encoder/run.sh
# ECG_BENCH_DIR=DIR keeps (or reuses) the weights and input there (354 MB) instead of a temp
# dir; HIDDEN= (4096; 3584 for Qwen2.5-VL-7B), REPS= (3), THREADS= ("1 2"), BATCHES= ("1 8"),
# CORES= (0,1), GRAD= (1; 0 skips the backward rows), GRAD_BATCHES= ("1"), MMAP_CHECK= (1),
# BF16= (1; 0 skips the bf16 no-grad rows at 2 threads). About 6 minutes on a quiet 2-core EPYC.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=experiments/ecg-encoder
py=$(bash tools/reference-env.sh)
bash tools/setup.sh >/dev/null
cargo build --release --quiet -p qoq-policy --example bench_ecg
bin=./target/release/examples/bench_ecg
hidden=${HIDDEN:-4096}
reps=${REPS:-3}
cores=${CORES:-0,1}
raw=$(mktemp -d)
if [ -n "${ECG_BENCH_DIR:-}" ]; then
    dir=$ECG_BENCH_DIR
    mkdir -p "$dir"
else
    dir=$(mktemp -d)
fi
cleanup() {
    rm -rf "$raw"
    if [ -z "${ECG_BENCH_DIR:-}" ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT
weights=$dir/weights-$hidden.safetensors
inputs=$dir/inputs-$hidden.safetensors
if [ ! -f "$weights" ] || [ ! -f "$inputs" ]; then
    "$py" $here/bench.py make --out "$dir" --hidden "$hidden" --seed 0
fi
common=(--weights "$weights" --inputs "$inputs")

# one NAME ARGS...: the Rust side, then the PyTorch side, same arguments.
one() {
    local name=$1
    shift
    echo "== $name $* ($(cut -d' ' -f1-3 /proc/loadavg) load)" >&2
    taskset -c "$cores" $bin "${common[@]}" --hidden "$hidden" "$@" --json "$raw/${name}_rust.json" >/dev/null
    taskset -c "$cores" "$py" $here/bench.py bench "${common[@]}" "$@" --json "$raw/${name}_torch.json" >/dev/null
}

start=$(date +%s)
for rep in $(seq 1 "$reps"); do
    for t in ${THREADS:-1 2}; do
        for b in ${BATCHES:-1 8}; do
            if [ "$b" -eq 1 ]; then it=(--warmup 1 --iters 3); else it=(--warmup 0 --iters 1); fi
            one "nograd_t${t}_b${b}_r${rep}" --threads "$t" --batch "$b" "${it[@]}"
        done
    done
    if [ "${GRAD:-1}" = 1 ]; then
        for b in ${GRAD_BATCHES:-1}; do
            if [ "$b" -eq 1 ]; then it=(--warmup 1 --iters 2); else it=(--warmup 0 --iters 1); fi
            one "grad_t2_b${b}_r${rep}" --threads 2 --batch "$b" --grad "${it[@]}"
        done
    fi
    if [ "${BF16:-1}" = 1 ]; then
        for b in ${BATCHES:-1 8}; do
            one "nograd_bf16_t2_b${b}_r${rep}" --threads 2 --batch "$b" --bf16 --warmup 1 --iters 1
        done
    fi
done
if [ "${MMAP_CHECK:-1}" = 1 ]; then
    export MALLOC_MMAP_THRESHOLD_=65536
    for b in ${BATCHES:-1 8}; do
        one "mmap_t2_b${b}" --threads 2 --batch "$b" --warmup 0 --iters 1
    done
    if [ "${GRAD:-1}" = 1 ]; then one "mmapgrad_t2_b1" --threads 2 --batch 1 --grad --warmup 1 --iters 1; fi
    unset MALLOC_MMAP_THRESHOLD_
fi
elapsed=$(( $(date +%s) - start ))

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
torch_version=$("$py" -c 'import torch; print(torch.__version__)')
python3 $here/summarize.py "$raw" $here/results.json "cpu=$cpu" "cores=$cores" "hidden=$hidden" "reps=$reps" \
    "torch=$torch_version" "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" "bench_seconds=$elapsed"
echo "($elapsed s of measurement; $here/results.json)"
