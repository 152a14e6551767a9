#!/usr/bin/env bash
# The benchmark suite: builds the release binaries and the components, starts a broker on a free
# loopback port, and runs `sandstep bench` and `sandstep-fleet bench`; then, as root, the
# firmware installs side by side with the peers from Debian's packages (scripts/bench-peers.py:
# curl, SWUpdate, Mender, casync, zchunk). Figures go to stdout (Markdown tables) and to
# target/bench.json, target/bench-fleet.json and target/bench-peers.json. Record them in
# BENCHMARKS.md with the machine and the date.
#
# Usage: scripts/bench.sh [--quick] [--no-peers] [--no-fleet] [sandstep bench options]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
peers=yes
fleet_runs=yes
quick=no
args=()
for a in "$@"; do
    case $a in
        --no-peers) peers=no ;;
        --no-fleet) fleet_runs=no ;;
        --quick) quick=yes; args+=("$a") ;;
        *) args+=("$a") ;;
    esac
done
scripts/build-components.sh --quiet
# The binaries the packages ship (no dev tools), kept aside for their size and the agent's
# memory; then the gateway with the dev tools (bench, handler new/build) over target/release.
# Built apart, as scripts/package.sh builds them (together, the gateway takes the fleet's features).
cargo build --quiet --release -p sandstep
cargo build --quiet --release -p sandstep-fleet
mkdir -p target/bench
cp target/release/sandstep target/release/sandstep-fleet target/bench/
cargo build --quiet --release -p sandstep --features dev-tools
if [[ ! -x /usr/sbin/mosquitto && $(id -u) -eq 0 ]]; then
    (apt-get install -y -q mosquitto || (apt-get update -q && apt-get install -y -q mosquitto)) >/dev/null
fi
# 10,000 simulated devices hold 10,000 connections: mosquitto and fleet-sim need the descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
broker=()
fleet=()
if [[ -x /usr/sbin/mosquitto ]]; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    conf=$(mktemp)
    printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\n' "$port" > "$conf"
    /usr/sbin/mosquitto -c "$conf" >/dev/null 2>&1 &
    mosq=$!
    # The fleet figures with two replicas use a throwaway PostgreSQL (Debian's, as an
    # unprivileged user; scripts/postgres.sh).
    pgdir=$(mktemp -d)
    pg=$(scripts/postgres.sh start "$pgdir/pg")
    trap 'kill $mosq 2>/dev/null; rm -f "$conf"; scripts/postgres.sh stop "$pgdir/pg"; rm -rf "$pgdir"' EXIT
    sleep 0.5
    broker=(--broker "mqtt://127.0.0.1:$port")
    printf '[mqtt]\nurl = "mqtt://127.0.0.1:%s"\n' "$port" > target/bench/fleet.toml
    fleet=(--config target/bench/fleet.toml bench --postgres "$pg" --json target/bench-fleet.json)
    if [[ $quick == yes ]]; then fleet+=(--quick); fi
fi
# Group 8: the `handler new` template in each language, built with `handler build` (Python and
# JavaScript with the toolchains scripts/guest-toolchains.sh installs).
langs=target/bench-langs
rm -rf "$langs" && mkdir -p "$langs"
PATH="$(scripts/guest-toolchains.sh --quiet):$PATH"
for lang in rust python js; do
    target/release/sandstep handler new "$langs/bench-$lang" --id "bench/lang-$lang:1" --lang "$lang" >/dev/null
    built=$(CARGO_TARGET_DIR=$root/target target/release/sandstep handler build "$langs/bench-$lang" 2>/dev/null | grep ' bytes)$' | cut -d' ' -f1)
    cp "$built" "$langs/$lang.wasm"
done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; $(date -u +%Y-%m-%d)"
# Group 8b: a vendor's iteration, `dev run` of each template as its README runs it, the first
# time (the component is compiled) and again unchanged (the dev cache's compiled copy), with
# an empty dev cache of its own; then what the cache holds.
devcache=$langs/dev-cache
for lang in rust python js; do
    p=$langs/bench-$lang
    mkdir -p "$p/device/config"
    for run in first again; do
        start=$(date +%s%N)
        XDG_CACHE_HOME=$devcache target/release/sandstep dev run "$p/manifest.json" \
            --handler "$langs/$lang.wasm" --files "$p/payload" --with-config "$p/gateway.toml" >/dev/null 2>&1
        echo "| 8b. dev run, $lang, $run | $(( ($(date +%s%N) - start) / 1000000 )) ms |"
    done
done
echo "| 8b. dev cache, three components | $(du -sm "$devcache/sandstep/dev" | cut -f1) MiB |"
target/release/sandstep bench "${broker[@]}" --package-bin target/bench/sandstep \
    --lang-dir "$langs" --json target/bench.json "${args[@]}"
# Group 7: the fleet side, its own program (needs the broker).
if [[ $fleet_runs == no ]]; then
    :
elif [[ ${#fleet[@]} -gt 0 ]]; then
    target/bench/sandstep-fleet "${fleet[@]}"
else
    echo "bench: no broker (mosquitto); the fleet figures (group 7) skipped" >&2
fi
# Group 7b: the console at 10,000 devices (its own process over a seeded SQLite store): first
# byte and fully loaded per page, and its memory.
if [[ $fleet_runs != no ]]; then
    cargo build --quiet --release -p sandstep-fleet --features dev-tools
    target/release/sandstep-fleet console-bench
fi
if [[ $peers == yes ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "bench: the side-by-side firmware run needs root (loop devices); skipped" >&2
    elif [[ $quick == yes ]]; then
        scripts/bench-peers.py --sizes 100 --runs 1 --json target/bench-peers.json
    else
        scripts/bench-peers.py --json target/bench-peers.json
    fi
fi
