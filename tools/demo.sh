#!/usr/bin/env bash
# The main job on the bundled default: a tiny random Qwen3-VL (with the real Qwen
# tokenizer) trained on the synthetic CLIMB-like set: a short SFT warm start, then DRPO
# (configs/demo.toml). Prints the RL reward of the first and last 10% of steps; outputs in
# runs/demo (TensorBoard: tensorboard --logdir runs/demo/tensorboard).
# Idempotent: the set and the tiny model are deterministic; each run starts runs/demo afresh.
#   bash tools/demo.sh            (SAMPLES=N to change the set size; default 1000;
#                                  NPROC=N to train on N local ranks, data parallel)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup.sh
samples=${SAMPLES:-1000}
cargo build --release --quiet --bin make-synthetic --bin train --bin make-tiny-checkpoint
./target/release/make-synthetic --out data/synthetic --samples "$samples" --seed 0 --force
[ -f data/tiny-qwen3-vl/config.json ] || ./target/release/make-tiny-checkpoint --out data/tiny-qwen3-vl
rm -rf runs/demo
./target/release/train configs/demo.toml --nproc "${NPROC:-1}"
