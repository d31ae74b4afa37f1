#!/usr/bin/env bash
# Rollout throughput: the rollout engine (qoq-policy, Rust on libtorch 2.11) against
# transformers 5.24's `generate`, fp32 on this machine's CPU, side by side on the same random
# Qwen3-VL (real 151,936-id vocabulary, a realistic top-p nucleus, an end-of-sequence bias
# that spreads response lengths; make_model.py) and the same prompts of 136 tokens with one
# image each. G = 5, temperature 1, top-p 0.99, up to NEW_TOKENS (64) new tokens:
#   mixed lengths: responses end at <|im_end|>, anywhere from 1 to NEW_TOKENS tokens;
#   equal lengths: no end-of-sequence token, every response runs NEW_TOKENS.
# Rollout batches of 8 and 64 prompts; the engine has SLOTS (40 = 8 prompts x G) slots for
# both. Each run is its own process, pinned to CORES (0,1) with THREADS (2) threads; the
# two sides alternate. SEED (0) seeds both sides' sampling (the model is always seed 0).
# Ends with the summary line (summarize.py).
#   bash experiments/rollout-throughput/run.sh
# ROLLOUT_BENCH_DIR=DIR keeps the model and the results there (and reuses a model made there).
# About 12 minutes on a quiet 2-core machine, 9 of them transformers' runs; all timings grow
# with the machine's load, so run it alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
py=$(bash tools/reference-env.sh)
bash tools/setup.sh >/dev/null
cargo build --release --quiet -p qoq-policy --example bench_rollout
if [ -n "${ROLLOUT_BENCH_DIR:-}" ]; then
    dir=$ROLLOUT_BENCH_DIR
    mkdir -p "$dir"
else
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
fi
cores=${CORES:-0,1}
threads=${THREADS:-2}
new_tokens=${NEW_TOKENS:-64}
if [ ! -f "$dir/inputs.safetensors" ] || [ ! -f "$dir/model/model.safetensors" ]; then
    # Also prints the nucleus sizes and a 40-response length histogram (about 40 s).
    taskset -c "$cores" "$py" experiments/rollout-throughput/make_model.py --out "$dir" --seed 0 --check-tokens "$new_tokens"
fi
slots=${SLOTS:-40}
results="$dir/results.jsonl"
: > "$results"
args=(--model "$dir/model" --inputs "$dir/inputs.safetensors" --samples 5 --new-tokens "$new_tokens" --threads "$threads" --seed "${SEED:-0}")
for stop in mixed none; do
    for batch in 8 64; do
        echo "== $stop lengths, $batch prompts x 5, $new_tokens new tokens ($(cut -d' ' -f1-3 /proc/loadavg) load)" >&2
        taskset -c "$cores" ./target/release/examples/bench_rollout "${args[@]}" --batch "$batch" --stop "$stop" --slots "$slots" | tee -a "$results" >&2
        taskset -c "$cores" "$py" experiments/rollout-throughput/reference.py "${args[@]}" --batch "$batch" --stop "$stop" | tee -a "$results" >&2
    done
done
echo "whole script: $(( $(date +%s) - start )) s; results in $results" >&2
"$py" experiments/rollout-throughput/summarize.py "$results"
