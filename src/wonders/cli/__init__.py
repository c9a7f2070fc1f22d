"""The ``wonders`` command: one module per command group (:mod:`.status` for status and
ping, :mod:`.audit`, :mod:`.onboard` for init and clients, :mod:`.forward` …) and
:mod:`.config`, the reader of the forwarder's and the client's config files.

``main`` is loaded when first used, so that ``wonder-run`` can import :mod:`.config`
without the command groups (and what they import)."""

from typing import TYPE_CHECKING

from wonders.exports import lazy

if TYPE_CHECKING:
    from wonders.cli._main import main

__all__ = ["main"]

__getattr__, __dir__ = lazy(__name__, {"main": "._main"})
