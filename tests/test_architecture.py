"""The layout rules of docs/architecture.md, checked on the source: no package imports another that imports it
back, techniques read no files, the report imports no defence code, and no source file passes 450 lines."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "medattack"
MAX_LINES = 450


def _module(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every medattack module `path` imports (at any depth: lazy imports count too)."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {name for name in out if name.startswith("medattack.")}


def _unit(module: str) -> str:
    """The package (or top-level module) a module belongs to: medattack.report.builder -> report."""
    return module.split(".")[1]


def _edges() -> dict[str, dict[str, list[str]]]:
    """unit -> imported unit -> the files that import it."""
    edges: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in SOURCE.rglob("*.py"):
        unit = _unit(_module(path)) if _module(path) != "medattack" else "medattack"
        for name in _imports(path):
            if _unit(name) != unit:
                edges[unit][_unit(name)].append(str(path.relative_to(SOURCE)))
    return edges


def test_no_package_imports_one_that_imports_it_back():
    edges = _edges()
    cycles = [(a, b, edges[a][b], edges[b][a]) for a in edges for b in edges[a] if a < b and a in edges.get(b, {})]
    assert not cycles, cycles


def test_techniques_read_no_files_and_see_no_stages():
    edges = _edges()
    forbidden = {"stages", "cli", "rundir", "storage", "pipeline"}
    for technique in ("attacks", "blackbox", "defences"):
        reached = {unit: files for unit, files in edges[technique].items() if unit in forbidden}
        assert not reached, (technique, reached)
    image_files = [path for path in SOURCE.joinpath("attacks").rglob("*.py")
                   if "medattack.data.image_io" in _imports(path)]
    assert not image_files, image_files


def test_the_report_reads_records_never_models_or_defence_code():
    edges = _edges()
    reached = {unit: files for unit, files in edges["report"].items() if unit in {"defences", "models", "attacks"}}
    assert not reached, reached


def test_no_source_file_is_over_450_lines():
    long = {str(path.relative_to(SOURCE)): n for path in SOURCE.rglob("*.py")
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
