"""zo/ stays a leaf with a clean inside: no import circle runs through it (function-level imports counted, since
they only hide a circle), no function-level privtune import inside it, and no code outside zo/ uses a private
member of zo/ (what the engine offers others has a public name)."""

import ast
from pathlib import Path

from test_import_graph import PKG, ROOT, is_module, module_name  # tests/ is on sys.path (rootdir conftest)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(privtune module imported, whether the import is inside a function) for every import in `path`."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        out += [(n, id(node) in nested) for n in names if n.startswith("privtune") and is_module(n)]
    return out


def graph() -> dict[str, set[str]]:
    g = {}
    for path in PKG.rglob("*.py"):
        # an import of a package's module also runs the package's __init__; those (docstring-only here) are no edge
        g[module_name(path)] = {m for m, _ in imports(path) if m != module_name(path) and is_module(m)
                                and not (PKG.parent / Path(*m.split(".")) / "__init__.py").exists()}
    return g


def test_no_import_circle_runs_through_zo():
    g = graph()
    zo = [m for m in g if m.startswith("privtune.zo.")]
    assert {"privtune.zo.seeds", "privtune.zo.kernels", "privtune.zo.forward", "privtune.zo.engine",
            "privtune.zo.sums"} <= set(zo)
    for start in zo:
        seen, todo = set(), list(g[start])
        while todo:
            m = todo.pop()
            assert m != start, f"{start} imports itself through a circle"
            if m not in seen:
                seen.add(m)
                todo += g.get(m, ())


def test_zo_has_no_function_level_privtune_imports():
    inside = [(p.name, m) for p in (PKG / "zo").glob("*.py") for m, nested in imports(p) if nested]
    assert inside == []


def private_names_of_zo() -> set[str]:
    names = set()
    for path in (PKG / "zo").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self" \
                    and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_no_private_member_of_zo_is_used_outside_zo():
    private = private_names_of_zo()
    assert {"_bank", "_z", "_install_hooks"} <= private
    outside = [p for p in list(PKG.rglob("*.py")) + list((ROOT / "benchmarks").glob("*.py"))
               + list((ROOT / "tests").rglob("*.py")) if "zo" not in p.relative_to(ROOT).parts[:3]]
    uses = []
    for path in outside:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in private:
                uses.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and "zo" in (node.module or "").split("."):
                uses += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                         if a.name.startswith("_")]
    assert uses == []
