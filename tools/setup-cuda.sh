#!/usr/bin/env bash
# CUDA build of the workspace against the full torch 2.11.0 wheel (cu130).
#
#   bash tools/setup-cuda.sh               # fetch + unpack the full tree (once), build into target/cuda
#   bash tools/setup-cuda.sh --print-env   # the LD_LIBRARY_PATH line for a GPU node
#
# This machine needs no GPU and no CUDA: libtorch_cuda is linked with
# -Wl,--no-as-needed (so it is not dropped) and -Wl,--allow-shlib-undefined (its CUDA
# dependencies are resolved on the GPU node). There, with torch==2.11.0+cu130 installed,
# put torch's lib folder and the nvidia/*/lib folders on LD_LIBRARY_PATH.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ "${1:-}" = "--print-env" ]; then
    cat <<'SH'
site=$(python3 -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))')
export LD_LIBRARY_PATH="$site/torch/lib$(ls -d "$site"/nvidia/*/lib 2>/dev/null | sed 's/^/:/' | tr -d '\n')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
SH
    exit 0
fi

# The full tree is made by tools/setup.sh (same download, lock and atomic publish).
tree=$(bash "$repo/tools/setup.sh" --cuda | tail -n 1)

cd "$repo"
# Only the crates that link libtorch need the CUDA build.
LIBTORCH="$tree" CARGO_TARGET_DIR="$repo/target/cuda" \
    cargo build --release -p qoq-policy --features cuda --examples
echo "setup-cuda: built target/cuda/release/examples/gpu_check; on a GPU node:"
echo "  eval \"\$(bash tools/setup-cuda.sh --print-env)\" && target/cuda/release/examples/gpu_check"
