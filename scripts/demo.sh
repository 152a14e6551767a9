#!/usr/bin/env bash
# The demo: builds sandstep and the handler components, signs and registers the default handlers
# and the example vendor handler, signs the demo manifest, and runs the multi-step deployment from
# examples/demo with local files only (no broker, no network):
#   step 0  pre-install check (microsoft/script:1, ADU's script protocol)
#   step 1  the application config placed atomically (sandstep/files:1)
#   step 2  a vendor's own handler (contoso/config:1, examples/vendor-handler)
#   step 3  a reference step: a child update for the two sensors of the inventory
#           (sandstep/component:1; the fan is not a sensor, so it is left alone)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/build-components.sh
cargo build --quiet -p sandstep -p sandstep-fleet
sandstep=target/debug/sandstep
data=target/demo-data
keys=target/demo-keys
work=target/demo-work
device=$root/target/demo-device
rm -rf "$data" "$work" "$device"
mkdir -p "$keys" "$work" "$device/app" "$device/components"/{sensor-0001,sensor-0002,motor-0001}
# The demo's policy and inventory point at a throwaway "device" directory.
sed "s|@DEVICE@|$device|g" examples/demo/config.toml.in > "$work/config.toml"
sed "s|@DEVICE@|$device|g" examples/demo/inventory.json.in > "$work/inventory.json"
# For the README's "whole loop": the example agent config, with this inventory and policy.
sed "s|^# inventory = .*|inventory = \"$root/$work/inventory.json\"|" examples/agent.toml > "$work/agent.toml"
cat "$work/config.toml" >> "$work/agent.toml"

# Demo keys, generated on first run and kept: a handler signing key (Ed25519, wasmsign2 format),
# and an ADU-style manifest key chain (RSA root key vouching for an RSA signing key).
if [[ ! -f $keys/handler.key ]]; then
    echo "== generating demo keys in $keys (DEMO ONLY: never use them for real devices)"
    "$sandstep" key generate --out "$keys/handler.key"
    "$sandstep" key generate --kind manifest-rsa --kid demo-root --out "$keys/root"
    "$sandstep" key generate --kind manifest-rsa --kid demo-signing --out "$keys/signing"
fi

echo "== trusting the demo keys in $data"
"$sandstep" trust add handler "$keys/handler.key.pub" --name demo-vendor --data-dir "$data"
"$sandstep" trust add root "$keys/root.pub" --name demo-root --data-dir "$data"

echo "== signing and installing the default handlers and the example vendor handler"
scripts/sign-handlers.sh --key "$keys/handler.key" --out "$work/handlers"
"$sandstep" handler install-defaults "$work/handlers" --data-dir "$data" --config "$work/config.toml"
cp target/wasm/vendor-handler.wasm "$work/vendor-handler.wasm"
"$sandstep" handler sign "$work/vendor-handler.wasm" --key "$keys/handler.key"
"$sandstep" handler install "$work/vendor-handler.wasm" --id contoso/config:1 --data-dir "$data"

echo "== signing the manifest (a deployment document, as the cloud would send it)"
"$sandstep" manifest sign examples/demo/manifest.json --key "$keys/signing" --root-key "$keys/root" \
    --workflow-id demo-1 --out "$work/deployment.json"
echo
"$sandstep" run --deployment "$work/deployment.json" \
    --files examples/demo/files \
    --components "$work/inventory.json" \
    --config "$work/config.toml" \
    --data-dir "$data" \
    --result-file "$data/result.json"
echo
echo "== result file ($data/result.json), trimmed:"
python3 - "$data/result.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def trim(s):
    s = dict(s); s.pop("actions", None); s.pop("files", None)
    if "components" in s:
        s["components"] = {k: {**v, "stepResults": {sk: trim(sv) for sk, sv in v["stepResults"].items()}} for k, v in s["components"].items()}
    return s
r["stepResults"] = {k: trim(v) for k, v in r["stepResults"].items()}
print(json.dumps(r, indent=2))
PY
echo
echo "== what the deployment changed on the demo device ($device):"
find "$device" -type f | sort
echo "== the vendor handler's own /state:"
find "$data/state" -path '*contoso_config*' -type f | sort
