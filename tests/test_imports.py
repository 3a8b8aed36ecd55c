"""The package's import graph: no module of `superbert` imports itself back through others (a
circle makes the import order decide what works), and every module imports on its own.

The graph is read statically: module-level imports, except under `if TYPE_CHECKING` and
`if __name__ == "__main__"` (a function's own import runs later, when it is called). A
package's `__init__` imported from outside it counts as a dependency; a submodule's own
packages do not (they import it, the normal shape). Each module is then imported alone: one
interpreter imports the package once (so torch and the other libraries are loaded), forgets
the package's modules and forks a child per module, which starts with none of them (a fresh
interpreter per module would pay torch's import ~80 times)."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "superbert"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _top_level_imports(tree: ast.Module):
    """Import statements that run when the module is imported (not inside a def or class)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and ("TYPE_CHECKING" in ast.unparse(node.test)
                                           or "__main__" in ast.unparse(node.test)):
            todo.extend(node.orelse)  # type hints, or run as a script: not run by an import
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    todo.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The superbert modules `name` imports at import time, with the packages above them."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import sub` imports the submodule `pkg.sub` when there is one
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names
                                if f"{stem}.{a.name}" in modules]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in modules and candidate != name:
                    found.add(candidate)
    # a submodule's own packages are imported first
    parts = name.split(".")
    found.update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) != name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_among_superbert_modules():
    modules = all_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    # A module's own packages run first but are not what it depends on: a package's __init__
    # importing its submodules is the normal shape, not a circle.
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_relative_import_names_a_module_of_the_package():
    """Function-level imports too (they run only when called): a moved module's `from . import`
    must still point into the package."""
    modules = all_modules()
    wrong = []
    for name, path in modules.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                stem = ".".join(base[:len(base) - node.level + 1] +
                                ([node.module] if node.module else []))
                if stem not in modules:
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {stem}")
                elif not node.module:
                    wrong += [f"{path.relative_to(ROOT)}:{node.lineno}: {stem}.{a.name}"
                              for a in node.names if f"{stem}.{a.name}" not in modules]
    assert not wrong, wrong


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_imports_alone():
    names = sorted(all_modules())
    script = textwrap.dedent(f"""
        import importlib, os, sys, traceback
        names = {names!r}
        # Load every third-party library the package uses once (transformers, for one, loads
        # its submodules lazily, on first use), then forget the package's own modules: each
        # child starts with none of them loaded.
        for name in names:
            importlib.import_module(name)
        for name in [m for m in sys.modules if m.split(".")[0] == "superbert"]:
            del sys.modules[name]
        failed = []
        for name in names:
            pid = os.fork()
            if pid == 0:
                try:
                    importlib.import_module(name)
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            if status:
                failed.append(name)
        print("failed:", failed)
        sys.exit(1 if failed else 0)
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
