#!/usr/bin/env python3
"""Structure checks of a Rust source tree (scripts/check.sh runs them on every crate's src):

  import cycles   no cycle among top-level modules, nor among their submodules (a module and
                  its own ancestors may use each other: that is nesting, not a cycle);
  function size   no function outside `#[cfg(test)]` longer than 100 lines.

A module's dependencies are the `crate::a::b` and `super::x` paths in its code (comments,
strings and test modules left out), resolved to the longest module path that exists.

Usage: scripts/check-structure.py SRC_DIR
"""
import os
import re
import sys

MAX_LINES = 100


def blank(text):
    """Keeps newlines only, so line numbers survive."""
    return re.sub(r"[^\n]", " ", text)


def code_only(src):
    """Source with comments, string and char literals blanked out."""
    out, i, n = [], 0, len(src)
    while i < n:
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif (m := re.match(r'(?<![A-Za-z0-9_])b?r(#*)"', src[i:i + 12])) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            end = src.find('"' + m.group(1), i + len(m.group(0)))
            j = n if end < 0 else end + 1 + len(m.group(1))
        elif src[i] == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j += 1
        elif m := re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", src[i:i + 12]):
            j = i + len(m.group(0))
        else:
            out.append(src[i])
            i += 1
            continue
        out.append(blank(src[i:j]))
        i = j
    return "".join(out)


def without_tests(code):
    """Blanks out `#[cfg(test)]` items (to the end of the braced item that follows)."""
    while (t := code.find("#[cfg(test)]")) >= 0:
        open_at = code.find("{", t)
        semi = code.find(";", t)
        if open_at < 0 or 0 <= semi < open_at:
            end = semi + 1
        else:
            depth, end = 0, open_at
            while end < len(code):
                depth += {"{": 1, "}": -1}.get(code[end], 0)
                end += 1
                if depth == 0:
                    break
        code = code[:t] + blank(code[t:end]) + code[end:]
    return code


def test_modules(root):
    """Modules declared `#[cfg(test)] mod name;` (their code lives in a file of its own)."""
    found = set()
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            if f.endswith(".rs"):
                path = os.path.join(dirpath, f)
                code = code_only(open(path, encoding="utf-8").read())
                parent = module_of(root, path)
                for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", code):
                    found.add(f"{parent}::{m.group(1)}" if parent else m.group(1))
    return found


def sources(root):
    tests = test_modules(root)
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            if f.endswith(".rs"):
                path = os.path.join(dirpath, f)
                module = module_of(root, path) or ""
                if any(module == t or module.startswith(t + "::") for t in tests):
                    continue  # test code, in a file of its own
                yield path, without_tests(code_only(open(path, encoding="utf-8").read()))


def module_of(root, path):
    parts = os.path.relpath(path, root)[:-3].split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return "::".join(parts) if parts not in (["lib"], ["main"]) else None


def expand_groups(code):
    """`crate::{a, b::c}` and `super::{x, y}` as one path each (`crate::a crate::b::c`), so the
    names a brace group imports count; nested groups are expanded from the inside out."""
    group = re.compile(r"\b((?:crate|super)(?:::[a-z_][a-z0-9_]*)*)::\{([^{}]*)\}")
    while True:
        new = group.sub(
            lambda m: " ".join(f"{m.group(1)}::{p.strip()}" for p in m.group(2).split(",") if p.strip()),
            code,
        )
        if new == code:
            return code
        code = new


def dependencies(root):
    code = {m: c for p, c in sources(root) if (m := module_of(root, p))}
    names = set(code)
    deps = {}
    for m, c in code.items():
        found = set()
        c = expand_groups(c)
        for ref in re.findall(r"\bcrate::([a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*)", c):
            parts = ref.split("::")
            for k in range(len(parts), 0, -1):
                if "::".join(parts[:k]) in names:
                    found.add("::".join(parts[:k]))
                    break
        parent = m.rsplit("::", 1)[0] if "::" in m else None
        for ref in re.findall(r"\bsuper::([a-z_][a-z0-9_]*)", c):
            if parent:
                found.add(f"{parent}::{ref}" if f"{parent}::{ref}" in names else parent)
        deps[m] = {d for d in found if d != m}
    return deps


def cycles(deps, level):
    top = lambda m: "::".join(m.split("::")[:level])
    ancestor = lambda a, b: a == b or b.startswith(a + "::") or a.startswith(b + "::")
    graph = {}
    for m, ds in deps.items():
        for d in ds:
            a, b = top(m), top(d)
            if not ancestor(a, b):
                graph.setdefault(a, set()).add(b)
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found, graph


def long_functions(root):
    for path, code in sources(root):
        for m in re.finditer(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)", code):
            j, nesting = m.end(), 0
            while j < len(code):
                ch = code[j]
                if ch in "([":
                    nesting += 1
                elif ch in ")]":
                    nesting -= 1
                elif ch == ";" and nesting <= 0:
                    break
                elif ch == "{" and nesting <= 0:
                    depth, k = 0, j
                    while k < len(code):
                        depth += {"{": 1, "}": -1}.get(code[k], 0)
                        if depth == 0:
                            break
                        k += 1
                    first = code.count("\n", 0, m.start()) + 1
                    lines = code.count("\n", 0, k) + 2 - first
                    if lines > MAX_LINES:
                        yield f"{path}:{first}: fn {m.group(1)} is {lines} lines (at most {MAX_LINES})"
                    break
                j += 1


def main():
    root = sys.argv[1]
    problems = []
    deps = dependencies(root)
    for level in (1, 2):
        found, graph = cycles(deps, level)
        for comp in found:
            edges = "; ".join(f"{a} -> {', '.join(sorted(b for b in graph[a] if b in comp))}" for a in comp)
            problems.append(f"import cycle among {', '.join(comp)}: {edges}")
    problems.extend(long_functions(root))
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
