#!/usr/bin/env bash
# Signs the default handlers (the components `sandstep handler defaults` lists, one place for the
# list: gateway/src/defaults.rs; built by scripts/build-components.sh into target/wasm) into an
# output directory, ready for `sandstep handler install-defaults`.
#
# Usage: scripts/sign-handlers.sh [--key KEY] [--out DIR]
#   --key KEY   the release key (a handler key from `sandstep key generate`). Without it, a
#               DEVELOPMENT key is generated once at target/dev-keys/handlers-dev.key.
#   --out DIR   where the signed components go (default: target/handlers).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
key="" out=target/handlers
while [[ $# -gt 0 ]]; do
    case "$1" in
        --key) key="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "sign-handlers: unknown argument $1" >&2; exit 2 ;;
    esac
done
sandstep=${SANDSTEP:-target/debug/sandstep}
[[ -x $sandstep ]] || cargo build --quiet -p sandstep
if [[ -z $key ]]; then
    key=target/dev-keys/handlers-dev.key
    if [[ ! -f $key ]]; then
        mkdir -p target/dev-keys
        "$sandstep" key generate --out "$key" >/dev/null
        echo "sign-handlers: generated a DEVELOPMENT key at $key (not for production; give --key for a release)" >&2
    fi
fi
mkdir -p "$out"
for h in $("$sandstep" handler defaults | cut -d' ' -f1); do
    cp "target/wasm/$h.wasm" "$out/$h.wasm"
    "$sandstep" handler sign "$out/$h.wasm" --key "$key" >/dev/null
done
echo "sign-handlers: signed the default handlers into $out with $key (public key: $key.pub)" >&2
