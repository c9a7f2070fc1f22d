"""The relay protocol's two ends: the GPU side's :class:`RelayClient` (seal, wait, stream
back), the records both sides read (:mod:`.records`: heartbeats, liveness, claims), the
header rules both apply (:mod:`.headers`), and the internet side's forwarder
(:mod:`wonders.relay.forwarder`, imported only by who runs one: the GPU side never loads it).
"""

from typing import TYPE_CHECKING

from wonders.exports import lazy

if TYPE_CHECKING:
    from wonders.relay.client import RelayClient, RelayResponse

__all__ = ["RelayClient", "RelayResponse"]

__getattr__, __dir__ = lazy(__name__, dict.fromkeys(__all__, ".client"))
