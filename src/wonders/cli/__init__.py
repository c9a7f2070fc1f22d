"""The ``wonders`` command: one module per command group (:mod:`.status` for status and
ping, :mod:`.audit`, :mod:`.onboard` for init and clients, :mod:`.forward` …) and
:mod:`.config`, the reader of the forwarder's config file."""

from wonders.cli._main import main

__all__ = ["main"]
