#!/usr/bin/env bash
# Formatting and lints, as required before each commit (the tests are scripts/test.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo fmt --all -- --check
cargo clippy --quiet --workspace --all-targets --features sandstep/fault-injection -- -D warnings
