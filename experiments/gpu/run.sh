#!/usr/bin/env bash
# The GPU check, one call on a GPU machine (experiments/gpu/README.md): trains a random
# Qwen3-VL of ~1.7 B parameters (Qwen3-VL-2B's shapes, 20 decoder layers) for a few steps
# in bf16 with fp32 master weights and activation recomputation, on the synthetic set, with
# binaries built on the development machine (bash experiments/gpu/pack.sh) and carried in
# .gpu-carry/. Prints tokens/s, the update's MFU (6 x parameters x tokens plus attention's
# 12 x layers x hidden x sequence per token, against the H200's 989 TFLOP/s dense bf16),
# and the peak GPU memory (nvidia-smi, sampled every 200 ms) beside the memory plan's
# prediction. Exits 2 when there is no CUDA device, 1 on any other failure.
#   bash experiments/gpu/run.sh [OUT_DIR]     (on the GPU machine, in the repository root)
set -euo pipefail
out=${1:-${OUT:-/tmp/qoq-gpu-check}}
mkdir -p "$out"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu check: no CUDA device (nvidia-smi is missing or sees no GPU)" >&2
    exit 2
fi
python3 -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA device"' || {
    echo "gpu check: python3's torch (2.11.0+cu130 expected) is missing or sees no CUDA device" >&2
    exit 2
}
eval "$(bash tools/setup-cuda.sh --print-env)"
bin="$out/bin"
mkdir -p "$bin"
for tool in train make-tiny-checkpoint make-synthetic; do
    [ -f ".gpu-carry/$tool.gz" ] && [ -f .gpu-carry/tokenizer/tokenizer.json ] || { echo "gpu check: .gpu-carry/$tool.gz is missing: run bash experiments/gpu/pack.sh on the build machine and carry .gpu-carry" >&2; exit 1; }
    gzip -dc ".gpu-carry/$tool.gz" > "$bin/$tool"
    chmod +x "$bin/$tool"
done

# The model: Qwen3-VL-2B's published shapes with 20 of its 28 decoder layers.
model="$out/model"
python3 - "$model.json" <<'PY'
import json, sys
text = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=20,
            num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
            rope_theta=5000000.0, attention_bias=False, hidden_act="silu", max_position_embeddings=262144,
            rope_scaling=dict(rope_type="default", mrope_interleaved=True, mrope_section=[24, 20, 20]),
            tie_word_embeddings=True)
vision = dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, in_channels=3,
              patch_size=16, temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=2048,
              num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17], hidden_act="gelu_pytorch_tanh")
json.dump(dict(model_type="qwen3_vl", architectures=["Qwen3VLForConditionalGeneration"], text_config=text,
               vision_config=vision, image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
               vision_end_token_id=151653, tie_word_embeddings=True), open(sys.argv[1], "w"), indent=1)
PY
rm -rf "$model"
"$bin/make-tiny-checkpoint" --config "$model.json" --tokenizer .gpu-carry/tokenizer --out "$model"
"$bin/make-synthetic" --out "$out/synthetic" --samples 96 --seed 0 --force

# The run: 4 SFT steps (the update alone: MFU), then 2 DRPO steps (generation included).
config="$out/gpu.toml"
cat > "$config" <<TOML
[run]
output_dir = "$out/run"
seed = 0
device = "cuda"
save_every = 1000
keep_checkpoints = 1
rollouts_every = 0
image_summary_every = 0
[model]
path = "$model"
dtype = "bfloat16"
[data]
shards = "$out/synthetic"
splits = ["train"]
[processor]
min_pixels = 65536
max_pixels = 262144
[sft]
steps = 4
batch_size = 16
micro_batch = 8
[rl]
steps = 2
prompts_per_step = 16
samples_per_prompt = 4
prompts_per_update = 16
micro_batch = 8
generation_batch = 16
temperature = 1.0
top_p = 1.0
max_new_tokens = 512
[algorithm]
kl_coef = 1e-4
[memory]
recompute = true
TOML

"$bin/train" "$config" --plan > "$out/plan.txt" 2>&1 || echo "gpu check: train --plan failed (see $out/plan.txt)" >&2
plan_peak=$(sed -n 's/^peak per rank: \([0-9.]*\) GiB.*/\1/p' "$out/plan.txt" | tail -n 1)
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/gpu_memory.csv" &
smi=$!
set +e
"$bin/train" "$config" 2>&1 | tee "$out/train.log"
status=${PIPESTATUS[0]}
set -e
kill "$smi" 2>/dev/null || true
[ "$status" -eq 0 ] || { echo "gpu check: train failed (exit $status); see $out/train.log" >&2; exit 1; }

python3 - "$model.json" "$out/train.log" "$out/gpu_memory.csv" "${plan_peak:-nan}" <<'PY'
import json, re, sys
cfg = json.load(open(sys.argv[1])); t, v = cfg["text_config"], cfg["vision_config"]
h, L, V, I = t["hidden_size"], t["num_hidden_layers"], t["vocab_size"], t["intermediate_size"]
kv = t["num_key_value_heads"] * t["head_dim"]
text = L * (h * (h + 2 * kv) + h * h + 3 * h * I + 2 * h) + V * h + h
vis = v["depth"] * (4 * v["hidden_size"] ** 2 + 2 * v["hidden_size"] * v["intermediate_size"])
params = text + vis
log = open(sys.argv[2]).read()
sft = [float(x) for x in re.findall(r"sft loss [0-9.]+ +([0-9.]+) tok/s", log)][1:]  # the first warms up
rl = [float(x) for x in re.findall(r"reward [0-9.]+ +([0-9.]+) tok/s", log)]
tokens_per_s = sum(sft) / max(len(sft), 1)
seq = 2 * 256  # the synthetic prompts and answers: a few hundred tokens each
flops_per_token = 6 * params + 12 * L * h * seq
mfu = tokens_per_s * flops_per_token / 989e12
mem = [float(x) for x in open(sys.argv[3]).read().split() if x.strip()]
peak_gib = max(mem) / 1024 if mem else float("nan")
print(json.dumps({"parameters": params, "sft_tokens_per_s": tokens_per_s, "rl_tokens_per_s": rl,
                  "update_mfu": mfu, "peak_gpu_memory_gib": peak_gib, "plan_peak_gib": float(sys.argv[4])}))
PY

# The rollout benchmark (experiments/rollout-throughput) on the GPU: the engine against
# transformers' generate on a random Qwen3-VL with Qwen3-VL-2B's shapes (2.1 B parameters,
# untied head), bf16, G = 5, top-p 0.99, batches of 8 and 64 prompts, 40 slots. Needs
# transformers in python3; skipped with a note otherwise.
if python3 -c 'import transformers' 2>/dev/null && [ -f .gpu-carry/bench_rollout.gz ]; then
    gzip -dc .gpu-carry/bench_rollout.gz > "$bin/bench_rollout"
    chmod +x "$bin/bench_rollout"
    rb="$out/rollout"
    mkdir -p "$rb"
    python3 experiments/rollout-throughput/make_model.py --out "$rb" --seed 0 --large
    : > "$rb/results.jsonl"
    args=(--model "$rb/model" --inputs "$rb/inputs.safetensors" --samples 5 --new-tokens "${NEW_TOKENS:-128}" --seed 0)
    for stop in mixed none; do
        for batch in 8 64; do
            "$bin/bench_rollout" "${args[@]}" --batch "$batch" --stop "$stop" --slots 40 --device cuda --bf16 | tee -a "$rb/results.jsonl"
            python3 experiments/rollout-throughput/reference.py "${args[@]}" --batch "$batch" --stop "$stop" --device cuda | tee -a "$rb/results.jsonl"
        done
    done
    python3 experiments/rollout-throughput/summarize.py "$rb/results.jsonl"
else
    echo "gpu check: rollout benchmark skipped (python3 has no transformers, or .gpu-carry has no bench_rollout)" >&2
fi
