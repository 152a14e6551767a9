#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian 12 machine (root, rustup stable, no wasm target):
# installs what the build needs, builds every guest component, then runs all tests.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/build-components.sh
# The fleet tests need a real MQTT broker (mosquitto, from Debian; the test harness starts its
# own instances on loopback ports) and PostgreSQL (Debian's; scripts/postgres.sh runs throwaway
# clusters in temporary directories as an unprivileged user; openssl makes their test CA), the
# clock-jump test libfaketime
# (Debian's faketime), the GRUB boot-control test grub-editenv (grub-common), the SWUpdate
# handler's test the real swupdate (and cpio to pack a .swu), the proxy test tinyproxy.
# Install them when missing and we are root.
missing=()
[[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
[[ -x /usr/bin/openssl ]] || missing+=(openssl)
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ]] || missing+=(faketime)
[[ -x /usr/bin/objdump ]] || missing+=(binutils)
[[ -x /usr/bin/grub-editenv ]] || missing+=(grub-common)
[[ -x /usr/bin/swupdate ]] || missing+=(swupdate)
[[ -x /usr/bin/cpio ]] || missing+=(cpio)
# Downloads through a real HTTP proxy with Basic authentication (gateway/tests/all/proxy.rs).
[[ -x /usr/bin/tinyproxy ]] || missing+=(tinyproxy)
# The README's walkthroughs (examples/walkthroughs, run by the suite) use these as a person would.
[[ -x /usr/bin/mosquitto_pub ]] || missing+=(mosquitto-clients)
[[ -x /usr/bin/jq ]] || missing+=(jq)
[[ -x /usr/bin/curl ]] || missing+=(curl)
[[ -x /usr/bin/python3 ]] || missing+=(python3)
# The console's browser test drives Debian's headless chromium through chromium-driver
# (fleet/tests/all/console_browser.rs); without recommends, it is the browser and its libraries.
[[ -x /usr/bin/chromedriver ]] || browser=(chromium chromium-driver fonts-dejavu-core)
if [[ ${#missing[@]} -gt 0 && $(id -u) -eq 0 ]]; then
    (apt-get install -y -q "${missing[@]}" || (apt-get update -q && apt-get install -y -q "${missing[@]}")) >/dev/null
fi
if [[ -n ${browser+x} && $(id -u) -eq 0 ]]; then
    (apt-get install -y -q --no-install-recommends "${browser[@]}" \
        || (apt-get update -q && apt-get install -y -q --no-install-recommends "${browser[@]}")) >/dev/null
fi
# The Python and JavaScript handler toolchains (componentize-py from PyPI, componentize-js from
# npm), pinned, into target/tools: the vendor-kit test builds a handler with each.
scripts/guest-toolchains.sh --quiet >/dev/null
# Default members: model, transport, signing, gateway, fleet, sdk (guests are covered through
# the gateway's tests, which run both binaries). The fault-injection feature adds the crash
# points the crash-recovery test needs; dev-tools the fuzz targets (for the smoke run),
# `sandstep bench` and `sandstep-fleet fleet-sim`.
# Every prerequisite is installed above, so a test that finds one missing fails instead of
# skipping (tests/testkit, prerequisite_missing).
export SANDSTEP_REQUIRE_PREREQUISITES=1
cargo test --features sandstep/fault-injection,sandstep/dev-tools,sandstep-fleet/dev-tools "$@"
