"""The forwarder: the internet-side service that claims, verifies, decides, fetches and
streams back (see :mod:`._service` for the theory of operation)."""

from wonders.relay.forwarder._service import Forwarder, ForwarderFailed
from wonders.relay.forwarder.settings import ForwarderSettings

__all__ = ["Forwarder", "ForwarderFailed", "ForwarderSettings"]
