#!/usr/bin/env bash
# One-time, idempotent setup: a CPU-only libtorch 2.11.0 tree for tch 0.24.
#
# No libtorch zip can be downloaded from the package registries, but the torch 2.11.0
# wheel can: its torch/include + torch/lib form a libtorch tree. We keep the CPU
# libraries only (torch-sys links libtorch_cuda whenever it exists) and add the two
# small CUDA runtime libraries that libtorch_cpu.so still needs at load time.
#
# The tree is cached OUTSIDE the checkout, so every clone on this machine reuses it:
#   ${QOQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qoq-med}/libtorch-2.11.0-cpu
# and linked into the checkout as ./.libtorch (git-ignored), which .cargo/config.toml
# points LIBTORCH at. After this, plain `cargo build/test/run` work with no exports.
#
# `--cuda` builds the full tree instead (every library of the wheel, CUDA included, in
# .../libtorch-2.11.0-cu130), links nothing into the checkout and prints the tree's path
# as its last line: tools/setup-cuda.sh uses it.
set -euo pipefail

TORCH_VERSION=2.11.0
CUDART_VERSION=13.0.96
CUPTI_VERSION=13.0.85

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${QOQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qoq-med}
variant=cpu
[ "${1:-}" = "--cuda" ] && variant=cu130
tree="$cache/libtorch-$TORCH_VERSION-$variant"

need() { command -v "$1" >/dev/null 2>&1 || { echo "setup: '$1' is required but not on PATH; $2" >&2; exit 1; }; }
need cargo "install the Rust toolchain (rustup) first"
need python3 "install python3 with pip first"
python3 -m pip --version >/dev/null 2>&1 || { echo "setup: python3 has no pip; install it (e.g. apt-get install python3-pip)" >&2; exit 1; }

mkdir -p "$cache"
# One setup at a time per cache (CI jobs and clones share it).
exec 9>"$cache/.setup.lock"
flock 9
# Leftovers of a setup that was killed.
rm -rf "$cache"/.build.* 2>/dev/null || true

if [ ! -f "$tree/build-version" ]; then
    echo "setup: building a $variant libtorch $TORCH_VERSION tree in $tree (one time, ~550 MB download)" >&2
    work=$(mktemp -d "$cache/.build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    wheels=("torch==$TORCH_VERSION")
    [ "$variant" = cpu ] && wheels+=("nvidia-cuda-runtime==$CUDART_VERSION" "nvidia-cuda-cupti==$CUPTI_VERSION")
    python3 -m pip download --quiet --no-deps --dest "$work/wheels" "${wheels[@]}"
    python3 - "$work" "$variant" <<'PY'
import glob, os, shutil, sys, zipfile
work, variant = sys.argv[1], sys.argv[2]
out = os.path.join(work, "tree")
os.makedirs(os.path.join(out, "lib"))
keep_libs = ("libtorch_cpu.so", "libtorch.so", "libc10.so", "libshm.so",
             "libtorch_global_deps.so")
torch_whl = glob.glob(os.path.join(work, "wheels", "torch-*.whl"))[0]
with zipfile.ZipFile(torch_whl) as z:
    for name in z.namelist():
        if name.startswith("torch/include/"):
            z.extract(name, work)
        elif name.startswith("torch/lib/"):
            base = os.path.basename(name)
            if variant != "cpu" or base in keep_libs or base.startswith("libgomp"):
                z.extract(name, work)
shutil.move(os.path.join(work, "torch", "include"), os.path.join(out, "include"))
for f in glob.glob(os.path.join(work, "torch", "lib", "*")):
    shutil.move(f, os.path.join(out, "lib"))
for whl in glob.glob(os.path.join(work, "wheels", "nvidia_cuda_*.whl")):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            base = os.path.basename(name)
            if "/lib/" in name and (base.startswith("libcudart.so") or base.startswith("libcupti.so")):
                with z.open(name) as src, open(os.path.join(out, "lib", base), "wb") as dst:
                    shutil.copyfileobj(src, dst)
for f in os.listdir(os.path.join(out, "lib")):
    os.chmod(os.path.join(out, "lib", f), 0o755)
expected = keep_libs + (("libcudart.so.13", "libcupti.so.13") if variant == "cpu" else ("libtorch_cuda.so",))
missing = [l for l in expected if not os.path.exists(os.path.join(out, "lib", l))]
if missing:
    sys.exit(f"setup: the wheels lacked {missing}; is the torch version right?")
PY
    echo "$TORCH_VERSION" > "$work/tree/build-version"
    rm -rf "$tree"
    # Atomic publish: a killed setup never leaves a half-built tree that looks complete.
    mv "$work/tree" "$tree"
fi

if [ "$variant" != cpu ]; then
    echo "$tree"
    exit 0
fi
if [ -e "$repo/.libtorch" ] && [ ! -L "$repo/.libtorch" ]; then
    echo "setup: $repo/.libtorch exists and is not a link; move it away and run again" >&2
    exit 1
fi
ln -sfn "$tree" "$repo/.libtorch"
echo "setup: libtorch $(cat "$tree/build-version") at $tree (linked as .libtorch)"
