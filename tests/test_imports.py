"""The package's import graph: one-way dependencies, no cycles, no private names across modules.

Every ``import`` in ``src/sepconv`` counts, including those inside
functions (a function-level import hides a cycle; it does not remove it).
Layers, lowest first (a module may import from its own layer or below):

    utils, version < geometry < layers < cost, factorize, backends < models, data
    < train < bench, experiments, quantization, interop < the CLI (cli.py, every */cli.py, __init__, __main__)

A sub-command module (``<package>/cli.py``) sits with the CLI: it parses and
prints, and may read any package.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "sepconv"

RANKS = {
    "utils": 0, "version": 0,
    "geometry": 1,
    "layers": 2,
    "cost": 3, "factorize": 3, "backends": 3,
    "models": 4, "data": 4,
    "train": 5,
    "bench": 6, "experiments": 6, "quantization": 6, "interop": 6,
}
CLI_RANK = 7


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}


def rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1 or parts[-1] in ("cli", "__main__"):
        return CLI_RANK
    if parts[1] not in RANKS:
        raise AssertionError(f"{module}: package sepconv.{parts[1]} has no layer in tests/test_imports.py RANKS")
    return RANKS[parts[1]]


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every sepconv import in ``path``."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.split(".")[0] == PACKAGE]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            names = [alias.name for alias in node.names]
            # ``from package import submodule`` imports the submodule
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            found += [(s, [], node.lineno) for s in subs]
            plain = [n for n in names if f"{target}.{n}" not in known]
            if plain or not subs:
                found.append((target, plain, node.lineno))
    return found


def graph() -> dict[str, list[tuple[str, list[str], int]]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def test_every_module_is_in_a_layer():
    for name in modules():
        rank(name)


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{src} (layer {rank(src)}) imports {dst} (layer {rank(dst)}) at line {line}"
              for src, edges in graph().items() for dst, _, line in edges
              if dst in modules() and rank(dst) > rank(src)]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    edges = {src: {dst for dst, _, _ in out if dst != src and dst in modules()} for src, out in graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_no_private_name_or_private_module_is_imported_from_another_package():
    def package_of(module: str) -> str:
        return module.rsplit(".", 1)[0] if module in modules() and not modules()[module].name == "__init__.py" else module

    bad = []
    for src, edges in graph().items():
        for dst, names, line in edges:
            private_module = any(part.startswith("_") and part != "__init__" for part in dst.split(".")[1:])
            outside = not src.startswith(dst.rsplit(".", 1)[0] + ".") and not src == dst.rsplit(".", 1)[0]
            if private_module and outside:
                bad.append(f"{src}:{line} imports private module {dst}")
            bad += [f"{src}:{line} imports private name {dst}.{n}" for n in names
                    if n.startswith("_") and n != "__version__" and package_of(src) != package_of(dst)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("probe", ["upward", "cycle", "private"])
def test_the_checks_catch_what_they_look_for(tmp_path, probe, monkeypatch):
    """The checks above fail on a planted violation (so a passing run means something)."""
    pkg = tmp_path / PACKAGE
    (pkg / "utils").mkdir(parents=True)
    (pkg / "layers").mkdir()
    for d in (pkg, pkg / "utils", pkg / "layers"):
        (d / "__init__.py").write_text("")
    if probe == "upward":
        (pkg / "utils" / "a.py").write_text("def f():\n    from ..layers import b\n")
        (pkg / "layers" / "b.py").write_text("")
        check = test_no_module_imports_from_a_higher_layer
    elif probe == "cycle":
        (pkg / "layers" / "a.py").write_text("from . import b\n")
        (pkg / "layers" / "b.py").write_text("def f():\n    from .a import g\n")
        check = test_the_import_graph_has_no_cycle
    else:
        (pkg / "utils" / "_hidden.py").write_text("x = 1\n")
        (pkg / "layers" / "b.py").write_text("from ..utils._hidden import x\n")
        check = test_no_private_name_or_private_module_is_imported_from_another_package
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    with pytest.raises(AssertionError):
        check()
