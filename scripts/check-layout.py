#!/usr/bin/env python3
"""Checks that the repository tracks source only (scripts/check.sh runs it).

A tracked file must lie in a known place of the layout and be of a kind that belongs there:
no logs, databases, build output or packages anywhere, no file whose name is not a plain name
(a `?sslmode=require` left by a mistyped database URL), nothing large, and binary content only
where inputs are binary on purpose (fuzz seeds and regressions).

Usage: scripts/check-layout.py [REPO_ROOT]
"""
import os
import re
import subprocess
import sys

# Top-level entries of the layout (README's "Layout" section).
TOP = {
    ".ci", ".gitignore", "ARCHITECTURE.md", "BENCHMARKS.md", "Cargo.lock", "Cargo.toml",
    "README.md", "SECURITY.md", "examples", "fleet", "fuzz", "gateway", "handlers", "model",
    "packaging", "scripts", "sdk", "signing", "tests", "transport", "wit",
}
# What never belongs in the repository, wherever it is.
FORBIDDEN = re.compile(
    r"(\.log|\.sqlite3?|\.sqlite-(wal|shm)|\.db|\.wasm|\.cwasm|\.deb|\.o|\.a|\.so|\.rlib|"
    r"\.profraw|\.tar(\.\w+)?|\.zip|~|\.swp|\.orig|\.rej)$"
)
# Where binary inputs are kept on purpose.
BINARY_OK = ("fuzz/seeds/", "fuzz/regressions/")
NAME = re.compile(r"^[A-Za-z0-9._+-][A-Za-z0-9._+@-]*$")
MAX_BYTES = 512 * 1024


def problems(root):
    files = subprocess.run(
        ["git", "-C", root, "ls-files", "-z"], check=True, capture_output=True
    ).stdout.decode().split("\0")
    for f in filter(None, files):
        parts = f.split("/")
        if parts[0] not in TOP:
            yield f"{f}: outside the known layout (TOP in scripts/check-layout.py)"
            continue
        if "target" in parts[:-1] or any(p.startswith(".") and p not in (".ci", ".gitignore") for p in parts):
            yield f"{f}: build output or a hidden file"
        if not all(NAME.match(p) for p in parts):
            yield f"{f}: not a plain file name"
        if FORBIDDEN.search(f):
            yield f"{f}: a log, database, build output or archive; these are never committed"
        path = os.path.join(root, f)
        if not os.path.isfile(path):
            continue
        size = os.path.getsize(path)
        if size > MAX_BYTES:
            yield f"{f}: {size} bytes (over {MAX_BYTES}); large data is made at test time"
        if not f.startswith(BINARY_OK):
            with open(path, "rb") as fh:
                data = fh.read()
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                yield f"{f}: binary content outside {', '.join(BINARY_OK)}"


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "."
    found = list(problems(root))
    for p in found:
        print(f"check-layout: {p}", file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
