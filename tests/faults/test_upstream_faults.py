"""Upstreams that misbehave: one that goes silent, one that drips a byte a second, and
one whose Content-Length lies. None of them is ever delivered as a complete response.

The upstream is a raw TLS socket server, so the test controls every byte."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from tests.relay.harness import FAST, Upstream, client_for, make_keys, running_forwarder
from wonders.errors import EnvelopeError
from wonders.mailbox import DirectoryStore

# the read timeout (a silent upstream) and the total timeout (a dripping one), short
SETTINGS = dataclasses.replace(FAST, read_timeout=1.5, total_timeout=4.0, flush_delay=0.05)


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await reader.readline()
        while (await reader.readline()).strip():
            pass  # the headers
        path = line.split()[1].decode()
        if path == "/silent":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(3600)  # never sends the body
        elif path == "/silent-headers":
            await asyncio.sleep(3600)  # never answers at all
        elif path == "/drip":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(1)  # one byte a second
        elif path == "/short":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"y" * 70000)
            await writer.drain()
        writer.close()  # /short ends here: 30,000 bytes fewer than it promised
    except (ConnectionError, asyncio.CancelledError):
        pass


@contextlib.asynccontextmanager
async def _raw_upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    ca_file = tmp_path / "raw-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = await asyncio.start_server(_serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Upstream(f"https://localhost:{port}", ca_file)
    finally:
        server.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)


@pytest.fixture
async def raw(tmp_path: Path) -> AsyncIterator[Upstream]:
    async with _raw_upstream(tmp_path) as served:
        yield served


async def test_silent_upstreams_hit_the_read_timeout(tmp_path: Path, raw: Upstream) -> None:
    keys = make_keys(tmp_path, int(raw.url.rsplit(":", 1)[1]))
    store = DirectoryStore(tmp_path)
    impatient = dataclasses.replace(SETTINGS, read_timeout=0.5)  # each silence costs this
    async with running_forwarder(store, keys, raw, impatient), \
            client_for(store, keys) as client:
        async with await client.request("GET", f"{raw.url}/silent-headers") as response:
            assert response.status == 504
            assert response.header("X-Wonders-Error") == "upstream-timeout"
        async with await client.request("GET", f"{raw.url}/silent") as response:
            assert response.status in (200, 504)
            if response.status == 200:  # the head went out before the body stalled
                with pytest.raises(EnvelopeError) as raised:
                    await response.read()
                assert raised.value.reason == "incomplete"
            else:
                assert response.header("X-Wonders-Error") == "upstream-timeout"


@pytest.mark.slow
async def test_a_dripping_upstream_is_cut_at_the_total_timeout(
    tmp_path: Path, raw: Upstream
) -> None:
    keys = make_keys(tmp_path, int(raw.url.rsplit(":", 1)[1]))
    store = DirectoryStore(tmp_path)
    async with running_forwarder(store, keys, raw, SETTINGS), client_for(store, keys) as client:
        async with await client.request("GET", f"{raw.url}/drip") as response:
            assert response.status == 200
            received = bytearray()

            async def consume() -> None:
                async for chunk in response.iter_body():
                    received.extend(chunk)

            with pytest.raises(EnvelopeError) as raised:
                await consume()
    assert raised.value.reason == "incomplete"
    assert 0 < len(received) < 1000  # some bytes flowed, never the whole body


async def test_a_lying_content_length_is_reported_not_delivered_complete(
    tmp_path: Path, raw: Upstream
) -> None:
    keys = make_keys(tmp_path, int(raw.url.rsplit(":", 1)[1]))
    store = DirectoryStore(tmp_path)
    async with running_forwarder(store, keys, raw, SETTINGS), client_for(store, keys) as client:
        async with await client.request("GET", f"{raw.url}/short") as response:
            if response.status == 200:
                with pytest.raises(EnvelopeError) as raised:
                    await response.read()
                assert raised.value.reason == "incomplete"
                assert "broke off" in str(raised.value)
            else:
                assert response.status == 502
                assert response.header("X-Wonders-Error") == "upstream-error"
