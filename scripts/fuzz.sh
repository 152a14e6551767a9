#!/usr/bin/env bash
# Runs sandstep's fuzz targets (fuzz/fuzz_targets, bodies in gateway/src/fuzzing.rs) under
# libFuzzer through cargo-fuzz, each for a bounded time. New corpus entries go to
# target/fuzz/corpus/<target> (the committed seeds in fuzz/seeds/<target> are read, never written);
# a crash leaves its input in target/fuzz/artifacts/<target>/ and fails the run.
#
# Usage: scripts/fuzz.sh [--time SECONDS] [--jobs N] [TARGET...]
#   --time  seconds per target (default 60)
#   --jobs  parallel libFuzzer jobs per target (default 1)
#   TARGET  any of the names in fuzz/Cargo.toml (default: all)
#
# Needs cargo-fuzz (installed from crates.io when missing) and a nightly toolchain for the
# sanitizer flags; without nightly, the stable toolchain is used with RUSTC_BOOTSTRAP=1.
# Every target also runs in the ordinary test suite over its seeds, regressions and mutations
# (gateway/tests/all/fuzz.rs), without libFuzzer.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
time=60
jobs=1
targets=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --time) time=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
all=$(grep -A1 '^\[\[bin\]\]' fuzz/Cargo.toml | sed -n 's/^name = "\(.*\)"$/\1/p')
if [[ ${#targets[@]} -eq 0 ]]; then
    read -r -a targets <<< "$(echo $all)"
fi
for t in "${targets[@]}"; do
    grep -qx "$t" <<< "$all" || { echo "fuzz.sh: no target $t (have: $(echo $all))" >&2; exit 2; }
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz from crates.io..." >&2
    cargo install --locked cargo-fuzz >/dev/null
fi
toolchain=()
if rustup toolchain list | grep '^nightly' >/dev/null; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi
# The shipped release profile (fat LTO, one codegen unit) would make every fuzz build slow.
export CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fuzz_target_dir=target/fuzz
failed=()
for t in "${targets[@]}"; do
    corpus=$fuzz_target_dir/corpus/$t
    artifacts=$fuzz_target_dir/artifacts/$t
    mkdir -p "$corpus" "$artifacts" "fuzz/seeds/$t"
    inputs=("$corpus" "fuzz/seeds/$t")
    [[ -d fuzz/regressions/$t ]] && inputs+=("fuzz/regressions/$t")
    echo "== $t: ${time}s"
    if ! cargo "${toolchain[@]}" fuzz run --fuzz-dir fuzz --target-dir "$fuzz_target_dir" "$t" "${inputs[@]}" -- \
        -max_total_time="$time" -jobs="$jobs" -workers="$jobs" -max_len=262144 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 2>&1 | tail -n 12; then
        failed+=("$t")
    fi
    # With -jobs, libFuzzer writes each job's log to fuzz-<n>.log in the working directory:
    # keep them with the target's run, never in the source tree.
    if compgen -G 'fuzz-*.log' >/dev/null; then
        mkdir -p "$fuzz_target_dir/logs/$t"
        mv fuzz-*.log "$fuzz_target_dir/logs/$t/"
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: crashes in: ${failed[*]} (inputs under $fuzz_target_dir/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${time}s each, no crash"
