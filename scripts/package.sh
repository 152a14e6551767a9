#!/usr/bin/env bash
# Builds the two Debian packages:
#   sandstep_<version>_<arch>.deb        the gateway: the `sandstep` binary, the default handlers
#                                        signed with the release key, that key's public half as a
#                                        trusted key, /etc/sandstep/config.toml (a conffile with
#                                        the default policy of every default handler), the
#                                        agent's systemd unit, the handler SDK's sources;
#   sandstep-fleet_<version>_<arch>.deb  the fleet side: the `sandstep-fleet` binary (replica,
#                                        deploy, status, rollouts), /etc/sandstep/fleet.toml, the
#                                        replica's unit. No wasmtime, no handlers.
#
# Usage: scripts/package.sh [--key KEY] [--version VERSION] [--profile release|debug] [--out DIR]
#                           [--bin PATH --fleet-bin PATH]
#   --key KEY          the handler release key (`sandstep key generate`; KEY.pub beside it). Without
#                      it a DEVELOPMENT key is generated once at target/dev-keys/handlers-dev.key and
#                      installed as trust/handlers/sandstep-development-UNSAFE.pub.
#   --version VERSION  the package version (default: the workspace version).
#   --profile          release (default; the shipped binary) or debug (fast, for tests).
#   --out DIR          where the .debs go (default: target/package). Their paths are printed last,
#                      the gateway's then the fleet's.
#   --bin PATH         package this gateway binary and the components already in target/wasm,
#   --fleet-bin PATH   and this fleet binary, building nothing (the package test runs inside
#                      `cargo test`, which holds the build lock).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
key="" version="" profile=release out=target/package bin="" fleet_bin=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --key) key="$2"; shift 2 ;;
        --version) version="$2"; shift 2 ;;
        --profile) profile="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --fleet-bin) fleet_bin="$2"; shift 2 ;;
        *) echo "package: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [[ -z $bin ]]; then
    case "$profile" in
        release) profile_args=(--release) ;;
        debug) profile_args=() ;;
        *) echo "package: --profile is release or debug" >&2; exit 2 ;;
    esac
    # One build each: built together, cargo unifies their dependencies' features, and the
    # gateway would carry the console's (hyper's HTTP/2 server: 390 KB) without using them.
    cargo build --quiet "${profile_args[@]}" -p sandstep
    cargo build --quiet "${profile_args[@]}" -p sandstep-fleet
    bin=target/$profile/sandstep
    fleet_bin=target/$profile/sandstep-fleet
    scripts/build-components.sh --quiet
fi
[[ -n $fleet_bin ]] || { echo "package: --bin needs --fleet-bin" >&2; exit 2; }
[[ -n $version ]] || version=$(sed -n '0,/^version = "\(.*\)"/s//\1/p' Cargo.toml)
arch=$(dpkg --print-architecture)

sign_args=()
if [[ -n $key ]]; then
    [[ -f $key && -f $key.pub ]] || { echo "package: $key and $key.pub must exist" >&2; exit 2; }
    sign_args=(--key "$key")
    trust_name=sandstep-release
else
    key=target/dev-keys/handlers-dev.key   # sign-handlers.sh generates it once
    trust_name=sandstep-development-UNSAFE
    echo "package: no --key: signing with the DEVELOPMENT key $key (installed as $trust_name.pub; never ship it)" >&2
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/sandstep
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/lib/sandstep/handlers" \
    "$pkg/usr/share/sandstep/trust/handlers" "$pkg/usr/share/doc/sandstep" "$pkg/etc/sandstep" \
    "$pkg/lib/systemd/system"
install -m 0755 "$bin" "$pkg/usr/bin/sandstep"
strip --strip-unneeded "$pkg/usr/bin/sandstep"

SANDSTEP=$bin scripts/sign-handlers.sh "${sign_args[@]}" --out "$stage/handlers" >/dev/null
install -m 0644 "$stage"/handlers/*.wasm "$pkg/usr/lib/sandstep/handlers/"
install -m 0644 "$key.pub" "$pkg/usr/share/sandstep/trust/handlers/$trust_name.pub"

# The config: the commented example, with the packaged trust dir, the agent and broker settings,
# and the built-in policy of the default handlers written out (a [handlers] table in a config
# replaces the built-in one, so all of it is here for the operator to adjust).
{
    echo "# /etc/sandstep/config.toml: sandstep's configuration (a conffile: your edits survive upgrades)."
    echo "# Check it with \`sandstep doctor\`. Commands use this file when no --config is given."
    echo
    # One sed, no pipe: a reader that quits early would SIGPIPE the writer (exit 141 under
    # pipefail, depending on timing).
    sed -e '1,2d' -e '/^# Policy per handler id/,$d' \
        -e 's|^handler-key-dirs = \[\] .*|handler-key-dirs = ["/usr/share/sandstep/trust/handlers"]   # the package'"'"'s key; add yours with `sandstep trust add handler`|' \
        examples/config.toml
    echo "# The gateway agent (sandstep-agent.service) and its broker."
    sed -e '1,3d' -e 's|^device-id = .*|# device-id = "gateway-001"          # default: the host name|' \
        -e 's|^groups = .*|groups = []|' examples/agent.toml
    echo
    sed -n '/^# Policy per handler id/,$p' examples/config.toml
    echo
    sed -e '1,2d' gateway/src/default-policy.toml
} > "$pkg/etc/sandstep/config.toml"
chmod 0644 "$pkg/etc/sandstep/config.toml"
"$bin" trust list --config "$pkg/etc/sandstep/config.toml" --data-dir "$stage/check" >/dev/null \
    || { echo "package: the generated config does not load" >&2; exit 1; }

# The handler SDK's sources, for `sandstep handler new` (a project depends on it by path): the
# sdk and model crates, the WIT package, and a workspace manifest made from this repository's,
# with only what those two crates inherit.
rust=$pkg/usr/share/sandstep/rust
install -d "$rust"
cp -r sdk model wit "$rust/"
rm -rf "$rust/sdk/target" "$rust/model/target"
python3 - Cargo.toml "$rust/Cargo.toml" <<'PY'
import re, sys, tomllib
root = tomllib.load(open(sys.argv[1], "rb"))
ws = root["workspace"]
used = set()
for crate in ("sdk", "model"):
    deps = tomllib.load(open(f"{crate}/Cargo.toml", "rb")).get("dependencies", {})
    used |= {name for name, spec in deps.items() if isinstance(spec, dict) and spec.get("workspace")}
def value(v):
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    return '"' + v + '"' if isinstance(v, str) else str(v).lower()
out = ['# The sdk and model crates as shipped for handler projects (made by scripts/package.sh).',
       '[workspace]', 'resolver = "2"', 'members = ["sdk", "model"]', '', '[workspace.package]']
out += [f"{k} = {value(v)}" for k, v in ws["package"].items()]
out += ['', '[workspace.dependencies]']
out += [f"{k} = {value(ws['dependencies'][k])}" for k in sorted(used)]
for table, lints in ws.get("lints", {}).items():
    out += ['', f'[workspace.lints.{table}]'] + [f"{k} = {value(v)}" for k, v in lints.items()]
open(sys.argv[2], "w").write("\n".join(out) + "\n")
PY
find "$rust" -type d -exec chmod 0755 {} + && find "$rust" -type f -exec chmod 0644 {} +

install -m 0644 packaging/sandstep/systemd/sandstep-agent.service "$pkg/lib/systemd/system/"
install -m 0644 README.md examples/agent.toml "$pkg/usr/share/doc/sandstep/"
install -m 0755 packaging/sandstep/debian/postinst packaging/sandstep/debian/prerm \
    packaging/sandstep/debian/postrm "$pkg/DEBIAN/"
install -m 0644 packaging/sandstep/debian/conffiles "$pkg/DEBIAN/"

glibc=$(objdump -T "$pkg/usr/bin/sandstep" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
# Packed relative relocations (gateway/build.rs) are read by glibc 2.36 and later only.
if objdump -p "$pkg/usr/bin/sandstep" | grep -q GLIBC_ABI_DT_RELR; then
    glibc=$(printf '%s\n2.36\n' "$glibc" | sort -V | tail -1)
fi
cat > "$pkg/DEBIAN/control" <<EOF
Package: sandstep
Version: $version
Architecture: $arch
Maintainer: sandstep developers <sandstep@example.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
Depends: libc6 (>= $glibc), libgcc-s1
Recommends: ca-certificates
Suggests: mosquitto, sandstep-fleet
Section: admin
Priority: optional
Homepage: https://example.invalid/sandstep
Description: sandboxed multi-step update agent for Linux gateways
 sandstep runs ADU-style multi-step update manifests (inline steps, reference
 steps to child updates for attached components, installedCriteria), each step
 in a signed WebAssembly handler under wasmtime that sees only what its policy
 grants. It verifies payloads, writes ADU result files, survives reboots in the
 middle of an update and reports progress as device-shadow state over MQTT.
 .
 Shipped handlers: apt, script, A/B firmware, component-aware, file sets.
 The fleet side (replica, deployments, rollouts) is the sandstep-fleet package.
EOF

# The fleet side: its binary, config and the replica's unit.
fleet=$stage/sandstep-fleet
install -d "$fleet/DEBIAN" "$fleet/usr/bin" "$fleet/etc/sandstep" "$fleet/lib/systemd/system" \
    "$fleet/usr/share/doc/sandstep-fleet"
install -m 0755 "$fleet_bin" "$fleet/usr/bin/sandstep-fleet"
strip --strip-unneeded "$fleet/usr/bin/sandstep-fleet"
install -m 0644 examples/fleet.toml "$fleet/etc/sandstep/fleet.toml"
install -m 0644 packaging/sandstep-fleet/systemd/sandstep-shadow.service "$fleet/lib/systemd/system/"
install -m 0644 README.md "$fleet/usr/share/doc/sandstep-fleet/"
install -m 0755 packaging/sandstep-fleet/debian/postinst packaging/sandstep-fleet/debian/prerm \
    packaging/sandstep-fleet/debian/postrm "$fleet/DEBIAN/"
install -m 0644 packaging/sandstep-fleet/debian/conffiles "$fleet/DEBIAN/"
glibc=$(objdump -T "$fleet/usr/bin/sandstep-fleet" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
cat > "$fleet/DEBIAN/control" <<EOF
Package: sandstep-fleet
Version: $version
Architecture: $arch
Maintainer: sandstep developers <sandstep@example.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$fleet" | cut -f1)
Depends: libc6 (>= $glibc), libgcc-s1
Recommends: ca-certificates
Suggests: mosquitto, postgresql
Replaces: sandstep (<< 0.2.0~)
Breaks: sandstep (<< 0.2.0~)
Section: admin
Priority: optional
Homepage: https://example.invalid/sandstep
Description: fleet side of the sandstep update agent: replica, deployments, rollouts
 The device-state replica (desired and reported documents over MQTT, kept in
 SQLite or PostgreSQL, several replicas sharing one database), and the
 operator's commands: signed deployments to devices or groups, status, cancel,
 and phased rollouts that pause themselves when devices fail. Runs where the
 fleet is steered; gateways run the sandstep package.
EOF

mkdir -p "$out"
deb="$out/sandstep_${version}_${arch}.deb"
fleet_deb="$out/sandstep-fleet_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
dpkg-deb --root-owner-group -Zxz --build "$fleet" "$fleet_deb" >/dev/null
echo "$deb"
echo "$fleet_deb"
