"""The aiohttp adapter converts aiohttp's exceptions into the seam's at its boundary, and
lets everything else pass (a table, no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import aiohttp
import pytest
import yarl
from aiohttp.client_reqrep import ConnectionKey, RequestInfo
from aiohttp.http_exceptions import LineTooLong
from multidict import CIMultiDict, CIMultiDictProxy

from wonders.errors import EnvelopeError
from wonders.policy import Decision
from wonders.relay.forwarder.seam import (
    AddressDenied,
    BodyBrokeOff,
    ResponseHeadersTooLarge,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from wonders.relay.forwarder.upstream import AiohttpResponse, mapped_errors

DENIED = AddressDenied(Decision("deny", "address guard: loopback", "a loopback address", 403))
URL = yarl.URL("https://example.com/x")
REQUEST = RequestInfo(URL, "GET", CIMultiDictProxy(CIMultiDict()), URL)
KEY = ConnectionKey("example.com", 443, True, True, None, None, None)


def _bad_response(message: str) -> aiohttp.ClientResponseError:
    return aiohttp.ClientResponseError(REQUEST, (), status=400, message=message)


def _head_too_large() -> aiohttp.ClientResponseError:
    exc = _bad_response("Got more than 8190 bytes when reading")
    exc.__cause__ = LineTooLong(b"X-Big: ...", 8190, "100000")
    return exc


MAPPED = [
    ("a name the resolver's guard denied",
     aiohttp.ClientConnectorError(KEY, DENIED), AddressDenied, "a loopback address"),
    ("a denied literal", DENIED, AddressDenied, "a loopback address"),
    ("a refused connection",
     aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "Connection refused")),
     UpstreamUnreachable, "[Errno 111] Connection refused"),
    ("a socket timeout", aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
     UpstreamTimeout, "Timeout on reading data from socket"),
    ("the total timeout", TimeoutError(), UpstreamTimeout, ""),
    ("a head over the limits", _head_too_large(), ResponseHeadersTooLarge,
     "Got more than 8190 bytes when reading"),
    ("another bad response", _bad_response("Invalid status line"), UpstreamError,
     "400, message='Invalid status line', url='https://example.com/x'"),
    ("a URL refused", aiohttp.InvalidURL("https://x:99999/", "port out of range"),
     UpstreamError, "https://x:99999/ - port out of range"),
    ("a disconnect", aiohttp.ServerDisconnectedError(), UpstreamError, "Server disconnected"),
]


@pytest.mark.parametrize(("raised", "kind", "message"), [m[1:] for m in MAPPED],
                         ids=[m[0] for m in MAPPED])
def test_aiohttp_errors_become_the_seams(raised: BaseException, kind: type[Exception],
                                          message: str) -> None:
    with pytest.raises(kind) as caught, mapped_errors():
        raise raised
    assert str(caught.value) == message
    if kind is AddressDenied:
        assert cast(AddressDenied, caught.value).decision.rule == "address guard: loopback"


@pytest.mark.parametrize("raised", [EnvelopeError("truncated", "the body stream ended"),
                                    ValueError("x"), RuntimeError("y")],
                         ids=["a request body that failed", "a ValueError", "a RuntimeError"])
def test_other_errors_pass_unchanged(raised: Exception) -> None:
    with pytest.raises(type(raised)) as caught, mapped_errors():
        raise raised
    assert caught.value is raised


class _Content:
    def __init__(self, chunks: list[bytes], error: BaseException) -> None:
        self._chunks, self._error = chunks, error

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk
        raise self._error


class _Response:
    """What AiohttpResponse reads of an aiohttp response."""

    def __init__(self, content: _Content) -> None:
        self.status, self.reason, self.content = 200, None, content
        self.raw_headers = ((b"Content-Type", b"text/plain"), (b"X-Name", b"caf\xc3\xa9"))


@pytest.mark.parametrize(("error", "stalled"), [
    (aiohttp.ClientPayloadError("Response payload is not completed"), False),
    (aiohttp.ServerTimeoutError("Timeout on reading data from socket"), True),
    (TimeoutError(), True),
], ids=["payload", "socket timeout", "timeout"])
async def test_a_body_that_breaks_off_raises_body_broke_off(error: BaseException,
                                                            stalled: bool) -> None:
    raw = _Response(_Content([b"a", b"b"], error))
    response = AiohttpResponse(cast(aiohttp.ClientResponse, raw))
    assert (response.status, response.reason) == (200, "")
    assert response.headers == (("Content-Type", "text/plain"), ("X-Name", "cafÃ©"))
    received: list[bytes] = []

    async def read() -> None:
        async for chunk in response:
            received.append(chunk)

    with pytest.raises(BodyBrokeOff) as caught:
        await read()
    assert received == [b"a", b"b"]
    assert caught.value.timeout is stalled
    assert str(caught.value) == str(error)
