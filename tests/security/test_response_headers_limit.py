"""An upstream whose response head is over aiohttp's limits (a 100 KB header line,
thousands of headers) gets the client a prompt 502 ``response-headers-too-large``: no
wait for a timeout, and the request is not executed again.

The upstream is a raw asyncio server on loopback that sends the oversized head and then
holds the connection open, so only the parser's own limit can end the exchange.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import trustme

from tests.eventually import eventually
from tests.relay.harness import Upstream, client_for, make_keys, running_forwarder
from wonders.mailbox import DirectoryStore, layout

HUGE_LINE = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 100_000 + b"\r\n"
MANY_HEADERS = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
#: Well under the forwarder's read timeout (10 s in the harness): an answer that only
#: comes from the timeout, or from a takeover after a crash, misses this deadline.
DEADLINE = 8.0


class RawUpstream:
    """Sends ``head`` to every request and keeps the connection open until closed."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.requests = 0
        self.closing = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            writer.write(self.head)
            await writer.drain()
            await self.closing.wait()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port


def _no_tls(tmp_path: Path) -> Upstream:
    """What running_forwarder needs of an upstream (a CA file); the raw one is plain HTTP."""
    ca_file = tmp_path / "unused-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    return Upstream("", ca_file)


@pytest.mark.parametrize("head", [HUGE_LINE, MANY_HEADERS], ids=["100KB-line", "5000-headers"])
async def test_oversized_response_heads_are_a_prompt_502(tmp_path: Path, head: bytes) -> None:
    raw = RawUpstream(head)
    raw.server = await asyncio.start_server(raw.handle, "127.0.0.1", 0)
    (tmp_path / "mailbox").mkdir()
    keys = make_keys(tmp_path, raw.port, """
[clients.gpu01]
bundle = "gpu01.pub"
allow = ["127.0.0.1"]
allow_private = ["127.0.0.0/8"]
ports = [{port}]

[clients.locked]
bundle = "locked.pub"

[clients.follower]
bundle = "follower.pub"
""")
    try:
        async with DirectoryStore(tmp_path / "mailbox") as store, \
                running_forwarder(store, keys, _no_tls(tmp_path)), \
                client_for(store, keys) as client:
            url = f"http://127.0.0.1:{raw.port}/"
            async with await client.request("GET", url, timeout=DEADLINE) as response:
                assert response.status == 502
                assert response.header("X-Wonders-Error") == "response-headers-too-large"
                text = (await response.read()).decode()
            assert "headers" in text
            claims: list[str] = []

            async def answered() -> bool:  # the done marker follows the stored answer
                claims[:] = sorted([k.rsplit("/", 1)[1]
                                    async for k in store.list(layout.CLAIMS)])
                return "done" in claims

            await eventually(answered, what="the done marker", explain=lambda: f"{claims}")
            # one attempt (its claim and its intent), answered: executed once, not retried
            assert claims == ["0000", "0000.intent", "done"]
        assert raw.requests == 1
    finally:
        raw.closing.set()
        raw.server.close()
        await raw.server.wait_closed()

