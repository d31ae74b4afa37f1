#!/usr/bin/env bash
# Reward ablation on the bundled demo setting (tiny policy, synthetic set): the same run
# under five reward definitions. Each run prints its RL reward trend and final validation
# figures; TensorBoard files are under runs/reward-ablation/<variant>/tensorboard.
#   bash experiments/reward-ablation/run.sh [variant ...]     (default: all five)
# Rewards are on different scales across variants: compare val/accuracy and val/f1 (the
# paper's metrics, which do not depend on the reward weights), not reward/overall.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash tools/setup.sh
[ -f data/tiny-qwen3-vl/config.json ] || cargo run --release --quiet --bin make-tiny-checkpoint -- --out data/tiny-qwen3-vl
[ -d data/synthetic ] || cargo run --release --quiet --bin make-synthetic -- --out data/synthetic --samples 1000 --seed 0
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(qoq-med paper qoq-med3 f1-only no-iou)
cargo build --release --quiet --bin train
for v in "${variants[@]}"; do
    rm -rf "runs/reward-ablation/$v"
    echo "== $v"
    ./target/release/train "experiments/reward-ablation/$v.toml" 2>&1 | grep -E "^(RL reward|validation at|wall time)"
done
