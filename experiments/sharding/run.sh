#!/usr/bin/env bash
# Peak memory per rank by distributed.sharding, measured: a random Qwen3-VL of 0.37 B
# parameters (the calibration model of docs/memory.md: hidden 1024, 16 layers, tied
# embeddings, the real 151,936-token vocabulary), 1 SFT + 1 DRPO step on 2 local ranks
# (Gloo), in each mode, under train's own allocator settings; the plan's prediction beside.
#   bash experiments/sharding/run.sh            (MODES="none full" to pick; NPROC=2)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
bash tools/setup.sh >/dev/null
cargo build --release -q --bin make-synthetic --bin train --bin make-tiny-checkpoint
work=${WORK:-$repo/runs/sharding}
mkdir -p "$work"
nproc=${NPROC:-2}
[ -f data/synthetic/synthetic-00000.parquet ] || ./target/release/make-synthetic --out data/synthetic --samples 1000 --seed 0 --force
[ -f data/tiny-qwen3-vl/config.json ] || ./target/release/make-tiny-checkpoint --out data/tiny-qwen3-vl
if [ ! -f "$work/qwen3-vl-0.37b/config.json" ]; then
    python3 - data/tiny-qwen3-vl/config.json "$work/qwen3-vl-0.37b.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["text_config"].update(hidden_size=1024, intermediate_size=3072, num_hidden_layers=16,
                        num_attention_heads=16, num_key_value_heads=8, head_dim=64)
c["text_config"]["rope_parameters"]["mrope_section"] = [12, 10, 10]
c["vision_config"].update(depth=4, hidden_size=256, intermediate_size=1024, num_heads=4,
                          out_hidden_size=1024, num_position_embeddings=2304,
                          deepstack_visual_indexes=[1, 2])
c["tie_word_embeddings"] = True
json.dump(c, open(sys.argv[2], "w"), indent=2)
PY
    ./target/release/make-tiny-checkpoint --out "$work/qwen3-vl-0.37b" --config "$work/qwen3-vl-0.37b.json"
fi
for mode in ${MODES:-none optimizer gradients full}; do
    name="$mode-$nproc"
    cat > "$work/$name.toml" <<TOML
base = "$repo/configs/demo.toml"
[run]
output_dir = "$work/out-$name"
save_every = 1000
keep_checkpoints = 1
[model]
path = "$work/qwen3-vl-0.37b"
[data]
shards = "$repo/data/synthetic"
[prompt]
max_prompt_tokens = 112
[sft]
steps = 1
batch_size = 4
micro_batch = 2
[rl]
steps = 1
prompts_per_step = 4
prompts_per_update = 4
samples_per_prompt = 2
micro_batch = 2
generation_batch = 2
max_new_tokens = 32
[rl.optim]
lr = 1e-5
[validation]
every = 0
[distributed]
sharding = "$mode"
TOML
    rm -rf "$work/out-$name"
    plan=$(./target/release/train "$work/$name.toml" --plan --world-size "$nproc" | tail -n 1)
    start=$(date +%s)
    ./target/release/train "$work/$name.toml" --nproc "$nproc" > "$work/$name.out" 2> "$work/$name.err"
    echo "sharding $mode, $nproc ranks: plan $plan; $(( $(date +%s) - start )) s"
    grep -h "peak RSS" "$work/$name.out" "$work/$name.err" | sed 's/^/    /'
    rm -rf "$work/out-$name/checkpoints"
done
