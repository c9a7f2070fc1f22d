"""The forwarder driven through its upstream seam with a fake upstream: no sockets, no
HTTP library. A directory mailbox and a real RelayClient on the other side; the fake
answers as the test says, so what each failure comes to, and how a body streams, is
exact rather than a race against a real server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from tests.relay.harness import FAST, Keys, client_for, make_keys
from wonders.crypto import Headers
from wonders.errors import EnvelopeError
from wonders.mailbox import DirectoryStore, Store
from wonders.policy import Decision
from wonders.relay.forwarder import Forwarder
from wonders.relay.forwarder.seam import (
    AddressDenied,
    BodyBrokeOff,
    ResponseHeadersTooLarge,
    UpstreamError,
    UpstreamFailure,
    UpstreamTimeout,
    UpstreamUnreachable,
)

PORT = 8443
URL = f"https://localhost:{PORT}"


class FakeResponse:
    """A response whose body is what ``body`` yields (and raises)."""

    def __init__(self, body: AsyncIterator[bytes], status: int = 200, reason: str = "OK",
                 headers: Headers = ()) -> None:
        self.status, self.reason, self.headers = status, reason, headers
        self._body = body
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._body:
            yield chunk

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


@dataclass
class Sent:
    client: str
    method: str
    url: str
    headers: Headers
    body: bytes | None


@dataclass
class FakeUpstream:
    """Answers each request with ``answer(sent)``; records what was sent."""

    answer: Callable[[Sent], Awaitable[FakeResponse]]
    sent: list[Sent] = field(default_factory=list)
    closed: bool = False

    async def request(self, client: str, method: str, url: str, headers: Headers,
                      body: bytes | AsyncIterable[bytes] | None) -> FakeResponse:
        assert body is None or isinstance(body, bytes)  # these tests send no streamed body
        sent = Sent(client, method, url, headers, body)
        self.sent.append(sent)
        return await self.answer(sent)

    async def close(self) -> None:
        self.closed = True


def _failing(failure: UpstreamFailure) -> FakeUpstream:
    async def answer(sent: Sent) -> FakeResponse:
        raise failure

    return FakeUpstream(answer)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path, PORT)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return DirectoryStore(tmp_path / "mailbox")


@contextlib.asynccontextmanager
async def serving(store: Store, keys: Keys, upstream: FakeUpstream) -> AsyncIterator[Forwarder]:
    """A forwarder sending through ``upstream``, running until the block ends."""
    forwarder = Forwarder(store, keys.forwarder, keys.policy, FAST, upstream=upstream)
    task = asyncio.create_task(forwarder.run())
    ready = asyncio.create_task(forwarder.ready.wait())
    await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if not forwarder.ready.is_set():
        ready.cancel()
        await task  # raises what stopped it
        raise AssertionError("forwarder did not start")
    try:
        yield forwarder
    finally:
        forwarder.stop()
        await asyncio.wait_for(task, 30)

DENIED = Decision("deny", "address guard: loopback", "localhost is a loopback address", 403)
FAILURES = [
    (UpstreamUnreachable("connection refused"), 502, "upstream-unreachable",
     f"wonders: cannot connect to localhost:{PORT}: connection refused", "errors"),
    (UpstreamTimeout("timed out"), 504, "upstream-timeout",
     f"wonders: localhost:{PORT} did not answer in time", "errors"),
    (ResponseHeadersTooLarge("Got more than 8190 bytes"), 502, "response-headers-too-large",
     f"wonders: the response headers of localhost:{PORT} are over the forwarder's limits: "
     "Got more than 8190 bytes", "errors"),
    (UpstreamError("Server disconnected"), 502, "upstream-error",
     f"wonders: request to localhost:{PORT} failed: Server disconnected", "errors"),
    (AddressDenied(DENIED), 403, "policy-denied",
     "wonders: denied by policy (address guard: loopback): localhost is a loopback address",
     "denied"),
]


@pytest.mark.parametrize(("failure", "status", "code", "message", "counter"), FAILURES,
                         ids=[type(f[0]).__name__ for f in FAILURES])
async def test_each_upstream_failure_is_answered_as_its_kind(
    store: Store, keys: Keys, failure: UpstreamFailure, status: int, code: str,
    message: str, counter: str,
) -> None:
    fake = _failing(failure)
    async with serving(store, keys, fake) as forwarder, \
            client_for(store, keys) as client:
        async with await client.request("GET", f"{URL}/x") as response:
            assert response.status == status
            assert response.header("X-Wonders-Error") == code
            assert (await response.read()).decode() == message + "\n"
        assert getattr(forwarder.counters, counter) == 1
    assert [(s.method, s.url) for s in fake.sent] == [("GET", f"{URL}/x")]
    assert not fake.closed  # an injected upstream is its owner's to close


async def test_a_streamed_body_flows_chunk_by_chunk(store: Store, keys: Keys) -> None:
    """Each chunk reaches the client before the next one exists: the pump seals what
    arrived within the stream flush delay, it does not wait for the body to end."""
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
    responses: list[FakeResponse] = []

    async def body() -> AsyncIterator[bytes]:
        while (chunk := await chunks.get()) is not None:
            yield chunk

    async def answer(sent: Sent) -> FakeResponse:
        headers = (("Content-Type", "text/event-stream"), ("Connection", "close, X-Hop"),
                   ("X-Hop", "1"), ("X-Kept", "yes"))
        responses.append(FakeResponse(body(), headers=headers))
        return responses[-1]

    fake = FakeUpstream(answer)
    async with serving(store, keys, fake), \
            client_for(store, keys) as client:
        await chunks.put(b"data: one\n\n")
        async with await client.request("GET", f"https://LOCALHOST:{PORT}/sse",
                                        (("Connection", "keep-alive"),)) as response:
            assert response.status == 200
            assert response.header("X-Kept") == "yes"
            assert response.header("X-Hop") is None  # named in Connection: hop-by-hop
            assert response.header("Connection") is None
            received = response.iter_body()
            assert await anext(received) == b"data: one\n\n"
            await chunks.put(b"data: two\n\n")
            assert await anext(received) == b"data: two\n\n"
            await chunks.put(None)
            assert [chunk async for chunk in received] == []
    (sent,) = fake.sent
    assert sent.url == f"{URL}/sse"  # the host normalised, as decided
    assert all(k.lower() != "connection" for k, _ in sent.headers)
    assert responses[0].closed


async def test_a_body_that_breaks_off_ends_with_an_error_trailer(
    store: Store, keys: Keys
) -> None:
    go_on = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await go_on.wait()
        raise BodyBrokeOff("Connection reset by peer")

    async def answer(sent: Sent) -> FakeResponse:
        return FakeResponse(body(), headers=(("Content-Type", "application/octet-stream"),))

    async with serving(store, keys, FakeUpstream(answer)) \
            as forwarder, client_for(store, keys) as client:
        async with await client.request("GET", f"{URL}/file") as response:
            assert response.status == 200
            received = response.iter_body()
            assert await anext(received) == b"first"
            go_on.set()
            with pytest.raises(EnvelopeError) as raised:
                await anext(received)
        assert raised.value.reason == "incomplete"
        assert "the upstream response broke off: Connection reset by peer" in str(raised.value)
        assert forwarder.counters.errors == 1


@pytest.mark.parametrize(("stalled", "status", "code", "message"), [
    (True, 504, "upstream-timeout", "wonders: the upstream server stopped sending"),
    (False, 502, "upstream-error", "wonders: the upstream response broke off: reset"),
], ids=["stalled", "reset"])
async def test_a_body_that_breaks_off_before_anything_is_stored_is_an_error_answer(
    store: Store, keys: Keys, stalled: bool, status: int, code: str, message: str
) -> None:
    async def body() -> AsyncIterator[bytes]:
        raise BodyBrokeOff("reset", timeout=stalled)
        yield b"never"  # an async generator

    async def answer(sent: Sent) -> FakeResponse:
        return FakeResponse(body())

    async with serving(store, keys, FakeUpstream(answer)), \
            client_for(store, keys) as client:
        async with await client.request("GET", f"{URL}/file") as response:
            assert response.status == status
            assert response.header("X-Wonders-Error") == code
            assert (await response.read()).decode() == message + "\n"


async def test_a_redirect_goes_to_its_location_as_http_clients_read_it(
    store: Store, keys: Keys
) -> None:
    """The seam gives headers as latin-1 text; a Location's bytes are read as UTF-8 (as
    aiohttp reads header text), so the next hop asks for /café, not /cafÃ©."""
    async def empty() -> AsyncIterator[bytes]:
        return
        yield b""

    async def answer(sent: Sent) -> FakeResponse:
        if sent.url.endswith("/start"):
            location = "/café".encode().decode("latin-1")  # its bytes, as the seam gives them
            return FakeResponse(empty(), status=302, reason="Found",
                                headers=(("Location", location), ("Content-Length", "0")))
        return FakeResponse(empty(), headers=(("Content-Length", "0"),))

    fake = FakeUpstream(answer)
    async with serving(store, keys, fake), \
            client_for(store, keys, "follower") as client:
        async with await client.request("GET", f"{URL}/start") as response:
            assert response.status == 200
    assert [s.url for s in fake.sent] == [f"{URL}/start", f"{URL}/café"]
