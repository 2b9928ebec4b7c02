"""The package's import graph: layers only import downwards, and nothing imports in a circle.

Layers, lowest first (``nbs_lib/<layer>/``): core, data, models, methods, report, studies.
A module may import its own layer and the layers below it, with two extra rules: a
chapter study (``studies/chNN_*``) never imports another chapter (they share
``studies/common`` and ``studies/sources``), and no module inside the layers imports one
of the flat names kept for the executed book (:data:`SHIMS`). Lazy imports inside
functions count like top-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nbs_lib"
LAYERS = ("core", "data", "models", "methods", "report", "studies")
# Old flat modules kept as thin re-exports for executed chapters in book/ (none left: every
# chapter is executed on the layered imports; a future rename would list its old name here).
SHIMS: set[str] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``nbs_lib`` module ``path`` imports (absolute or relative, top level or lazy)."""
    me = module_name(path).split(".")
    package = me if path.name == "__init__.py" else me[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("nbs_lib")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            if not base.startswith("nbs_lib"):
                continue
            for a in node.names:  # `from nbs_lib.data import registry` imports a module
                sub = f"{base}.{a.name}"
                found.add(sub if (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists() else base)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in edges.items():
        src_layer = layer_of(src)
        if src_layer is None:
            continue  # nbs_lib itself and the shims: only notebooks use them
        for dst in targets:
            dst_layer = layer_of(dst)
            if dst.split(".")[-1] in SHIMS and dst.count(".") == 1:
                bad.append(f"{src} imports the kept flat name {dst}; import its new module")
            elif dst_layer is None:
                continue
            elif LAYERS.index(dst_layer) > LAYERS.index(src_layer):
                bad.append(f"{src} ({src_layer}) imports {dst} ({dst_layer}), a higher layer")
            elif src_layer == "studies" and ".ch" in src and ".ch" in dst and src != dst:
                bad.append(f"{src} imports another chapter, {dst}; share code through studies.common")
    return bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (depth-first search, each cycle reported once)."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt == node or nxt not in edges:
                continue
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_every_module_is_in_a_layer_or_a_kept_shim():
    loose = [m for m in graph() if layer_of(m) is None and m != "nbs_lib"
             and m.split(".")[-1] not in SHIMS]
    assert not loose, f"modules outside the layers: {loose}"


def test_no_upward_import_and_no_chapter_imports_another():
    assert violations(graph()) == []


def test_no_import_cycle():
    # a package face (__init__) re-exports its own submodules; those edges are not cycles of code
    edges = {m: {d for d in ds if not d.startswith(m + ".")} for m, ds in graph().items()}
    assert cycles(edges) == []


def test_the_checks_can_fail():
    """The rules catch what they are meant to catch (an upward import, a chapter pair, a loop)."""
    edges = {"nbs_lib.methods.attacks": {"nbs_lib.studies.common"},
             "nbs_lib.studies.ch06_x": {"nbs_lib.studies.ch04_y"},
             "nbs_lib.core.runs": {"nbs_lib.models.registry"}}
    found = violations(edges)
    assert len(found) == 3, found
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


@pytest.mark.parametrize("shim", sorted(SHIMS))
def test_shims_are_thin(shim):
    """A kept flat name only re-exports: no definitions of its own."""
    tree = ast.parse((PACKAGE / f"{shim}.py").read_text())
    own = [n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom, ast.Expr))]
    assert own == [], f"nbs_lib/{shim}.py defines code; it should only re-export"


def test_every_kept_flat_name_is_still_used_by_an_executed_chapter():
    """A shim exists only for executed chapters in book/; when none imports it, it must go."""
    import json
    book = Path(__file__).resolve().parents[1] / "book"
    code = "\n".join("".join(cell["source"]) for nb in sorted(book.glob("*.ipynb"))
                     for cell in json.loads(nb.read_text())["cells"] if cell["cell_type"] == "code")
    unused = sorted(name for name in SHIMS
                    if f"nbs_lib.{name} import" not in code and f"nbs_lib.{name}\n" not in code
                    and not any(name in line.split("import", 1)[1].replace(",", " ").split()
                                for line in code.splitlines() if line.startswith("from nbs_lib import")))
    assert not unused, f"no executed chapter imports {unused}: delete those modules and drop them from SHIMS"
