# Mirrors of the README commands (`just` is optional; the scripts need nothing but bash).

# One-time setup: the CPU libtorch tree for tch (cached outside the checkout).
setup:
    bash tools/setup.sh

# The main job on the bundled default (the synthetic benchmark; SET=climb for the image demo).
demo:
    bash tools/demo.sh

# Every test.
test:
    bash tools/test.sh

# The CUDA build (links against the full torch 2.11.0 wheel).
build-cuda:
    bash tools/setup-cuda.sh

# Preprocessing throughput beside transformers (needs the ~5 GB reference environment).
bench-preprocess:
    bash experiments/preprocess-throughput/run.sh

# Reward throughput beside the original QoQ-Med reward (pass the path of its medical.py).
bench-rewards medical_py:
    bash experiments/reward-throughput/run.sh {{medical_py}}

# Fuzz the reward parsers (needs the nightly toolchain and `cargo install cargo-fuzz`).
fuzz-rewards seconds="300":
    cd crates/qoq-rewards/fuzz && cargo +nightly fuzz run score seeds -- -max_total_time={{seconds}} -max_len=65536

# Regenerate the committed fixtures with the reference implementations.
fixtures:
    "$(bash tools/reference-env.sh)" tools/make_preprocess_fixtures.py
    "$(bash tools/reference-env.sh)" tools/make_pandas_fixture.py

# Policy parity fixtures (tiny random Qwen3-VL checkpoints and transformers' outputs).
policy-fixtures:
    "$(bash tools/reference-env.sh)" tools/make_policy_fixtures.py

# Chat-template fixtures need the Qwen3-VL Instruct and Thinking chat templates (see tests/fixtures/chat).
chat-fixtures instruct thinking:
    "$(bash tools/reference-env.sh)" tools/make_chat_fixtures.py --chat-template {{instruct}} --thinking-chat-template {{thinking}} --tokenizer-dir .qwen-tokenizer

# A tiny random checkpoint with the real tokenizer (for trying `diagnose` without a download).
tiny-checkpoint:
    bash tools/setup.sh
    cargo run --release --bin make-tiny-checkpoint -- --out data/tiny-qwen3-vl

# The reward parity fixtures need a copy of the original QoQ-Med medical.py.
reward-fixtures medical_py:
    "$(bash tools/reference-env.sh)" tools/make_reward_fixtures.py --medical-py {{medical_py}}

# Trainer parity fixtures: the original QoQ-Med loss / advantages (give the path of its
# verl/trainer/core_algos.py) and torch's AdamW.
trainer-fixtures core_algos:
    "$(bash tools/reference-env.sh)" tools/make_trainer_fixtures.py --core-algos {{core_algos}}
    "$(bash tools/reference-env.sh)" tools/make_optim_fixture.py

# Reward ablation on the demo setting (five reward definitions).
reward-ablation:
    bash experiments/reward-ablation/run.sh

# The demo on a tiny random Qwen2.5-VL (QoQ-Med-VL-7B's family; configs/demo-qwen2_5_vl.toml).
demo-qwen2_5_vl:
    FAMILY=qwen2_5_vl bash tools/demo.sh

# The demo in bf16 with fp32 master weights (configs/demo-bf16.toml).
demo-bf16:
    DTYPE=bfloat16 bash tools/demo.sh

# The demo on 2 local ranks (data parallel over c10d Gloo).
demo-2-ranks:
    NPROC=2 bash tools/demo.sh

# All-reduce bandwidth beside torch.distributed (needs the reference environment).
bench-collectives:
    bash experiments/collectives-bandwidth/run.sh

# Data-parallel step times (demo on 1 and 2 ranks) and memory per rank (1, 2, 4 ranks).
bench-data-parallel:
    bash experiments/data-parallel/run.sh

# Peak memory per rank by distributed.sharding (0.37 B Qwen3-VL, 2 ranks), beside the plan.
bench-sharding:
    bash experiments/sharding/run.sh

# The update's time and memory: plain, chunked log-probs, chunked + recomputation.
bench-update-memory:
    bash experiments/update-memory/run.sh
