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
TORCH_VERSION=2.11.0
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${QOQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qoq-med}
tree="$cache/libtorch-$TORCH_VERSION-cu130"

if [ "${1:-}" = "--print-env" ]; then
    cat <<'SH'
site=$(python3 -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))')
export LD_LIBRARY_PATH="$site/torch/lib$(ls -d "$site"/nvidia/*/lib 2>/dev/null | sed 's/^/:/' | tr -d '\n')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
SH
    exit 0
fi

if [ ! -f "$tree/build-version" ]; then
    echo "setup-cuda: unpacking the full torch $TORCH_VERSION wheel into $tree (one time)"
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/.build-cuda.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    python3 -m pip download --quiet --no-deps --dest "$work/wheels" "torch==$TORCH_VERSION"
    python3 - "$work" <<'PY'
import glob, os, shutil, sys, zipfile
work = sys.argv[1]
whl = glob.glob(os.path.join(work, "wheels", "torch-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(("torch/include/", "torch/lib/")):
            z.extract(name, work)
os.makedirs(os.path.join(work, "tree"))
shutil.move(os.path.join(work, "torch", "include"), os.path.join(work, "tree", "include"))
shutil.move(os.path.join(work, "torch", "lib"), os.path.join(work, "tree", "lib"))
if not os.path.exists(os.path.join(work, "tree", "lib", "libtorch_cuda.so")):
    sys.exit("setup-cuda: this torch wheel has no libtorch_cuda.so")
PY
    echo "$TORCH_VERSION" > "$work/tree/build-version"
    rm -rf "$tree"
    mv "$work/tree" "$tree"
fi

cd "$repo"
# Only the crates that link libtorch need the CUDA build.
LIBTORCH="$tree" CARGO_TARGET_DIR="$repo/target/cuda" \
    cargo build --release -p qoq-policy --features cuda --examples
echo "setup-cuda: built target/cuda/release/examples/gpu_check; on a GPU node:"
echo "  eval \"\$(bash tools/setup-cuda.sh --print-env)\" && target/cuda/release/examples/gpu_check"
