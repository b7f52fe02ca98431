"""The shape the project holds itself to, checked on every run: small files and functions, Ray and
vLLM each imported by one module, and no import cycle between modules or between packages."""

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("deepalign", "policy", "train", "sft", "data_tools", "rewards", "grpo", "rollout", "evals")
SOURCES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module this file imports, at any depth (lazy imports inside functions count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in SOURCES}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt]
            if nxt not in state and (found := visit(nxt, stack + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_file_over_400_lines_and_no_function_over_60():
    big = [f"{p.relative_to(REPO)} ({n})" for p in SOURCES if (n := p.read_text().count("\n")) > 400]
    long = []
    for p in SOURCES:
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long.append(f"{p.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1})")
    assert not big, big
    assert not long, long


@pytest.mark.parametrize("library, module", [("ray", "grpo/cluster.py"), ("vllm", "rollout/vllm_engine.py")])
def test_one_module_imports_each_engine_library(library, module):
    pattern = re.compile(rf"^\s*(import {library}\b|from {library}[\s.])", re.M)
    importers = [str(p.relative_to(REPO)) for p in SOURCES if pattern.search(p.read_text())]
    assert importers == [module]


def test_no_import_cycle_between_modules():
    assert _cycle(_graph()) is None


def test_no_import_cycle_between_packages():
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in _graph().items():
        packages[module.split(".")[0]].update(t.split(".")[0] for t in targets)
    packages = {k: v - {k} for k, v in packages.items()}
    assert _cycle(packages) is None, _cycle(packages)


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
