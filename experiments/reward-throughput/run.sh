#!/usr/bin/env bash
# Reward throughput: qoq-rewards vs QoQ-Med's original Python reward on the same 2,560
# responses (one training step's worth: 320 prompts x 8 rollouts), in one run, pinned to
# the same 2 cores. Two sets: box ground truth (text-only work: parsing, F1, box IoU) and
# 512x512 mask ground truth.
#   bash experiments/reward-throughput/run.sh PATH/TO/QoQ_Med/examples/reward_function/medical.py
# Needs the reference environment (bash tools/reference-env.sh prints its python). The
# original's code is not in this repository: pass the path of a copy of medical.py.
set -euo pipefail
medical_py=${1:?usage: run.sh PATH/TO/medical.py}
medical_py=$(realpath "$medical_py")
cd "$(dirname "$0")/../.."
py=$(bash tools/reference-env.sh)
bash tools/setup.sh >/dev/null
cargo build --release --quiet --example bench_rewards --bin score
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cores=${CORES:-0,1}
for kind in text mask; do
    flag=(); [ "$kind" = mask ] && flag=(--masks)
    "$py" experiments/reward-throughput/make_set.py --out "$dir/$kind" --n 2560 --seed 0 "${flag[@]}"
    echo "== $kind: qoq-rewards, 1 and 2 threads (scoring only, masks decoded once beforehand)"
    for t in 1 2; do
        taskset -c "$cores" ./target/release/examples/bench_rewards "$dir/$kind/responses.jsonl" --threads "$t" --repeat 20
    done
    echo "== $kind: score tool end to end (read, decode masks, score, write), 2 threads"
    /usr/bin/time -f '{"score_tool_wall_s": %e, "max_rss_kib": %M}' \
        taskset -c "$cores" ./target/release/score --input "$dir/$kind/responses.jsonl" --output "$dir/$kind/out.jsonl" --threads 2 2>&1 | tail -1
    echo "== $kind: original medical_compute_score (one process, as the reward manager calls it), torch threads 1 and 2"
    for t in 1 2; do
        taskset -c "$cores" "$py" experiments/reward-throughput/reference.py --medical-py "$medical_py" \
            --input "$dir/$kind/responses.jsonl" --repeat 2 --threads "$t"
    done
done
