#!/usr/bin/env bash
# The demo: builds sandstep and the handler components, then runs the example vendor handler's
# lifecycle for one step in the sandbox, with local files only (no broker, no network).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
scripts/build-components.sh
cargo build --quiet -p sandstep
sandstep=target/debug/sandstep
demo=$(mktemp -d /tmp/sandstep-demo.XXXXXX)
mkdir -p "$demo/work" "$demo/state"
props='{"target":"app.conf","installedCriteria":"app-conf-2"}'
for action in is-installed install apply is-installed; do
    echo "== $action"
    "$sandstep" --log warn step call target/wasm/vendor-handler.wasm "$action" \
        --payload examples/demo/payload --work "$demo/work" --state "$demo/state" \
        --handler-id contoso/config:1 --properties "$props" || true
done
echo "== the handler's /state after the step ($demo/state):"
ls -l "$demo/state"
cat "$demo/state/installed.json"; echo
