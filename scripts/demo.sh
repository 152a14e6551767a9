#!/usr/bin/env bash
# The demo: builds sandstep and the handler components, registers the example handler, and runs
# a multi-step deployment from examples/demo with local files only (no broker, no network):
# a pre-install step, a main step, and a reference step to a child update that runs for the two
# sensors of the example inventory (the fan is not a sensor, so it is left alone).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/build-components.sh
cargo build --quiet -p sandstep
sandstep=target/debug/sandstep
data=target/demo-data
rm -rf "$data"
"$sandstep" handler install target/wasm/vendor-handler.wasm --id contoso/config:1 --data-dir "$data"
echo
"$sandstep" run examples/demo/manifest.json \
    --files examples/demo/files \
    --components examples/demo/inventory.json \
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
echo "== what the handler installed (its /state):"
find "$data/state" -type f | sort
