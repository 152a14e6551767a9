#!/usr/bin/env bash
# Installs the official component toolchains for handlers in other languages, pinned, into
# target/tools (shared by every test run and kept across runs):
#   componentize-py (PyPI)                      -> target/tools/python/bin/componentize-py
#   componentize-js and jco (npm, Node.js 18+)  -> target/tools/js/node_modules/.bin/
# Prints the directories to put on PATH. `sandstep handler build` finds the tools on PATH.
#
# Usage: scripts/guest-toolchains.sh [--quiet]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${SANDSTEP_TOOLS:-$root/target/tools}
componentize_py=0.25.1
componentize_js=0.23.0
jco=1.35.0
quiet=no
[[ ${1:-} == --quiet ]] && quiet=yes
say() { [[ $quiet == yes ]] || echo "guest-toolchains: $*" >&2; }

py=$tools/python
if [[ ! -x $py/bin/componentize-py ]] || ! "$py/bin/componentize-py" --version | grep -qx "componentize-py $componentize_py"; then
    say "installing componentize-py $componentize_py"
    python3 -m venv "$py"
    "$py/bin/pip" install -q "componentize-py==$componentize_py"
fi

js=$tools/js
if [[ ! -x $js/node_modules/.bin/componentize-js ]] \
    || ! grep -q "\"version\": \"$componentize_js\"" "$js/node_modules/@bytecodealliance/componentize-js/package.json"; then
    command -v npm >/dev/null || { echo "guest-toolchains: npm (Node.js) is needed for componentize-js" >&2; exit 1; }
    say "installing componentize-js $componentize_js and jco $jco"
    mkdir -p "$js"
    (cd "$js" && npm install --silent --no-audit --no-fund --no-save \
        "@bytecodealliance/componentize-js@$componentize_js" "@bytecodealliance/jco@$jco" >/dev/null)
fi
echo "$py/bin:$js/node_modules/.bin"
