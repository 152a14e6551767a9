#!/usr/bin/env bash
# Builds every guest (handlers/*, examples/*-handler, tests/guests/*) into a WebAssembly component:
#
#     target/wasm/<package>.wasm
#
# With rustup's wasm32-wasip2 target installed, it uses that. Otherwise it uses Debian's Rust and
# its std sources (see TOOLCHAIN notes in the README), installing the packages when running as root,
# or printing the exact command to run when not.
#
# Usage: scripts/build-components.sh [--quiet] [PACKAGE...]   (default: every guest)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
target_dir=${CARGO_TARGET_DIR:-$root/target}
out_dir=$target_dir/wasm
quiet=()
if [[ ${1:-} == --quiet ]]; then
    quiet=(--quiet)
    shift
fi

say() { [[ ${#quiet[@]} -gt 0 ]] || echo "build-components: $*" >&2; }

packages=("$@")
if [[ ${#packages[@]} -eq 0 ]]; then
    for manifest in handlers/*/Cargo.toml examples/*-handler/Cargo.toml tests/guests/*/Cargo.toml; do
        [[ -f $manifest ]] || continue
        packages+=("$(basename "$(dirname "$manifest")")")
    done
fi

# shellcheck source=debian-wasip2.env
source "$root/scripts/debian-wasip2.env"
read -r -a debian_packages <<< "$DEBIAN_PACKAGES"

missing_debian_packages() {
    local missing=()
    for p in "${debian_packages[@]}"; do
        dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    echo "${missing[@]:-}"
}

pkg_args=()
for p in "${packages[@]}"; do pkg_args+=(-p "$p"); done

# The project's own cargo settles the lock file first; the guest build then uses it as is.
cargo metadata --format-version 1 >/dev/null

mkdir -p "$out_dir"
# One build at a time: tests in several processes may ask for components at once.
exec 9>"$out_dir/.lock"
flock 9

# grep reads all its input (no -q): a reader that quits early can SIGPIPE the writer, a failure
# under pipefail.
if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -x wasm32-wasip2 >/dev/null; then
    say "using rustup's wasm32-wasip2 target"
    cargo build "${quiet[@]}" --profile guest --target wasm32-wasip2 "${pkg_args[@]}"
else
    missing=$(missing_debian_packages)
    if [[ -n $missing ]]; then
        install_cmd="apt-get update && apt-get install -y ${debian_packages[*]}"
        if [[ $(id -u) -eq 0 ]]; then
            say "installing Debian packages: $missing"
            sh -c "$install_cmd" >&2
        else
            echo "build-components: no wasm32-wasip2 target in rustup, and these Debian packages are missing: $missing" >&2
            echo "build-components: run as root:  $install_cmd" >&2
            echo "build-components: or, with rustup:  rustup target add wasm32-wasip2" >&2
            exit 1
        fi
    fi
    say "using Debian's Rust (rustc-web) with build-std"
    # Debian's cargo and rustc come first; the flags link wasip2 through Debian's wasi-libc and
    # wasm-ld, and give the component an _initialize so static constructors run.
    env -u CARGO_ENCODED_RUSTFLAGS -u RUSTUP_TOOLCHAIN -u CARGO -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER \
        PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
        RUSTFLAGS="$DEBIAN_RUSTFLAGS" \
        /usr/bin/cargo build "${quiet[@]}" --locked --profile guest --target wasm32-wasip2 \
        -Zbuild-std=std,panic_abort "${pkg_args[@]}"
fi

for p in "${packages[@]}"; do
    built="$target_dir/wasm32-wasip2/guest/${p//-/_}.wasm"
    [[ -f $built ]] || { echo "build-components: $p produced no $built" >&2; exit 1; }
    # Copy only when changed, so consumers can rely on mtimes.
    if ! cmp -s "$built" "$out_dir/$p.wasm"; then
        cp "$built" "$out_dir/$p.wasm.tmp"
        mv -f "$out_dir/$p.wasm.tmp" "$out_dir/$p.wasm"
    fi
    say "$out_dir/$p.wasm ($(stat -c %s "$out_dir/$p.wasm") bytes)"
done
