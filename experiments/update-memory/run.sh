#!/usr/bin/env bash
# The update's time and peak memory, three ways side by side (one process each, so each
# peak RSS is its own): plain (one graph, [B, T, vocab] logits: the trainer before
# chunking), chunked log-probs, chunked + recomputation; fp32 and bf16; two response
# lengths. A random Qwen3-VL text stack (hidden 256, 4 layers, the real 151,936-entry
# vocabulary, tied head: ~42 M parameters, 39 M of them the embedding), batch 2, prompt 32:
# small enough for 2 CPU cores, so the head's share of the time is far above an 8 B model's.
#   bash experiments/update-memory/run.sh            (writes results.jsonl beside this file)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash tools/setup.sh >/dev/null
cargo build --release --quiet -p qoq-policy --example bench_update
out=experiments/update-memory/results.jsonl
: > "$out"
for response in 128 512; do
    for dtype in "" "--bf16"; do
        for mode in plain chunked recompute; do
            ./target/release/examples/bench_update --mode "$mode" --hidden 256 --layers 4 --batch 2 --prompt 32 \
                --response "$response" $dtype --reps 2 | tee -a "$out"
        done
    done
done
