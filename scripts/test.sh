#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian 12 machine (root, rustup stable, no wasm target):
# installs what the build needs, builds every guest component, then runs all tests.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/build-components.sh
# Default members: model, runtime, sdk (guests are covered through the runtime tests). The
# fault-injection feature adds the crash points the crash-recovery test needs.
cargo test --features sandstep/fault-injection "$@"
