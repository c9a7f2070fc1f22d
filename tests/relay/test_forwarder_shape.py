"""The forwarder package keeps its shape: short functions, and the HTTP library behind
its seam (only the upstream adapter imports aiohttp)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import wonders.relay.forwarder

PACKAGE = Path(wonders.relay.forwarder.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
#: The longest a function may be, in lines from its ``def`` (decorators included) to its
#: last line, docstring included.
LONGEST = 60


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            assert node.end_lineno is not None
            found.append((f"{path.name}:{node.lineno} {node.name}", node.end_lineno - first + 1))
    return found


def test_the_package_is_found() -> None:
    names = {p.stem for p in MODULES}
    assert {"_service", "claims", "exchange", "writer", "pump", "flow", "segmenter",
            "upstream", "seam", "outcome"} <= names
    assert sum(len(_functions(p)) for p in MODULES) > 100


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_no_function_is_longer_than_60_lines(path: Path) -> None:
    long = [(name, lines) for name, lines in _functions(path) if lines > LONGEST]
    assert long == []


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", [p for p in MODULES if p.stem != "upstream"],
                         ids=[p.name for p in MODULES if p.stem != "upstream"])
def test_only_the_upstream_adapter_imports_aiohttp(path: Path) -> None:
    assert not {n for n in _imports(path) if n.split(".")[0] == "aiohttp"}


@pytest.mark.parametrize("name", ["claims", "flow", "segmenter", "seam", "settings"])
def test_the_pure_modules_do_no_io_and_read_no_clock(name: str) -> None:
    imported = _imports(PACKAGE / f"{name}.py")
    assert not imported & {"asyncio", "time", "aiohttp", "socket", "os"}
