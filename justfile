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

# Regenerate the committed fixtures with the reference implementation.
fixtures:
    "$(bash tools/reference-env.sh)" tools/make_preprocess_fixtures.py
    "$(bash tools/reference-env.sh)" tools/make_pandas_fixture.py
