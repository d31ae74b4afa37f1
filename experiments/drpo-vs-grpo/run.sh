#!/usr/bin/env bash
# DRPO vs GRPO on the skewed benchmark (docs/benchmark.md): one shared SFT checkpoint, then
# GRPO, DRPO, DRPO-DomainOnly and Dr.GRPO with the same compute from it, each on SEEDS; every
# run and the SFT checkpoint are evaluated with `eval` on the held-out test split; then
# analyze.py checks the reports independently and writes results.json, the README table and
# the plots.
#   bash experiments/drpo-vs-grpo/run.sh                 (all; SEEDS="0 1 2")
#   METHODS="grpo drpo" SEEDS="0" bash experiments/drpo-vs-grpo/run.sh
# Runs already evaluated are kept (delete runs/drpo-vs-grpo/eval/<method>-seed<S> to redo one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
here=experiments/drpo-vs-grpo
out=runs/drpo-vs-grpo
seeds=${SEEDS:-0 1 2}
methods=${METHODS:-grpo drpo drpo-domain-only dr-grpo}
test_samples=${TEST_SAMPLES:-510}
# BIN: where the binaries are (default: built here); a copy keeps a long run on one build.
bin=${BIN:-target/release}
if [ -z "${BIN:-}" ]; then
    bash tools/setup.sh
    cargo build --release --quiet --bin make-synthetic --bin train --bin make-tiny-checkpoint --bin eval
fi
[ -f data/tiny-qwen3-vl/config.json ] || "$bin/make-tiny-checkpoint" --out data/tiny-qwen3-vl
[ -d data/benchmark ] || "$bin/make-synthetic" --kind benchmark --out data/benchmark --seed 0
started=$(date +%s)
evaluate() { # name model
    [ -f "$out/eval/$1/report.json" ] && return 0
    "$bin/eval" --model "$2" --data data/benchmark --split test --max-samples "$test_samples" \
        --batch 64 --max-new-tokens 24 --config configs/benchmark.toml --out "$out/eval/$1" | tail -n +1
}
sft=$out/sft/checkpoints/step_80/model
if [ ! -f "$sft/config.json" ]; then
    rm -rf "$out/sft"
    "$bin/train" "$here/sft.toml"
fi
[ -n "${SKIP_SFT_EVAL:-}" ] || evaluate sft-seed0 "$sft"
for seed in $seeds; do
    for m in $methods; do
        name=$m-seed$seed
        [ -f "$out/eval/$name/report.json" ] && continue
        cfg=$out/$name.toml
        printf 'base = "../../%s/%s.toml"\n[run]\nseed = %s\noutput_dir = "%s/%s"\n[data]\nseed = %s\n' \
            "$here" "$m" "$seed" "$out" "$name" "$seed" > "$cfg"
        rm -rf "${out:?}/$name"
        echo "== $name"
        "$bin/train" "$cfg" 2>&1 | grep -E "^(RL reward|validation at|wall time)"
        last=$(ls -d "$out/$name"/checkpoints/step_* | sort -t_ -k2 -n | tail -1)
        evaluate "$name" "$last/model"
    done
done
echo "all runs: $(( ($(date +%s) - started) / 60 )) min"
[ -z "${SKIP_ANALYSIS:-}" ] || exit 0
py=python3
[ -x "$HOME/.cache/qoq-med/analysis-venv/bin/python" ] || {
    python3 -m venv "$HOME/.cache/qoq-med/analysis-venv" && "$HOME/.cache/qoq-med/analysis-venv/bin/pip" install -q matplotlib; }
py=$HOME/.cache/qoq-med/analysis-venv/bin/python
"$py" "$here/analyze.py" --runs "$out" --plot
