#!/usr/bin/env bash
# Builds the CUDA binaries (tools/setup-cuda.sh) and packs stripped, gzipped copies of
# train, make-tiny-checkpoint, make-synthetic and the bench_rollout example, and the Qwen
# tokenizer, into .gpu-carry/
# (~30 MB, ignored by git)
# for the device tool's `carry`: run(command="bash experiments/gpu/run.sh $OUT", carry=[".gpu-carry"]).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash tools/setup-cuda.sh
mkdir -p .gpu-carry
grep -qx '/.gpu-carry/' .git/info/exclude 2>/dev/null || echo '/.gpu-carry/' >> .git/info/exclude
for tool in train make-tiny-checkpoint make-synthetic; do
    strip -o ".gpu-carry/$tool" "target/cuda/release/$tool"
    gzip -f ".gpu-carry/$tool"
done
strip -o .gpu-carry/bench_rollout target/cuda/release/examples/bench_rollout
gzip -f .gpu-carry/bench_rollout
mkdir -p .gpu-carry/tokenizer
cp .qwen-tokenizer/tokenizer.json .gpu-carry/tokenizer/
[ -f .qwen-tokenizer/tokenizer_config.json ] && cp .qwen-tokenizer/tokenizer_config.json .gpu-carry/tokenizer/
du -sh .gpu-carry
