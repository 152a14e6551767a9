#!/usr/bin/env bash
# Runs only the real-boot scenarios (gateway/tests/all/boot.rs): builds the slot images from
# Debian's packages (cached under target/boot-test, rebuilt when their recipe changes), starts
# QEMU (KVM where it runs OVMF, TCG otherwise) and drives the agent inside it through a real
# broker. scripts/test.sh runs the same scenarios as part of the whole suite.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/build-components.sh
[[ -x /usr/sbin/mosquitto ]] || apt-get install -y -q mosquitto >/dev/null
export SANDSTEP_REQUIRE_PREREQUISITES=1
# The same features as scripts/test.sh, so the two share one build (the scenarios run both
# binaries: the agent in the machine, the fleet side on the host).
cargo test --features sandstep/fault-injection,sandstep/dev-tools,sandstep-fleet/dev-tools -- boot:: "$@"
