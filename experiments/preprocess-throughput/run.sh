#!/usr/bin/env bash
# Read + decode + Qwen3-VL preprocess throughput, qoq-data vs transformers, on the same
# synthetic shards (512x512 PNGs) in one run on this machine.
#   bash experiments/preprocess-throughput/run.sh [SAMPLES]      (default 1024)
# Needs the reference environment: bash tools/reference-env.sh (prints its python).
set -euo pipefail
cd "$(dirname "$0")/../.."
samples=${1:-1024}
py=$(bash tools/reference-env.sh)
bash tools/setup.sh >/dev/null
cargo build --release --quiet --bin make-synthetic --example bench_preprocess
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
./target/release/make-synthetic --out "$dir" --samples "$samples" --seed 0 >/dev/null
# 16777216: Qwen3-VL's default budget, no resize for 512x512; 131072: a downscale to 352x352.
for max_pixels in 16777216 131072; do
    for t in 1 2; do
        ./target/release/examples/bench_preprocess "$dir" --threads "$t" --max-pixels "$max_pixels"
        "$py" experiments/preprocess-throughput/reference.py "$dir" --threads "$t" --max-pixels "$max_pixels" 2>/dev/null
    done
done
