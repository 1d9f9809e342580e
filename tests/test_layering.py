"""The package's layers, read from its imports (every ``import``, at the top of a module or inside a function): no
module imports one from a layer above its own. Run with ``-s`` to print the graph between top-level modules."""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import headstart

PACKAGE = Path(headstart.__file__).parent

# Lowest first. A module may import its own layer and the ones below.
LAYERS = [
    {"core"},
    {"data"},
    {"zoo"},
    {"features"},
    {"predict"},
    {"explain"},
    {"evaluation"},
    {"report"},
    {"training"},
    {"curation"},
    {"export"},
    {"serve"},
    {"cli", "__main__", "__init__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "headstart" and len(parts) > 1 else None


def imports() -> dict[str, set[str]]:
    """headstart's top-level module (or package) -> the top-level headstart modules it imports."""
    graph = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        unit = rel.parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + ([f"headstart.{a.name}" for a in node.names] if node.module == "headstart"
                                         else [])
            for name in names:
                top = _top(name)
                is_module = top and ((PACKAGE / top).is_dir() or (PACKAGE / f"{top}.py").is_file())
                if is_module and top != unit:
                    graph[unit].add(top)
    return graph


def test_every_module_has_a_layer():
    units = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in PACKAGE.rglob("*.py")}
    assert units - set(RANK) == set(), "add new modules to LAYERS"


def test_no_module_imports_a_layer_above_it():
    graph = imports()
    for unit in sorted(graph, key=lambda u: (RANK[u], u)):
        print(f"{unit:16} -> {', '.join(sorted(graph[unit]))}")
    upward = [f"{unit} (layer {RANK[unit]}) imports {dep} (layer {RANK[dep]})"
              for unit, deps in graph.items() if unit not in ("__init__",) for dep in deps if RANK[dep] > RANK[unit]]
    assert upward == []


def test_the_named_rules_of_the_redesign():
    graph = imports()
    assert graph["core"] == set()
    assert graph["data"] <= {"core"} and graph["zoo"] <= {"core", "data"}
    assert graph["features"] <= {"core", "data", "zoo"}
    assert not graph["predict"] & {"explain", "training", "evaluation", "report", "export", "serve", "cli"}
    assert graph["explain"] <= {"core", "data", "zoo", "features", "predict"}
    assert {p.name for p in PACKAGE.glob("*.py")} == {"__init__.py", "__main__.py"}, "the root holds packages only"


def test_the_checker_sees_imports_inside_functions(tmp_path, monkeypatch):
    """The test above must be able to fail: a function-level upward import is found."""
    fake = tmp_path / "headstart"
    (fake / "features").mkdir(parents=True)
    (fake / "features" / "extract.py").write_text("def f():\n    from headstart.training.adapt import x\n")
    (fake / "training").mkdir()
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert imports()["features"] == {"training"}
