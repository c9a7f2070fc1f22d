"""The proxy and its bridge in this process, with a relay that records what would be sealed
into the mailbox, and a raw HTTP/1.1 exchange for requests no well-behaved client sends."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from wonders.crypto import Headers
from wonders.errors import EnvelopeError
from wonders.proxy.bridge import Bridge
from wonders.proxy.run import _start_proxy

SECRET = "security-test-secret-0123456789"


def basic(credentials: str) -> bytes:
    return b"Basic " + base64.b64encode(credentials.encode())


GOOD_AUTH = b"Proxy-Authorization: " + basic(f"wonders:{SECRET}") + b"\r\n"


@dataclass
class Relayed:
    method: str
    url: str
    headers: Headers
    body: bytes


class _Response:
    id = "01M808TX000000000000000002"
    status, reason = 200, "OK"
    headers: Headers = (("Content-Type", "text/plain"), ("Content-Length", "8"))

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    async def iter_body(self) -> AsyncIterator[bytes]:
        yield b"relayed\n"

    async def aclose(self) -> None:
        return None


class _Broken(_Response):
    async def iter_body(self) -> AsyncIterator[bytes]:
        yield b"rel"
        raise EnvelopeError("tampered", "body segment 1 does not authenticate")


@dataclass
class RecordingRelay:
    """Stands in for RelayClient: records each request (the body read whole) and answers
    200 ``relayed``, or with a body that fails verification midway if ``broken``."""

    seen: list[Relayed] = field(default_factory=list)
    broken: bool = False

    async def request(self, method: str, url: str, headers: Headers,
                      body: bytes | AsyncIterator[bytes], **kwargs: object) -> _Response:
        if not isinstance(body, bytes):
            body = b"".join([chunk async for chunk in body])
        self.seen.append(Relayed(method, url, tuple(headers), body))
        return _Broken() if self.broken else _Response()


@contextlib.asynccontextmanager
async def running_proxy(relay: RecordingRelay, **options: object) -> AsyncIterator[int]:
    """The proxy's port; it serves requests carrying ``SECRET``. ``options`` change
    mitmproxy's options after it started (to take away one of its own checks)."""
    bridge = Bridge(relay)  # type: ignore[arg-type]
    await bridge.start()
    master, task, port = await _start_proxy(bridge, asyncio.Event(), False, SECRET)
    if options:
        master.options.update(**options)
    try:
        yield port
    finally:
        master.shutdown()
        await task
        await bridge.close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


async def exchange(port: int, raw: bytes, *, then: bytes = b"",
                   timeout: float = 20) -> Reply | None:  # noqa: ASYNC109
    """Send ``raw`` to the proxy and read one response; None if it closes without one.
    With ``then``, ``raw`` is a CONNECT: if it succeeds, ``then`` goes through the tunnel
    and its response is returned."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        reply = await _send(reader, writer, raw, timeout)
        if then and reply is not None and reply.status == 200:
            reply = await _send(reader, writer, then, timeout)
        return reply
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes,
                timeout: float) -> Reply | None:  # noqa: ASYNC109
    writer.write(raw)
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), timeout)
    return Reply(status, headers, body)
