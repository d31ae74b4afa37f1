# Mirrors of the README commands (`just` is optional; the scripts need nothing but bash).

# One-time setup: the CPU libtorch tree for tch (cached outside the checkout).
setup:
    bash tools/setup.sh

# The main job on the bundled synthetic set.
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

# The reward parity fixtures need a copy of the original QoQ-Med medical.py.
reward-fixtures medical_py:
    "$(bash tools/reference-env.sh)" tools/make_reward_fixtures.py --medical-py {{medical_py}}
