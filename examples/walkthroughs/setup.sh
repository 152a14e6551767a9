# The walkthroughs' shared set-up, sourced by each: `. examples/walkthroughs/setup.sh NAME` from
# the repository's root once `scripts/demo.sh` built everything. It gives `$s` (the gateway's
# binary), `$f` (the fleet's), `$w` (a fresh work dir, target/walkthroughs/NAME), `$keys`
# (deploy's signing options), `$files_url` (an HTTP server for `$w/files`), `$broker`, and
# functions: start_replica, install_gateway DIR, wait_for WHAT COMMAND... The broker is Debian's
# mosquitto on 127.0.0.1:1883 unless $BROKER says another; $HTTP_PORT moves the file server,
# $CONSOLE_PORT the console. Needs python3, jq, curl and mosquitto-clients
# (`apt-get install -y jq curl mosquitto mosquitto-clients`).
set -euo pipefail
s=${SANDSTEP:-target/debug/sandstep} f=${SANDSTEP_FLEET:-target/debug/sandstep-fleet}
w=$PWD/target/walkthroughs/$1
rm -rf "$w" && mkdir -p "$w/files"
broker=${BROKER:-mqtt://127.0.0.1:1883} port=${HTTP_PORT:-8000}
files_url=http://127.0.0.1:$port/
trap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT
python3 -m http.server --bind 127.0.0.1 "$port" --directory "$w/files" >"$w/http.log" 2>&1 &

# Keys: a root key vouching for a signing key (manifests); a handler key (the default handlers).
$s key generate --kind manifest-rsa --kid walkthrough-root --out "$w/root" >/dev/null
$s key generate --kind manifest-rsa --out "$w/signing" >/dev/null
$s key generate --out "$w/handlers.key" >/dev/null
scripts/sign-handlers.sh --key "$w/handlers.key" --out "$w/handlers" 2>/dev/null
keys="--sign-key $w/signing --root-key $w/root"
printf '[mqtt]\nurl = "%s"\n' "$broker" >"$w/fleet.toml"   # the fleet side's config

# The device-state replica, on the same broker.
start_replica() {
    $f shadow --config "$w/fleet.toml" --data-dir "$w/replica" 2>"$w/replica.log" &
}

# A gateway whose agent.toml is written: it trusts the root key and the handler key, and has
# the default handlers installed (as the .deb does).
install_gateway() {
    $s trust add root "$w/root.pub" --data-dir "$1/data" >/dev/null
    $s trust add handler "$w/handlers.key.pub" --data-dir "$1/data" >/dev/null
    $s handler install-defaults "$w/handlers" --data-dir "$1/data" --config "$1/agent.toml" >/dev/null
}

# Until COMMAND succeeds (every second, for up to ${WAIT_SECS:-300} seconds).
wait_for() {
    local what=$1 t=0
    shift
    until "$@" >/dev/null 2>&1; do
        ((++t < ${WAIT_SECS:-300})) || { echo "gave up waiting for $what" >&2; return 1; }
        sleep 1
    done
}
