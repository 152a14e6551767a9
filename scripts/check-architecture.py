#!/usr/bin/env python3
"""Checks the invariants ARCHITECTURE.md states, where a script can (scripts/check.sh runs it).

Each check prints what broke, naming the file or the dependency path; the exit status is 1 when
any did. Dependencies are read with `cargo tree` (the resolved graph, so a crate pulled in
transitively counts), sources with a comment- and string-blind scan.

Usage: scripts/check-architecture.py [REPO_ROOT]
"""
import os
import re
import subprocess
import sys

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from importlib import import_module  # noqa: E402

structure = import_module("check-structure")


def deps(package, features=None):
    """Every crate `package` links in a normal build (not dev, not build scripts)."""
    cmd = ["cargo", "tree", "--quiet", "-p", package, "-e", "normal", "--prefix", "none",
           "--offline", "--no-dedupe"]
    if features:
        cmd += ["--features", features]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def rust_files(src):
    for dirpath, _, files in os.walk(os.path.join(ROOT, src)):
        for name in sorted(files):
            if name.endswith(".rs"):
                yield os.path.join(dirpath, name)


def string_errors(src):
    """`Result<T, String>` (or `&str`) in `src`'s library code (not its `cli/`, not tests)."""
    for path, code in structure.sources(os.path.join(ROOT, src)):
        rel = os.path.relpath(path, ROOT)
        if "/cli/" in rel or rel.endswith("/main.rs"):
            continue
        for m in re.finditer(r"\bResult<", code):
            i, depth = m.end(), 1
            while i < len(code) and depth:
                depth += {"<": 1, ">": -1}.get(code[i], 0)
                i += 1
            args, depth, cur = [], 0, ""
            for ch in code[m.end():i - 1]:
                depth += {"<": 1, "(": 1, "[": 1, ">": -1, ")": -1, "]": -1}.get(ch, 0)
                if ch == "," and depth == 0:
                    args.append(cur)
                    cur = ""
                else:
                    cur += ch
            args.append(cur)
            if len(args) == 2 and args[1].strip() in ("String", "&str", "&'static str"):
                line = code.count("\n", 0, m.start()) + 1
                yield f"{rel}:{line}: Result<_, {args[1].strip()}>: library errors are typed (thiserror)"


def forbid_crates(package, crates, why, features=None):
    found = sorted(deps(package, features) & set(crates))
    return [f"{package} links {c}: {why}" for c in found]


def forbid_in_sources(src, patterns, why, allowed=(), skip_dir=None):
    """Library source lines of `src` (test modules left out) matching any of `patterns`, outside
    files ending in `allowed` and outside `skip_dir`."""
    out = []
    crate_src = src.split("/src")[0] + "/src"
    if src.endswith(".rs"):
        src_files = [os.path.join(ROOT, src)]
    else:
        src_files = list(rust_files(src))
    code = {os.path.relpath(p, ROOT): c for p, c in structure.sources(os.path.join(ROOT, crate_src))}
    for path in src_files:
        rel = os.path.relpath(path, ROOT)
        if rel.endswith(tuple(allowed)) or (skip_dir and rel.startswith(skip_dir + "/")):
            continue
        if rel not in code:
            continue  # a test module's file
        for n, line in enumerate(code[rel].splitlines(), 1):
            for p in patterns:
                if re.search(p, line):
                    out.append(f"{rel}:{n}: `{line.strip()}`: {why}")
    return out


DATABASES = ["rusqlite", "libsqlite3-sys", "tokio-postgres", "postgres-protocol",
             "tokio-postgres-rustls"]
WASM_ENGINE = ["wasmtime", "cranelift-codegen", "wasmtime-wasi"]
I_O = [r"\bstd::fs\b", r"\bstd::net\b", r"\bstd::process\b", r"\btokio\b", r"SystemTime::now",
       r"\bstd::env\b"]


def problems():
    yield from forbid_crates("sandstep", DATABASES, "the gateway never links a database client")
    yield from forbid_crates("sandstep", DATABASES, "not even with its dev tools",
                             features="dev-tools")
    yield from forbid_crates("sandstep-fleet", WASM_ENGINE + ["sandstep"],
                             "the fleet side links no wasm engine and not the gateway",
                             features="dev-tools")
    for shared in ("sandstep-transport", "sandstep-signing", "sandstep-model"):
        yield from forbid_crates(shared, ["sandstep", "sandstep-fleet"] + WASM_ENGINE + DATABASES,
                                 "a shared crate knows neither half")
    yield from forbid_in_sources("model/src", I_O, "the model crate has no I/O")
    yield from forbid_in_sources(
        "gateway/src/agent", [r"\bjson!\s*\(", r"\bserde_json::to_value\b"],
        "only source adapters (agent/source/) shape wire JSON",
        allowed=(), skip_dir="gateway/src/agent/source")
    yield from forbid_in_sources(
        "gateway/src/agent/core.rs",
        I_O[:4] + [r"\bsuper::(source|runner|outbox)\b", r"\bcrate::(datadir|download|sandbox)\b",
                   r"\breqwest\b", r"\bsandstep_transport::mqtt\b"],
        "the deployment core does no I/O and knows no source")
    for src in ("model/src", "transport/src", "signing/src", "gateway/src", "fleet/src", "sdk/src"):
        yield from string_errors(src)


def main():
    found = list(problems())
    for p in found:
        print(f"check-architecture: {p}", file=sys.stderr)
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
