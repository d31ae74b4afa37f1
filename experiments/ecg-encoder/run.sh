#!/usr/bin/env bash
# The ECG encoder's forward (ECG-JEPA at full size, 85.4 M parameters, plus the projection
# into Qwen3-VL-8B's 4,096), this framework against tools/ecg_jepa_reference.py on PyTorch,
# the same weights and inputs, each side in its own process. Prints one JSON line per
# (side, batch size): median ms per forward, ms per ECG, peak and growth of RSS, and the
# largest difference from PyTorch's embeddings. About 2 minutes on 2 cores.
#   bash experiments/ecg-encoder/run.sh            (THREADS=N, BATCH=1,8, ITERS=3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash tools/setup.sh >/dev/null
py=$(bash tools/reference-env.sh)
cargo build --release --quiet --example bench_ecg -p qoq-policy
work=${WORK:-/tmp/ecg-encoder-bench}
mkdir -p "$work"
[ -f "$work/weights-4096.safetensors" ] || "$py" experiments/ecg-encoder/bench.py make --out "$work" --hidden 4096
args=(--weights "$work/weights-4096.safetensors" --inputs "$work/inputs-4096.safetensors"
      --batch "${BATCH:-1,8}" --threads "${THREADS:-2}" --iters "${ITERS:-3}")
"$py" experiments/ecg-encoder/bench.py bench "${args[@]}"
./target/release/examples/bench_ecg "${args[@]}"
