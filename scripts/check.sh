#!/usr/bin/env bash
# Formatting, lints and structure, as required before each commit (the tests are scripts/test.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo fmt --all -- --check
cargo clippy --quiet --workspace --all-targets \
    --features sandstep/fault-injection,sandstep/dev-tools,sandstep-fleet/dev-tools -- -D warnings
# The shipped builds (no dev tools, no crash points) must be clean too.
cargo clippy --quiet -p sandstep -p sandstep-fleet --all-targets -- -D warnings
# No import cycle and no function over 100 lines, in every crate.
for src in model/src transport/src signing/src gateway/src fleet/src sdk/src tests/testkit/src \
    handlers/*/src examples/vendor-handler/src tests/guests/*/src; do
    python3 scripts/check-structure.py "$src"
done
# The architecture's invariants (ARCHITECTURE.md) where a script can check them.
python3 scripts/check-architecture.py
# Source only: nothing tracked outside the layout, no logs, databases or build output.
python3 scripts/check-layout.py
