"""The package's shape: a declared public API the adapters stay within, and no import circles in the core."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "shared_core"
ADAPTERS = [ROOT / "langchain_deal", ROOT / "llamaindex_deal"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """``(module, names, line)`` for every import in ``path``, function-level ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            yield base, [alias.name for alias in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno


def _core_edges() -> dict[str, set[str]]:
    """Module -> the core modules it imports (anywhere in its body), each to the module named."""
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, names, _ in _imports(path):
            if not target.startswith("shared_core"):
                continue
            for imported in names or [""]:  # `from pkg import submodule` imports the submodule
                candidate = f"{target}.{imported}" if imported else target
                edges[name].add(candidate if candidate in modules else target)
    return edges


def test_no_import_circle_in_the_core_counting_function_level_imports() -> None:
    edges = _core_edges()
    # A package's __init__ re-exporting its submodules is an edge down, not a circle: a submodule
    # importing its own package's __init__ is what would close one, and is reported like any other.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in edges:
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def _adapter_core_imports() -> Iterator[tuple[Path, int, str, str]]:
    for folder in ADAPTERS:
        for path in folder.rglob("*.py"):
            for module, names, line in _imports(path):
                if module.startswith("shared_core"):
                    for name in names:
                        yield path, line, module, name


def test_adapters_import_only_declared_public_names() -> None:
    problems = []
    for path, line, module, name in _adapter_core_imports():
        target = importlib.import_module(module)
        public = getattr(target, "__all__", None)
        if public is None:
            problems.append(f"{path.name}:{line} imports {module}, which declares no __all__")
        elif name not in public:
            problems.append(f"{path.name}:{line} imports {module}.{name}, which is not in its __all__")
    assert not problems, "\n".join(problems)


def test_every_core_module_the_adapters_use_lists_names_that_exist() -> None:
    used = {module for _, _, module, _ in _adapter_core_imports()}
    assert used, "the adapters import the core"
    for module in sorted(used):
        target = importlib.import_module(module)
        missing = [name for name in getattr(target, "__all__", []) if not hasattr(target, name)]
        assert not missing, f"{module}.__all__ lists names it does not define: {missing}"


def test_the_core_installs_and_imports_without_either_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('langchain_core', 'llama_index', 'langchain'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import shared_core, shared_core.cli, shared_core.demo\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
