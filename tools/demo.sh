#!/usr/bin/env bash
# The main job on the bundled default: make the synthetic CLIMB-like set and run the data
# pipeline over it (read -> validate -> decode -> Qwen3-VL preprocess) with a progress
# bar and a summary. Idempotent: the set is deterministic and rewritten each time.
#   bash tools/demo.sh            (SAMPLES=N to change the size; default 1000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup.sh
samples=${SAMPLES:-1000}
cargo run --release --quiet --bin make-synthetic -- --out data/synthetic --samples "$samples" --seed 0 --force
cargo run --release --quiet --bin inspect-data -- --config configs/data/synthetic.toml --preprocess
