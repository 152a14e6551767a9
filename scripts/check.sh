#!/usr/bin/env bash
# Formatting and lints, as required before each commit (the tests are scripts/test.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo fmt --all -- --check
cargo clippy --quiet --workspace --all-targets --features sandstep/fault-injection,sandstep/dev-tools -- -D warnings
# The gateway build (no dev tools, no crash points) must be clean too.
cargo clippy --quiet -p sandstep --all-targets -- -D warnings
# No import cycle and no function over 100 lines in the runtime.
python3 scripts/check-structure.py runtime/src
