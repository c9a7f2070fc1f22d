"""Lazy package exports (PEP 562): a package names what it exports and from which of its
modules; a module is imported when one of its names is first used. ``import
wonders.mailbox.layout`` then costs the layout, not aiobotocore; the GPU side never loads
the forwarder's dependencies (aiohttp's client pool, prometheus_client) by importing a
package."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

__all__ = ["lazy"]


def lazy(package: str, exports: Mapping[str, str]) -> tuple[
    Callable[[str], object], Callable[[], list[str]]
]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose public names are the keys of
    ``exports`` (each the module, relative to the package, that defines it; a name mapped
    to ``".name"`` is that submodule itself)."""

    def __getattr__(name: str) -> object:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        loaded = importlib.import_module(module, package)
        value = loaded if module == "." + name else getattr(loaded, name)
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[name] = value  # looked up once
        return value

    def __dir__() -> list[str]:
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__
