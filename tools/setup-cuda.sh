#!/usr/bin/env bash
# CUDA build of the workspace against the full torch 2.11.0 wheel (cu130).
#
#   bash tools/setup-cuda.sh               # fetch + unpack the full tree (once), build into target/cuda
#                                          # (gpu_check, and train / export with NCCL)
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

# Headers for qoq-dist's ProcessGroupNCCL: nccl.h and the CUDA headers ATen/cuda includes
# (cuda_runtime, cublas, cusparse, cusolver: the nvidia-* packages torch 2.11.0 installs
# with itself, taken from the reference environment, or from QOQ_CUDA_INCLUDE), plus
# crt/ and nv/target from two small header wheels. Merged once into one cached folder.
cache=${QOQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qoq-med}
headers="$cache/cuda-headers-13.0"
if [ -z "${QOQ_CUDA_INCLUDE:-}" ]; then
    if [ ! -f "$headers/build-version" ]; then
        py=$(bash "$repo/tools/reference-env.sh")
        nvidia=$("$py" -c 'import nvidia; print(list(nvidia.__path__)[0])')
        work=$(mktemp -d "$cache/.build.XXXXXX")
        trap 'rm -rf "$work"' EXIT
        mkdir -p "$work/include"
        cp -r "$nvidia/cu13/include/." "$work/include/"
        cp -r "$nvidia/nccl/include/." "$work/include/"
        python3 -m pip download --quiet --no-deps --dest "$work/wheels" "nvidia-cuda-crt==13.0.88" "nvidia-cuda-cccl==13.0.85"
        python3 - "$work" <<'PY'
import glob, os, sys, zipfile
work = sys.argv[1]
for whl in glob.glob(os.path.join(work, "wheels", "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            if name.startswith("nvidia/cu13/include/") and not name.endswith("/"):
                dest = os.path.join(work, "include", name[len("nvidia/cu13/include/"):])
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with z.open(name) as src, open(dest, "wb") as dst:
                    dst.write(src.read())
for need in ("nccl.h", "cuda_runtime.h", "cublas_v2.h", "cusparse.h", "cusolverDn.h", "crt/host_config.h", "nv/target"):
    if not os.path.exists(os.path.join(work, "include", need)):
        sys.exit(f"setup-cuda: {need} is missing from the merged CUDA headers")
PY
        echo 13.0 > "$work/include/build-version"
        rm -rf "$headers"
        mv "$work/include" "$headers"
    fi
    export QOQ_CUDA_INCLUDE="$headers"
fi

cd "$repo"
# Only the crates that link libtorch need the CUDA build.
LIBTORCH="$tree" CARGO_TARGET_DIR="$repo/target/cuda" \
    cargo build --release -p qoq-policy --features cuda --examples
LIBTORCH="$tree" CARGO_TARGET_DIR="$repo/target/cuda" \
    cargo build --release -p qoq-tools --features cuda --bins
echo "setup-cuda: built target/cuda/release/{train,export,diagnose,...} and examples/gpu_check; on a GPU node:"
echo "  eval \"\$(bash tools/setup-cuda.sh --print-env)\" && target/cuda/release/examples/gpu_check"
echo "  eval \"\$(bash tools/setup-cuda.sh --print-env)\" && torchrun --no-python --nproc-per-node 8 target/cuda/release/train CONFIG"
