"""The house rules of the layout, read from the source with `ast` (nothing is imported):

- models/ never imports stream/, Kafka or Faust;
- nothing outside stream/cli imports stream.cli (the CLI imports everything, nothing imports it);
- the layers only point down: cli -> worker -> online -> scoring/state/events -> models;
- no import circle between project modules, lazy (function-level) imports included;
- no file in stream/ or models/ is over 450 lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("models", "stream")
MAX_LINES = 450


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_files() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


FILES = _project_files()


def _imported(module: str, path: Path) -> set[str]:
    """Every module this file imports, at the top or inside a function."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            # `from pkg import sub` imports the module pkg.sub when there is one
            found.update(f"{base}.{alias.name}" for alias in node.names
                         if f"{base}.{alias.name}" in FILES)
    return found


GRAPH = {name: {m for m in _imported(name, path) if m in FILES} for name, path in FILES.items()}
ALL_IMPORTS = {name: _imported(name, path) for name, path in FILES.items()}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_rules_see_the_tree():
    # guards the guard: a walker that found nothing would pass every rule below
    assert "stream.cli.main" in FILES and "models.gru" in FILES
    assert any(GRAPH[m] for m in GRAPH)


def test_models_never_import_stream_kafka_or_faust():
    bad = {m: sorted(i for i in imports
                     if any(_under(i, f) for f in ("stream", "kafka", "aiokafka", "faust")))
           for m, imports in ALL_IMPORTS.items() if _under(m, "models")}
    assert not {m: i for m, i in bad.items() if i}


def test_nothing_outside_the_cli_imports_the_cli():
    bad = {m: sorted(i for i in imports if _under(i, "stream.cli"))
           for m, imports in ALL_IMPORTS.items() if not _under(m, "stream.cli")}
    assert not {m: i for m, i in bad.items() if i}


# (lower layer, a layer it must never import)
LAYERS = [
    ("stream.online", "stream.worker"),
    ("stream.scoring", "stream.worker"), ("stream.scoring", "stream.online"),
    ("stream.state", "stream.worker"), ("stream.state", "stream.online"),
    ("stream.events", "stream.worker"), ("stream.events", "stream.online"),
    ("stream.config", "stream.worker"), ("stream.config", "stream.online"),
    ("stream.replay", "stream.worker"), ("stream.broker", "stream.worker"),
    ("stream.broker", "stream.replay"), ("stream.broker", "stream.kafka"),
]


@pytest.mark.parametrize(("lower", "upper"), LAYERS)
def test_layers_point_down(lower, upper):
    bad = {m: sorted(i for i in imports if _under(i, upper))
           for m, imports in ALL_IMPORTS.items() if _under(m, lower)}
    assert not {m: i for m, i in bad.items() if i}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_lazy_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_lazy_imports_included():
    assert _cycles(GRAPH) == []


def test_no_file_over_the_line_limit():
    long = {str(p.relative_to(ROOT)): n for p in FILES.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long
