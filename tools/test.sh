#!/usr/bin/env bash
# Every test, after any missing setup. Needs only the Rust toolchain, python3 with pip
# and the package registries; fixtures are committed, no Python runs in the tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup.sh
cargo test --workspace --no-fail-fast
