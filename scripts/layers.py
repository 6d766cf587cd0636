#!/usr/bin/env python3
"""The crate's import graph: fails on an import cycle between its modules, or on an
import that points up the layers docs/architecture.md declares.

    scripts/layers.py            check; exit 1 with every cycle and upward import
    scripts/layers.py --graph    print every edge (file -> module it uses)

A module is one file under src/ (src/a/mod.rs is `a`, src/a/b.rs is `a::b`); src/main.rs
and src/bin/ are other crates. An edge is any path in non-test code that names another
module of the crate: `use crate::...`, `use super::...`, inline `crate::x::y::f()`, and in
a file with child modules, a path that starts with a child's name. A path resolves to the
longest module prefix it names, so `crate::config::schema::Routes` is an edge to
`config::schema` and `crate::config::Snapshot` one to `config` (src/config/mod.rs).
Test code (`#[cfg(test)]` items and files, tests.rs) is not counted: a test may build its
part from YAML through the layers above it.
"""
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = Path(os.environ.get("LAYERS_SRC", ROOT / "src"))  # LAYERS_SRC: for tests/layers.sh

# The layers, lowest first. A module may import its own layer and those below it, never
# one above. A module is in the layer of the longest prefix listed here.
LAYERS = [
    # 1. leaves: the schema, units and their primitives, and each runtime part.
    [
        "config::schema", "config::units", "config::secret", "config::kept", "config::build",
        "config::errors", "usage", "translate", "auth", "tenant", "limits", "resilience", "routing",
        "upstream", "upstream::trust", "observability", "observability::redact", "forward::ca",
        "forward::guard", "forward::settings",
        "proxy::errors", "mock",
    ],
    # 2. the compiled snapshot: compile steps, Snapshot, ConfigStore, the watcher.
    ["config"],
    # 3. front ends that read the snapshot.
    ["proxy", "forward", "admin"],
    # 4. the listeners and the process.
    ["server"],
]


def modules():
    """Module path -> file, for the library crate."""
    out = {}
    for f in sorted(SRC.rglob("*.rs")):
        rel = f.relative_to(SRC)
        if rel.parts[0] == "bin" or rel.as_posix() in ("main.rs", "lib.rs"):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "mod":
            parts.pop()
        out["::".join(parts)] = f
    return out


def strip_comments_and_strings(text):
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def strip_test_items(text):
    """Removes `#[cfg(test)]` items: a `mod x { ... }` block, a `mod x;`, or one item."""
    out, i = [], 0
    pat = re.compile(r"#\[cfg\(test\)\]")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i : m.start()])
        j = m.end()
        # the item ends at its `;` or at the brace that closes its first `{`
        depth = 0
        while j < len(text):
            c = text[j]
            if c == ";" and depth == 0:
                j += 1
                break
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            j += 1
        i = j


def test_files(mods):
    """Files declared with `#[cfg(test)] mod x;`, and every tests.rs."""
    skip = set()
    for name, f in mods.items():
        text = strip_comments_and_strings(f.read_text())
        for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text):
            skip.add(f"{name}::{m.group(1)}" if name else m.group(1))
    return skip | {n for n in mods if n.split("::")[-1] == "tests"}


def expand_use(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)

    def split_top(s):
        parts, depth, cur = [], 0, ""
        for c in s:
            if c == "," and depth == 0:
                parts.append(cur)
                cur = ""
                continue
            depth += c == "{"
            depth -= c == "}"
            cur += c
        if cur:
            parts.append(cur)
        return parts

    def go(prefix, s):
        if "{" not in s:
            yield prefix + re.sub(r"as\w+$", "", s)
            return
        head, rest = s.split("{", 1)
        inner = rest[: rest.rfind("}")]
        for part in split_top(inner):
            yield from go(prefix + head, part)

    for p in go("", tree):
        yield p.removesuffix("::self").removesuffix("::*")


def resolve(path, here, mods):
    """A path as written in module `here` -> the module it names, or None."""
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    base = here.split("::") if here else []
    if segs[0] == "crate":
        cur, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        cur = base[:]  # `super` is relative to the module, whatever file holds it
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                cur = cur[:-1]
            segs = segs[1:]
    elif "::".join(base + segs[:1]) in mods:
        cur = base  # a child module, named relatively
    else:
        return None
    best = None
    for k in range(len(segs) + 1):
        cand = "::".join(cur + segs[:k])
        if cand in mods:
            best = cand
    if best is None and not cur:
        return None
    return best if best is not None else ("::".join(cur) or None)


def edges(mods):
    skip = test_files(mods)
    out = {}
    for name, f in mods.items():
        if name in skip or any(name.startswith(s + "::") for s in skip):
            continue
        is_dir = f.name == "mod.rs"
        text = strip_test_items(strip_comments_and_strings(f.read_text()))
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            paths.extend(expand_use(m.group(1)))
        for m in re.finditer(r"(?<![\w:])((?:crate|super|self|[a-z_][a-z0-9_]*)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
            paths.append(m.group(1))
        deps = set()
        for p in paths:
            p = p.lstrip(":")
            first = p.split("::")[0]
            if first not in ("crate", "super", "self"):
                child = f"{name}::{first}" if name else first
                if not is_dir or child not in mods:
                    continue
            r = resolve(p, name, mods)
            if r and r != name and r not in skip:
                deps.add(r)
        out[name] = deps
    return out


def cycles(graph):
    """Tarjan's strongly connected components with more than one module."""
    index, low, stack, on, sccs = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sccs


# The layer of each part, by the part's name.
LAYER_OF = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def part_of(name):
    """The part a module belongs to: the longest prefix that LAYERS names, else itself."""
    segs = name.split("::")
    for k in range(len(segs), 0, -1):
        if "::".join(segs[:k]) in LAYER_OF:
            return "::".join(segs[:k])
    return name


def main():
    mods = modules()
    files = edges(mods)
    # Files of one part may use each other; the check is between parts.
    graph, why = {}, {}
    for a, deps in files.items():
        pa = part_of(a)
        graph.setdefault(pa, set())
        for b in deps:
            pb = part_of(b)
            if pb != pa:
                graph[pa].add(pb)
                why.setdefault((pa, pb), []).append(f"{a} -> {b}")
    if "--graph" in sys.argv:
        for a in sorted(files):
            for b in sorted(files[a]):
                print(f"{a} -> {b}")
        return 0
    bad = 0
    for comp in cycles(graph):
        bad += 1
        inside = [
            f"  {a} -> {b}  ({'; '.join(why[(a, b)][:3])})"
            for a in comp
            for b in sorted(graph[a])
            if b in comp
        ]
        print(f"import cycle between {len(comp)} parts: {', '.join(comp)}")
        print("\n".join(inside))
    for a in sorted(graph):
        la = LAYER_OF.get(a)
        if la is None:
            bad += 1
            print(f"{a}: in no layer; add it to LAYERS in scripts/layers.py and docs/architecture.md")
            continue
        for b in sorted(graph[a]):
            lb = LAYER_OF.get(b)
            if lb is not None and lb > la:
                bad += 1
                print(f"upward import: {a} (layer {la + 1}) uses {b} (layer {lb + 1}): {'; '.join(why[(a, b)][:3])}")
    if bad:
        print(f"layers: {bad} problem(s); see docs/architecture.md")
        return 1
    print(
        f"layers: {len(mods)} modules in {len(graph)} parts, "
        f"{sum(map(len, graph.values()))} imports between parts: no cycle, none upward"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
