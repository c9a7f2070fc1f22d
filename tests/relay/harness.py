"""A loopback HTTPS upstream and a running relay (forwarder + client) for integration tests.

The upstream's certificate comes from a trustme CA that only the forwarder is told about,
as a private CA would be. Handlers are event-driven: an SSE stream waits for the test to
say "go" rather than sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import ssl
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import trustme
from aiohttp import web

from wonders.crypto import PrivateKey, write_key_files
from wonders.errors import StoreError
from wonders.mailbox import Store
from wonders.policy import Policy, load_policy
from wonders.relay.client import RelayClient
from wonders.relay.forwarder import Forwarder, ForwarderSettings

FAST = ForwarderSettings(
    # stale_after is generous: on a loaded shared machine a heartbeat can be late, and a
    # live forwarder's claim must not look stale (takeover tests rely on restarts, which
    # change the instance and are seen at once).
    id="fw-test", poll_fast=0.005, poll_slow=0.1, heartbeat_interval=0.5, stale_after=10.0,
    flush_delay=0.02, grace=5.0, read_timeout=10.0,
)


UPSTREAM: web.AppKey[Upstream] = web.AppKey("upstream")


@dataclass
class Upstream:
    """A loopback HTTPS server that records what reached it."""

    url: str
    ca_file: Path
    hits: Counter[str] = field(default_factory=Counter)
    sent: Counter[str] = field(default_factory=Counter)  # body bytes /bytes/ handed to TCP
    sse_go: asyncio.Event = field(default_factory=asyncio.Event)
    held: asyncio.Event = field(default_factory=asyncio.Event)  # a request reached /hold
    release: asyncio.Event = field(default_factory=asyncio.Event)  # let /hold answer
    ticks_stop: asyncio.Event = field(default_factory=asyncio.Event)  # end /ticks early
    ticks_ended: asyncio.Event = field(default_factory=asyncio.Event)  # /ticks has ended


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    upstream: Upstream = request.app[UPSTREAM]
    upstream.hits[request.path] += 1
    doc = {
        "method": request.method,
        "path": request.path_qs,
        "headers": [[k, v] for k, v in request.headers.items()],
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    return web.Response(body=json.dumps(doc).encode(), content_type="application/json",
                        headers={"X-Upstream": "yes", "Set-Cookie": "a=1"})


async def _bytes(request: web.Request) -> web.StreamResponse:
    request.app[UPSTREAM].hits[request.path] += 1
    size = int(request.match_info["size"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    block = bytes(range(256)) * 4096  # 1 MiB of a known pattern
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        await response.write(piece)
        sent += len(piece)
        request.app[UPSTREAM].sent[request.path] += len(piece)
    await response.write_eof()
    return response


async def _sse(request: web.Request) -> web.StreamResponse:
    upstream: Upstream = request.app[UPSTREAM]
    upstream.hits[request.path] += 1
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await response.write(b"data: first\n\n")
    await upstream.sse_go.wait()  # the test says go once it has the first event
    await response.write(b"data: second\n\n")
    await response.write_eof()
    return response


async def _ticks(request: web.Request) -> web.StreamResponse:
    """Server-sent events every ``ms`` milliseconds, as an LLM streams tokens, until ``n``
    were sent or the test sets ``ticks_stop``."""
    upstream: Upstream = request.app[UPSTREAM]
    upstream.hits[request.path] += 1
    interval, count = int(request.query["ms"]) / 1000, int(request.query["n"])
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    try:
        for n in range(count):
            await response.write(f"data: {n}\n\n".encode())
            with contextlib.suppress(TimeoutError):  # the stream's own cadence
                await asyncio.wait_for(upstream.ticks_stop.wait(), interval)
            if upstream.ticks_stop.is_set():
                break
        await response.write_eof()
    finally:
        upstream.ticks_ended.set()
    return response


async def _hold(request: web.Request) -> web.Response:
    upstream = request.app[UPSTREAM]
    upstream.hits[request.path] += 1
    await request.read()
    upstream.held.set()
    await upstream.release.wait()
    return web.Response(text=f"released {request.method}")


def _probe_wheel() -> bytes:
    """A minimal, valid wheel of a package 'wonders-probe' (module wonders_probe)."""
    import base64
    import io
    import zipfile

    files = {
        "wonders_probe.py": b"VALUE = 42\n",
        "wonders_probe-1.0.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: wonders-probe\nVersion: 1.0\n",
        "wonders_probe-1.0.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: wonders-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("wonders_probe-1.0.dist-info/RECORD,,")
    files["wonders_probe-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return buffer.getvalue()


_WHEEL = _probe_wheel()
_WHEEL_NAME = "wonders_probe-1.0-py3-none-any.whl"


async def _simple(request: web.Request) -> web.Response:
    request.app[UPSTREAM].hits[request.path] += 1
    if request.match_info.get("project") in (None, ""):
        return web.Response(text='<a href="wonders-probe/">wonders-probe</a>',
                            content_type="text/html")
    digest = hashlib.sha256(_WHEEL).hexdigest()
    return web.Response(
        text=f'<a href="../../packages/{_WHEEL_NAME}#sha256={digest}">{_WHEEL_NAME}</a>',
        content_type="text/html")


async def _package(request: web.Request) -> web.Response:
    request.app[UPSTREAM].hits[request.path] += 1
    return web.Response(body=_WHEEL, content_type="application/octet-stream")


async def _redirect(request: web.Request) -> web.Response:
    request.app[UPSTREAM].hits[request.path] += 1
    raise web.HTTPFound(location=request.query["to"])


async def _status(request: web.Request) -> web.Response:
    request.app[UPSTREAM].hits[request.path] += 1
    return web.Response(status=int(request.match_info["code"]), text="custom")


@contextlib.asynccontextmanager
async def serve_upstream(tmp_path: Path, host: str = "127.0.0.1") -> AsyncIterator[Upstream]:
    """Serve on ``host``; URLs name it as ``localhost`` for 127.0.0.1, else by address."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", host)
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ssl)
    ca_file = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    upstream = Upstream("", ca_file)
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[UPSTREAM] = upstream
    app.router.add_route("*", "/echo", _echo)
    app.router.add_route("*", "/echo/{tail:.*}", _echo)
    app.router.add_get("/bytes/{size}", _bytes)
    app.router.add_get("/sse", _sse)
    app.router.add_get("/ticks", _ticks)
    app.router.add_get("/redirect", _redirect)
    app.router.add_route("*", "/hold", _hold)
    app.router.add_get("/simple/", _simple)
    app.router.add_get("/simple/{project}/", _simple)
    app.router.add_get(f"/packages/{_WHEEL_NAME}", _package)
    app.router.add_route("*", "/status/{code}", _status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, ssl_context=server_ssl)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    upstream.url = f"https://{'localhost' if host == '127.0.0.1' else host}:{port}"
    try:
        yield upstream
    finally:
        await runner.cleanup()


POLICY = """
[defaults]
ports = [{port}]
rate_per_minute = "unlimited"

[clients.gpu01]
bundle = "gpu01.pub"
allow = ["localhost", "127.0.0.1"]
allow_private = ["127.0.0.0/8"]
max_response_bytes = "32 MiB"

[clients.locked]
bundle = "locked.pub"
allow = ["localhost", "127.0.0.1", "2130706433", "0x7f.1", "[::1]", "169.254.169.254"]
ports = [{port}, 80]

[clients.follower]
bundle = "follower.pub"
allow = ["localhost", "127.0.0.1", "127.0.0.2", "169.254.169.254"]
allow_private = ["127.0.0.2/32"]
follow_redirects = true
ports = [{port}, 80]
"""


@dataclass
class Keys:
    forwarder: PrivateKey
    clients: dict[str, PrivateKey]
    policy: Policy


def make_keys(tmp_path: Path, port: int, policy_text: str = POLICY) -> Keys:
    keydir = tmp_path / "keys"
    keydir.mkdir(exist_ok=True)
    clients = {}
    for name in ("gpu01", "locked", "follower"):
        clients[name] = PrivateKey.generate(name)
        write_key_files(clients[name], keydir, force=True)
    (keydir / "policy.toml").write_text(policy_text.format(port=port))
    return Keys(PrivateKey.generate("fw"), clients, load_policy(keydir / "policy.toml"))


@contextlib.asynccontextmanager
async def running_forwarder(
    store: Store, keys: Keys, upstream: Upstream, settings: ForwarderSettings = FAST,
    **options: Any,
) -> AsyncIterator[Forwarder]:
    """A forwarder running until the block ends; ``options`` go to :class:`Forwarder`."""
    forwarder = Forwarder(store, keys.forwarder, keys.policy, settings,
                          upstream_ca=str(upstream.ca_file), **options)
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


def client_for(store: Store, keys: Keys, name: str = "gpu01", **kwargs: object) -> RelayClient:
    options: dict[str, object] = {"poll_fast": 0.005, "poll_slow": 0.1, "heartbeat_check": 0.5}
    options.update(kwargs)
    return RelayClient(store, keys.clients[name], keys.forwarder.public, **options)  # type: ignore[arg-type]


class WrappedStore:
    """A store that passes every call to ``inner`` after ``_on(action, key)``; the action
    is the S3 permission the call needs (``s3:GetObject`` also for ``exists``), the key
    is the object key or the listed prefix."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def _on(self, action: str, key: str) -> None:
        """Called before each call; raise to make it fail."""

    @property
    def url(self) -> str:
        return self.inner.url

    async def check(self, prefix: str = "") -> None:
        self._on("s3:ListBucket", prefix)
        await self.inner.check(prefix)

    async def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        self._on("s3:PutObject", key)
        await self.inner.put(key, data, create_only=create_only)

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        self._on("s3:GetObject", key)
        return await self.inner.get(key, max_bytes=max_bytes)

    async def stream(self, key: str, *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        self._on("s3:GetObject", key)
        async for piece in self.inner.stream(key, chunk_size=chunk_size):
            yield piece

    async def exists(self, key: str) -> bool:
        self._on("s3:GetObject", key)  # HeadObject needs s3:GetObject
        return await self.inner.exists(key)

    async def list(self, prefix: str, *, start_after: str | None = None) -> AsyncIterator[str]:
        self._on("s3:ListBucket", prefix)
        async for key in self.inner.list(prefix, start_after=start_after):
            yield key

    async def delete(self, key: str) -> None:
        self._on("s3:DeleteObject", key)
        await self.inner.delete(key)

    async def close(self) -> None:
        await self.inner.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class OutageStore(WrappedStore):
    """A store that fails every call with StoreError while ``down`` is set, as an
    unreachable endpoint does; ``calls_while_down`` counts the refused calls."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.down = False
        self.calls_while_down = 0

    def _on(self, action: str, key: str) -> None:
        if self.down:
            self.calls_while_down += 1
            raise StoreError(f"{self.inner.url}: cannot connect (outage in a test)")
