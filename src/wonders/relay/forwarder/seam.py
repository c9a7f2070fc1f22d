"""The forwarder's seam to the internet: what it needs of an HTTP client (:class:`Upstream`,
:class:`UpstreamResponse`) and the failures a client reports. No I/O here.

The forwarder is given an ``Upstream`` as it is given a ``Store``:
:class:`~wonders.relay.forwarder.upstream.AiohttpUpstream` by default, a fake in tests.
An adapter converts its library's exceptions into this tree at its boundary, so nothing
past it (the exchange, the response pump) sees a foreign exception::

    UpstreamFailure
    ├── AddressDenied             the address guard refused the host (``decision`` says why)
    ├── UpstreamUnreachable       no connection could be made
    ├── UpstreamTimeout           the upstream did not answer in time
    ├── ResponseHeadersTooLarge   the response head is over the client's limits
    ├── UpstreamError             any other failure before the response head
    └── BodyBrokeOff              the response body ended early (``timeout``: it stalled)

``AddressDenied`` is also an :class:`OSError`: an adapter's resolver raises it, and a
connector passes an ``OSError`` from its resolver along as the cause of its own error.
Each message is the adapter's description of the cause (the forwarder adds the host).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from types import TracebackType
from typing import Protocol, Self

from wonders.crypto import Headers
from wonders.policy import Decision

__all__ = [
    "AddressDenied",
    "BodyBrokeOff",
    "ResponseHeadersTooLarge",
    "Upstream",
    "UpstreamError",
    "UpstreamFailure",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamUnreachable",
]


class UpstreamFailure(Exception):
    """The upstream exchange failed; the message describes the cause."""


class AddressDenied(UpstreamFailure, OSError):
    """The address guard refused every address a host resolved to."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(decision.reason)
        self.decision = decision


class UpstreamUnreachable(UpstreamFailure):
    """No connection to the upstream could be made (refused, unresolvable, TLS)."""


class UpstreamTimeout(UpstreamFailure):
    """The upstream did not connect or answer within its timeout."""


class ResponseHeadersTooLarge(UpstreamFailure):
    """The upstream's response head is over the forwarder's limits."""


class UpstreamError(UpstreamFailure):
    """The request failed before a response head arrived, for another reason."""


class BodyBrokeOff(UpstreamFailure):
    """The response body ended before it was complete; ``timeout``: it stopped arriving
    for longer than the read timeout."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class UpstreamResponse(Protocol):
    """One response, its head read. ``async for`` yields the body as it arrives (raising
    :class:`BodyBrokeOff` if it ends early); ``async with`` (or :meth:`close`) releases
    it."""

    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str: ...

    @property
    def headers(self) -> Headers:
        """The response headers as received, as latin-1 text (hop-by-hop ones included)."""
        ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None: ...


class Upstream(Protocol):
    """Sends requests to the internet for the forwarder's clients."""

    async def request(self, client: str, method: str, url: str, headers: Headers,
                      body: bytes | AsyncIterable[bytes] | None) -> UpstreamResponse:
        """Send one request for ``client`` and return its response once the head has
        arrived; redirects are not followed. Raises an :class:`UpstreamFailure`."""
        ...

    async def close(self) -> None:
        """Release every connection."""
        ...
