"""The forwarder: the internet-side service that claims, verifies, decides, fetches and
streams back (see :mod:`._service` for the theory of operation, and the module each step
lives in).

``Forwarder(store, key, policy, upstream=...)`` takes the mailbox and, optionally, the
upstream it sends requests through: anything with the :class:`Upstream` protocol (the
default is the aiohttp adapter of :mod:`.upstream`).
"""

from wonders.relay.forwarder._service import Forwarder, ForwarderFailed
from wonders.relay.forwarder.seam import Upstream, UpstreamResponse
from wonders.relay.forwarder.settings import ForwarderSettings

__all__ = ["Forwarder", "ForwarderFailed", "ForwarderSettings", "Upstream", "UpstreamResponse"]
