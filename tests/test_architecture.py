"""The architecture stays visible: packages import each other only through what each
exports, and the GPU side never loads the forwarder's dependencies."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "wonders"

def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    where = SRC.parent.joinpath(*dotted.split("."))
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement in ``path`` names (``from X import y`` gives X, and
    X.y where y is a submodule: a private *name* of a module is that module's business)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if _is_module(f"{node.module}.{alias.name}")]
    return found


def _private_of_another_room(importer: str, imported: str) -> bool:
    if not imported.startswith("wonders."):
        return False
    parts = imported.split(".")
    for depth in range(2, len(parts) + 1):
        if parts[depth - 1].startswith("_") and not parts[depth - 1].startswith("__"):
            owner = ".".join(parts[:depth - 1])  # the package whose private module it is
            return importer != owner and not importer.startswith(owner + ".")
    return False


def test_no_module_imports_another_packages_private_module() -> None:
    offences = [
        f"{path.relative_to(SRC.parent)}:{line}: {imported}"
        for path in sorted(SRC.rglob("*.py"))
        for line, imported in _imports(path)
        if _private_of_another_room(_module_name(path), imported)
    ]
    assert not offences, "private modules imported from outside their package:\n" + \
        "\n".join(offences)


def test_the_private_module_check_catches_a_reach_inside() -> None:
    """The rule above is not vacuous: reaching into another package's private module is
    caught, a package's own private modules and public modules are not."""
    assert _private_of_another_room("wonders.proxy.run", "wonders.mailbox._store")
    assert _private_of_another_room("wonders.cli.status", "wonders.relay.forwarder._service")
    assert _private_of_another_room("wonders.relay.client", "wonders.relay.forwarder._service")
    assert not _private_of_another_room("wonders.mailbox._open", "wonders.mailbox._s3")
    assert not _private_of_another_room("wonders.relay.forwarder",
                                        "wonders.relay.forwarder._service")
    assert not _private_of_another_room("wonders.proxy.run", "wonders.mailbox.layout")


GPU_SIDE = ("wonders.proxy.run", "wonders.proxy.bridge", "wonders.relay.client",
            "wonders.mailbox", "wonders.relay.records")
FORWARDER_ONLY = ("wonders.relay.forwarder", "prometheus_client")


def _loaded_after(statement: str) -> set[str]:
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("module", GPU_SIDE)
def test_the_gpu_side_never_loads_the_forwarder(module: str) -> None:
    loaded = _loaded_after(f"import {module}\nfrom {module} import *")
    assert not {m for m in loaded if m.split(".")[0] == "prometheus_client"
                or m.startswith("wonders.relay.forwarder")}


def test_the_key_layout_loads_no_store_client() -> None:
    """A pure module costs itself: importing the key layout loads neither aiobotocore nor
    aiohttp (the package's __init__ exports lazily)."""
    loaded = _loaded_after("import wonders.mailbox.layout")
    assert not {m.split(".")[0] for m in loaded} & {"aiobotocore", "botocore", "aiohttp"}


def test_a_package_export_loads_its_module_on_first_use() -> None:
    loaded = _loaded_after("from wonders.mailbox import DirectoryStore")
    assert "wonders.mailbox._directory" in loaded
    assert "wonders.mailbox._s3" not in loaded
    loaded = _loaded_after("from wonders.mailbox import S3Store")
    assert "wonders.mailbox._s3" in loaded


def test_a_packages_submodules_are_attributes_before_they_are_imported() -> None:
    loaded = _loaded_after("import wonders.policy, wonders.mailbox\n"
                           "assert wonders.policy.addresses.parse_host\n"
                           "assert wonders.mailbox.layout.head_key")
    assert "wonders.mailbox._s3" not in loaded
