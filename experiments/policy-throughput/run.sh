#!/usr/bin/env bash
# Policy throughput: qoq-policy (Rust, tch/libtorch 2.11) vs transformers 5.x' Qwen3-VL, fp32
# on CPU, on the same random-initialised model (real 151,936-id vocabulary, small body, tied
# embeddings) and the same 8 prompts of 258 tokens with one 448x448 image each. For B = 1
# and 8 prompts, G = 5 samples each, N = 32 new tokens: load, prefill of the B prompts,
# generate; the two sides alternate, pinned to the same 2 cores with 2 threads each.
#   bash experiments/policy-throughput/run.sh
# POLICY_BENCH_DIR=DIR reuses (or makes once) the model and inputs there instead of a temp
# dir; CORES= (default 0,1), THREADS= (2), BATCHES= ("1 8"), SAMPLES= (5), NEW_TOKENS= (32)
# change the set-up. Needs the reference environment (bash tools/reference-env.sh prints its
# python). About 10 minutes on a quiet 2-core machine, most of it transformers' B = 8 run.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=$(bash tools/reference-env.sh)
bash tools/setup.sh >/dev/null
cargo build --release --quiet -p qoq-policy --example bench_policy
if [ -n "${POLICY_BENCH_DIR:-}" ]; then
    dir=$POLICY_BENCH_DIR
else
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
fi
if [ ! -f "$dir/inputs.safetensors" ] || [ ! -f "$dir/model/model.safetensors" ]; then
    "$py" experiments/policy-throughput/make_model.py --out "$dir" --seed 0
fi
cores=${CORES:-0,1}
threads=${THREADS:-2}
samples=${SAMPLES:-5}
new_tokens=${NEW_TOKENS:-32}
args=(--model "$dir/model" --inputs "$dir/inputs.safetensors" --samples "$samples" --new-tokens "$new_tokens" --threads "$threads")
for b in ${BATCHES:-1 8}; do
    echo "== batch $b, $samples samples, $new_tokens new tokens, $threads threads on cores $cores ($(cut -d' ' -f1-3 /proc/loadavg) load)"
    taskset -c "$cores" ./target/release/examples/bench_policy "${args[@]}" --batch "$b"
    taskset -c "$cores" "$py" experiments/policy-throughput/reference.py "${args[@]}" --batch "$b"
done
