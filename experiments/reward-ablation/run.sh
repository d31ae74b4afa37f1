#!/usr/bin/env bash
# Reward ablation on the CLIMB-like demo setting (tiny policy, synthetic set with boxes and
# masks, so every reward term is active): one shared SFT checkpoint (configs/demo.toml's 100
# SFT steps), then its 50 DRPO steps under five reward definitions, each on SEEDS. Every run
# is evaluated with `eval` on the set's val split (greedy, under its own reward weights), and
# summarize.py prints mean +- std over seeds.
#   bash experiments/reward-ablation/run.sh                    (all five; SEEDS="0 1 2")
#   SEEDS=0 bash experiments/reward-ablation/run.sh f1-only    (one)
# Rewards are on different scales across variants: compare accuracy and F1 (the paper's
# metrics, which do not depend on the reward weights), not the reward.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
here=experiments/reward-ablation
out=runs/reward-ablation
seeds=${SEEDS:-0 1 2}
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(qoq-med paper qoq-med3 f1-only no-iou)
# BIN: where the binaries are (default: built here); a copy keeps a long run on one build.
bin=${BIN:-target/release}
if [ -z "${BIN:-}" ]; then
    bash tools/setup.sh
    cargo build --release --quiet --bin make-synthetic --bin train --bin make-tiny-checkpoint --bin eval
fi
[ -f data/tiny-qwen3-vl/config.json ] || "$bin/make-tiny-checkpoint" --out data/tiny-qwen3-vl
[ -d data/synthetic ] || "$bin/make-synthetic" --out data/synthetic --samples 1000 --seed 0
started=$(date +%s)
sft=$out/sft/checkpoints/step_100/model
if [ ! -f "$sft/config.json" ]; then
    rm -rf "$out/sft"
    "$bin/train" "$here/sft.toml" | tail -n 2
fi
evaluate() { # name model config
    [ -f "$out/eval/$1/report.json" ] && return 0
    "$bin/eval" --model "$2" --data data/synthetic --split val --max-samples 96 --batch 48 \
        --max-new-tokens 48 --config "$3" --out "$out/eval/$1" > /dev/null
}
[ -n "${SKIP_SFT_EVAL:-}" ] || evaluate sft-seed0 "$sft" "$here/qoq-med.toml"
for seed in $seeds; do
    for v in "${variants[@]}"; do
        name=$v-seed$seed
        [ -f "$out/eval/$name/report.json" ] && continue
        cfg=$out/$name.toml
        printf 'base = "../../%s/%s.toml"\n[run]\nseed = %s\noutput_dir = "%s/%s"\n[data]\nseed = %s\n' \
            "$here" "$v" "$seed" "$out" "$name" "$seed" > "$cfg"
        rm -rf "${out:?}/$name"
        echo "== $name"
        "$bin/train" "$cfg" 2>&1 | grep -E "^(RL reward|wall time)"
        last=$(ls -d "$out/$name"/checkpoints/step_* | sort -t_ -k2 -n | tail -1)
        evaluate "$name" "$last/model" "$cfg"
    done
done
echo "all runs: $(( ($(date +%s) - started) / 60 )) min"
[ -n "${SKIP_ANALYSIS:-}" ] || python3 "$here/summarize.py" --runs "$out"
