#!/usr/bin/env bash
# Data-parallel figures on this machine (CPU, Gloo):
#   1. the demo (configs/demo.toml: 100 SFT + 50 DRPO steps) on 1 and on 2 ranks
#      (`train --nproc 2`): seconds per SFT and per RL step, wall time;
#   2. peak memory per rank for 1, 2 and 4 ranks, replicated vs sharded AdamW state, on
#      the 115 M-parameter policy of experiments/policy-throughput (memory.toml), with
#      every allocation over 1 MiB mmap'ed and returned on free (MALLOC_MMAP_THRESHOLD_,
#      a fixed threshold) so peak RSS is the peak of live memory, not of the allocator's cache.
#   bash experiments/data-parallel/run.sh [demo|memory]   (default: both)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
bash tools/setup.sh >/dev/null
py=$(bash tools/reference-env.sh)
cargo build --release -q --bin make-synthetic --bin train --bin make-tiny-checkpoint
work=${WORK:-$(mktemp -d)}
what=${1:-all}

if [ "$what" = all ] || [ "$what" = demo ]; then
    [ -f data/synthetic/synthetic-00000.parquet ] || ./target/release/make-synthetic --out data/synthetic --samples 1000 --seed 0 --force
    [ -f data/tiny-qwen3-vl/config.json ] || ./target/release/make-tiny-checkpoint --out data/tiny-qwen3-vl
    for n in 1 2; do
        sed "s|^output_dir = .*|output_dir = \"$work/demo$n\"|" configs/demo.toml > "$work/demo$n.toml"
        rm -rf "$work/demo$n"
        start=$(date +%s.%N)
        ./target/release/train "$work/demo$n.toml" --nproc "$n" > "$work/demo$n.out" 2> "$work/demo$n.err"
        end=$(date +%s.%N)
        echo "demo, $n rank(s): wall $(python3 -c "print(f'{$end - $start:.1f}')") s; $("$py" experiments/data-parallel/summarize.py "$work/demo$n"); $(grep '^RL reward' "$work/demo$n.out")"
        grep -h "peak RSS" "$work/demo$n.out" "$work/demo$n.err" | sed 's/^/    /'
    done
fi

if [ "$what" = all ] || [ "$what" = memory ]; then
    model="$work/policy115m"
    if [ ! -f "$model/model/config.json" ]; then
        "$py" experiments/policy-throughput/make_model.py --out "$model" --seed 0 >/dev/null
        cp .qwen-tokenizer/tokenizer.json "$model/model/"
    fi
    [ -f data/synthetic/synthetic-00000.parquet ] || ./target/release/make-synthetic --out data/synthetic --samples 1000 --seed 0 --force
    for run in "1 false" "2 false" "2 true" "4 false" "4 true"; do
        set -- $run
        name="mem-$1-$2"
        sed -e "s|OUT|$work/$name|; s|MODEL|$model/model|; s|SHARDS|$repo/data/synthetic|; s|SHARDED|$2|" \
            experiments/data-parallel/memory.toml > "$work/$name.toml"
        rm -rf "$work/$name"
        MALLOC_MMAP_THRESHOLD_=1048576 ./target/release/train "$work/$name.toml" --nproc "$1" > "$work/$name.out" 2> "$work/$name.err"
        rm -rf "$work/$name/checkpoints"   # 1.3 GB each
        echo "memory, $1 rank(s), sharded optimizer $2:"
        grep -h "peak RSS" "$work/$name.out" "$work/$name.err" | sed 's/^/    /'
    done
fi
echo "outputs in $work"
