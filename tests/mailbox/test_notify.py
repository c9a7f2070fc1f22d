"""MinIO bucket notifications as wakeups, against a stub MinIO: moto behind a small proxy
that also serves ListenBucketNotification streams (no MinIO server can run here)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import pytest
from aiohttp import ClientSession, web

from tests.relay.harness import FAST, client_for, make_keys, running_forwarder, serve_upstream
from wonders.errors import ConfigError
from wonders.mailbox import S3Store, listen_minio, open_store
from wonders.mailbox._notify import signed_listen_request

DEADLINE = 30.0
_DROP = ("host", "content-length", "transfer-encoding", "expect", "connection")


@dataclass
class StubMinio:
    """What the stub saw, and the streams it serves."""

    url: str = ""
    listens: list[web.Request] = field(default_factory=list)
    streams: list[tuple[str, asyncio.Queue[bytes | None]]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    def publish(self, key: str) -> None:
        record = {"Records": [{"eventName": "s3:ObjectCreated:Put",
                               "s3": {"object": {"key": key}}}]}
        for prefix, queue in self.streams:
            if key.startswith(prefix):
                queue.put_nowait(json.dumps(record).encode() + b"\n")

    def drop_streams(self) -> None:
        for _, queue in self.streams:
            queue.put_nowait(None)
        self.streams.clear()
        self.connected.clear()


@contextlib.asynccontextmanager
async def stub_minio(moto: str) -> AsyncIterator[StubMinio]:
    stub = StubMinio()
    session = ClientSession(auto_decompress=False)

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and "events" in request.query:
            return await listen(request)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
        async with session.request(request.method, moto + request.path_qs, headers=headers,
                                   data=body or None) as answer:
            data = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in _DROP}
            if request.method == "PUT" and answer.status == 200:
                _bucket, _, key = request.path.lstrip("/").partition("/")
                if key:
                    stub.publish(unquote(key))
            return web.Response(status=answer.status, body=data, headers=out)

    async def listen(request: web.Request) -> web.StreamResponse:
        stub.listens.append(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        stub.streams.append((request.query.get("prefix", ""), queue))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b" \n")  # MinIO's keep-alive
        stub.connected.set()
        while (line := await queue.get()) is not None:
            await response.write(line)
        return response

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    stub.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield stub
    finally:
        stub.drop_streams()
        await runner.cleanup()
        await session.close()


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


async def test_the_listen_call_is_signed_and_names_the_prefix_and_events() -> None:
    store = S3Store("mail", "cluster-a", endpoint_url="http://127.0.0.1:9", notifications=True)
    url, headers = await signed_listen_request(store, "requests/")
    assert url.startswith("http://127.0.0.1:9/mail?")
    assert "prefix=cluster-a%2Frequests%2F" in url
    assert "events=s3%3AObjectCreated%3A%2A" in url
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert "X-Amz-Date" in headers


async def test_events_wake_keepalives_and_junk_do_not_and_a_broken_stream_reconnects(
    s3_endpoint: str,
) -> None:
    async with stub_minio(s3_endpoint) as stub:
        store = S3Store("b", "p", endpoint_url=stub.url, notifications=True)
        wakes: asyncio.Queue[None] = asyncio.Queue()
        task = asyncio.create_task(listen_minio(store, "requests/",
                                                lambda: wakes.put_nowait(None)))
        try:
            await asyncio.wait_for(stub.connected.wait(), DEADLINE)
            await asyncio.wait_for(wakes.get(), DEADLINE)  # one wake when it connects
            _, queue = stub.streams[0]
            for line in (b"\n", b"   \n", b"not json\n", b'{"Records": []}\n', b"[1]\n"):
                queue.put_nowait(line)
            stub.publish("p/requests/gpu01/x/head")
            await asyncio.wait_for(wakes.get(), DEADLINE)
            assert wakes.empty()  # the event woke it once; nothing else did
            stub.publish("p/responses/gpu01/x/head")  # outside the prefix: not sent
            stub.drop_streams()  # the server closes the stream: the listener comes back
            await asyncio.wait_for(stub.connected.wait(), DEADLINE)
            await asyncio.wait_for(wakes.get(), DEADLINE)
            assert len(stub.listens) == 2
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_both_sides_wake_on_bucket_notifications(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    # Both sides poll once, then every 60 s: only notifications can answer in time.
    slow = dataclasses.replace(FAST, poll_fast=60.0, poll_slow=60.0)
    async with stub_minio(s3_endpoint) as stub, serve_upstream(tmp_path) as upstream:
        store = S3Store(bucket, "m", endpoint_url=stub.url, path_style=True,
                        notifications=True)
        keys = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))
        async with store, running_forwarder(store, keys, upstream, slow), \
                client_for(store, keys, poll_fast=60.0, poll_slow=60.0) as client:
            for path in ("/echo", "/bytes/300000"):
                async with asyncio.timeout(DEADLINE):
                    response = await client.request("GET", upstream.url + path)
                    async with response:
                        assert response.status == 200
                        await response.read()


def test_notifications_need_a_minio_endpoint() -> None:
    with pytest.raises(ConfigError, match="need the MinIO endpoint"):
        open_store("s3://bucket/p", notifications="minio")
    with pytest.raises(ConfigError, match="only apply to s3"):
        open_store("file:///tmp/x", notifications="minio")
    with pytest.raises(ConfigError, match="expected"):
        open_store("s3://bucket/p", endpoint_url="http://x", notifications="sns")
