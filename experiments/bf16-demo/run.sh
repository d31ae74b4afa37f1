#!/usr/bin/env bash
# The demo in fp32 and in bf16 with fp32 masters (configs/demo.toml, configs/demo-bf16.toml),
# one after the other, then their SFT losses and RL rewards side by side (compare.py).
#   bash experiments/bf16-demo/run.sh        (about 10 minutes each on the idle 2-core machine)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
work=${WORK:-runs/bf16-demo}
mkdir -p "$work"
SET=climb bash tools/demo.sh > "$work/fp32.out" 2>&1
DTYPE=bfloat16 bash tools/demo.sh > "$work/bf16.out" 2>&1
python3 experiments/bf16-demo/compare.py "$work/fp32.out" "$work/bf16.out"
