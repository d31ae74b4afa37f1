#!/usr/bin/env bash
# The main job on the bundled default: a tiny random Qwen3-VL (with the real Qwen
# tokenizer) on the skewed synthetic benchmark (docs/benchmark.md): 100 SFT steps, then 80
# DRPO steps (configs/demo-benchmark.toml), validated on 200 val samples at the end of SFT
# and after RL; then `eval` on the whole test split (1,797 samples) for the SFT checkpoint and
# the last one: the paper's table for each, the RL phase's held-out effect. Outputs in
# runs/demo-benchmark (TensorBoard: tensorboard --logdir runs/demo-benchmark/tensorboard).
# Idempotent: the set and the tiny model are deterministic; each run starts its folder afresh.
#   bash tools/demo.sh            (SEED=N for another run seed and data order:
#                                  runs/<name>-seedN, from runs/<name>-seedN.toml;
#                                  NPROC=N to train on N local ranks, data parallel;
#                                  SET=climb for the image demo: the synthetic CLIMB-like
#                                  set (data/synthetic, SAMPLES=N rows, default 1000) with
#                                  findings drawn into 512 x 512 images, boxes and masks,
#                                  configs/demo.toml, runs/demo; its RL phase does not
#                                  improve held-out F1 (README);
#                                  SET=mimic for CLIMB -> MIMIC-IV at demo size: the
#                                  default demo's last checkpoint (made first when missing)
#                                  fine-tuned on data/synthetic-mimic (configs/demo-mimic.toml,
#                                  runs/demo-mimic), ending with `eval` on the test split;
#                                  and three variants of the image demo (SET=climb):
#                                  FAMILY=qwen2_5_vl for a tiny random Qwen2.5-VL with the
#                                  Qwen2.5 tokenizer: configs/demo-qwen2_5_vl.toml,
#                                  data/tiny-qwen2.5-vl, runs/demo-qwen2_5_vl;
#                                  DTYPE=bfloat16 for bf16 with fp32 master weights:
#                                  configs/demo-bf16.toml, runs/demo-bf16;
#                                  STAGE=1 for stage 1 at demo size, the ECG path on the
#                                  synthetic set's ECG rows (data/synthetic-ecg, 1000 by
#                                  default) with a small encoder pretrained on other
#                                  synthetic ECGs (data/tiny-ecg-encoder.safetensors):
#                                  configs/demo-stage1.toml, runs/demo-stage1)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
family=${FAMILY:-qwen3_vl}
case "$family" in
    qwen3_vl) model=data/tiny-qwen3-vl; config=configs/demo.toml; out=runs/demo ;;
    qwen2_5_vl) model=data/tiny-qwen2.5-vl; config=configs/demo-qwen2_5_vl.toml; out=runs/demo-qwen2_5_vl ;;
    *) echo "demo: FAMILY must be qwen3_vl or qwen2_5_vl, not '$family'" >&2; exit 1 ;;
esac
case "${DTYPE:-float32}" in
    float32) ;;
    bfloat16)
        [ "$family" = qwen3_vl ] || { echo "demo: DTYPE=bfloat16 has a config for FAMILY=qwen3_vl only" >&2; exit 1; }
        config=configs/demo-bf16.toml; out=runs/demo-bf16 ;;
    *) echo "demo: DTYPE must be float32 or bfloat16, not '$DTYPE'" >&2; exit 1 ;;
esac
case "${STAGE:-2}" in
    2) samples=${SAMPLES:-1000} ;;
    1)
        [ "$family" = qwen3_vl ] && [ "${DTYPE:-float32}" = float32 ] \
            || { echo "demo: STAGE=1 has a config for FAMILY=qwen3_vl, DTYPE=float32 only" >&2; exit 1; }
        config=configs/demo-stage1.toml; out=runs/demo-stage1; samples=${SAMPLES:-1000} ;;
    *) echo "demo: STAGE must be 1 or 2, not '$STAGE'" >&2; exit 1 ;;
esac
# The benchmark is the default; FAMILY, DTYPE and STAGE variants are the image demo's.
if [ "$family" = qwen3_vl ] && [ "${DTYPE:-float32}" = float32 ] && [ "${STAGE:-2}" = 2 ]; then
    kind=${SET:-benchmark}
else
    kind=${SET:-climb}
    [ "$kind" = climb ] \
        || { echo "demo: SET=$kind has a config for FAMILY=qwen3_vl, DTYPE=float32, STAGE=2 only" >&2; exit 1; }
fi
case "$kind" in
    climb) ;;
    benchmark) config=configs/demo-benchmark.toml; out=runs/demo-benchmark; data=data/benchmark ;;
    mimic) config=configs/demo-mimic.toml; out=runs/demo-mimic; data=data/synthetic-mimic ;;
    *) echo "demo: SET must be benchmark, climb or mimic, not '$kind'" >&2; exit 1 ;;
esac
seed=${SEED:-0}
if [ "$seed" != 0 ]; then
    # A config of its own: the shipped one with run.seed, data.seed and output_dir replaced.
    out="$out-seed$seed"
    mkdir -p runs
    printf 'base = "../%s"\n[run]\nseed = %s\noutput_dir = "%s"\n[data]\nseed = %s\n' \
        "$config" "$seed" "$out" "$seed" > "$out.toml"
    config="$out.toml"
fi
bash tools/setup.sh
cargo build --release --quiet --bin make-synthetic --bin train --bin make-tiny-checkpoint --bin eval \
    --bin pretrain-ecg-encoder
if [ "${STAGE:-2}" = 1 ]; then
    ./target/release/make-synthetic --kind ecg --out data/synthetic-ecg --samples "$samples" --seed 0 --force
    # The stand-in for ECG-JEPA's release (deterministic: made once, about 2 minutes).
    [ -f data/tiny-ecg-encoder.safetensors ] \
        || ./target/release/pretrain-ecg-encoder --out data/tiny-ecg-encoder.safetensors
elif [ "$kind" = climb ]; then
    ./target/release/make-synthetic --out data/synthetic --samples "$samples" --seed 0 --force
else
    ./target/release/make-synthetic --kind "$kind" --out "$data" --seed 0 --force
fi
[ -f "$model/config.json" ] || ./target/release/make-tiny-checkpoint --family "$family" --out "$model"
if [ "$kind" = mimic ] && [ ! -f runs/demo-benchmark/checkpoints/step_180/model/config.json ]; then
    echo "demo: SET=mimic starts from the default demo's stage-2 checkpoint; running the default demo first"
    SET=benchmark SEED=0 NPROC="${NPROC:-1}" bash tools/demo.sh
fi
rm -rf "$out"
./target/release/train "$config" --nproc "${NPROC:-1}"
if [ "$kind" = benchmark ]; then
    # The held-out test split, greedy, the paper's table, for the SFT checkpoint and the last
    # one (also in $out/eval-sft/report.md and $out/eval/report.md).
    sft=$out/checkpoints/step_100
    last=$(ls -d "$out"/checkpoints/step_* | sort -t_ -k2 -n | tail -1)
    echo "== the SFT checkpoint ($sft), test split"
    ./target/release/eval --model "$sft/model" --data "$data" --split test --batch 64 \
        --config "$config" --out "$out/eval-sft" --nproc "${NPROC:-1}"
    echo "== after RL ($last), test split"
    ./target/release/eval --model "$last/model" --data "$data" --split test --batch 64 \
        --config "$config" --out "$out/eval" --nproc "${NPROC:-1}"
elif [ "$kind" = mimic ]; then
    # The held-out test split, greedy, the paper's table (also in $out/eval/report.md).
    last=$(ls -d "$out"/checkpoints/step_* | sort -t_ -k2 -n | tail -1)
    ./target/release/eval --model "$last/model" --data "$data" --split test --max-samples 510 --batch 64 \
        --config "$config" --out "$out/eval" --nproc "${NPROC:-1}"
fi
