"""The package's import graph has no circles (function-level imports counted: they only hide a circle), and the CLI
package's modules share helpers through cli/common.py, never through the package or each other."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "src" / "privtune"


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PKG.parent / rel).with_suffix(".py").exists() or (PKG.parent / rel / "__init__.py").exists()


def imports(path: Path) -> set[str]:
    """Every privtune module `path` imports, wherever the import statement is. `from P import name` is an edge to
    the module P.name when that is a module, else to P (a package's __init__ when P is a package)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names = [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        out |= {n for n in names if n.startswith("privtune") and is_module(n) and n != me}
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PKG.rglob("*.py")}


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
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
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert circles(graph()) == []


def test_cli_modules_share_only_through_common():
    g = graph()
    for m in ("privtune.cli.train", "privtune.cli.privacy", "privtune.cli.audit", "privtune.cli.offsite"):
        assert {d for d in g[m] if d.startswith("privtune.cli")} <= {"privtune.cli.common"}, m
    assert not {d for d in g["privtune.cli.common"] if d.startswith("privtune.cli")}


def test_the_foundations_import_nothing_above_them():
    g = graph()
    assert g["privtune.errors"] == set() and g["privtune.paths"] == set() and g["privtune.atomic"] == set()
