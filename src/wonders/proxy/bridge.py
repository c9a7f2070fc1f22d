"""The proxy: a mitmproxy addon that hands every flow to a loopback bridge, which relays it.

Theory of operation:

* mitmproxy terminates the client's TLS with the local CA and parses HTTP (1.1 or 2).
* In ``requestheaders`` the addon records the request's method, URL and headers under a
  one-time token and points the flow at the **bridge**, a plain-HTTP aiohttp server on
  127.0.0.1 inside the same process, with request and response streaming on.
* The bridge relays the request with :class:`~wonders.relay.client.RelayClient` and
  writes the response as its verified segments arrive; mitmproxy streams them on to the
  client. A response sent whole by mitmproxy would wait for the full body; this way a
  multi-GB download or an event stream flows with bounded memory.
* If the body fails verification mid-stream, the bridge aborts its connection, so
  mitmproxy breaks the client's connection: the client never sees a clean end.
* ``server_connect`` refuses every connection but the one to the bridge: the proxy
  itself never reaches any other host. WebSocket upgrades get 501.

Every error the application sees is one line of plain text with ``X-Wonders-Error``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from mitmproxy import http
from mitmproxy.proxy import server_hooks

from wonders._text import human_bytes
from wonders.crypto import Headers
from wonders.errors import EnvelopeError, RelayError, StoreError
from wonders.relay.client import RelayClient
from wonders.relay.upstream import strip_hop_by_hop

__all__ = ["Bridge", "Stats", "WondersAddon"]

log = logging.getLogger("wonders.proxy")

TOKEN_HEADER = "X-Wonders-Bridge-Token"  # noqa: S105 (a header name, not a secret)
_INLINE = 256 * 1024


@dataclass
class Stats:
    """What ``wonder-run`` reports when the command ends."""

    requests: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    denied: int = 0
    errors: int = 0

    def summary(self) -> str:
        return (f"{self.requests} requests, {human_bytes(self.bytes_up)} up, "
                f"{human_bytes(self.bytes_down)} down, {self.denied} denied, {self.errors} errors")


@dataclass
class _Pending:
    method: str
    url: str
    headers: Headers
    started: float = field(default_factory=time.monotonic)


def _plain_error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, text=message.rstrip() + "\n",
                        headers={"X-Wonders-Error": code},
                        content_type="text/plain", charset="utf-8")


class Bridge:
    """The loopback server that relays each flow the addon hands it."""

    def __init__(
        self,
        client: RelayClient,
        *,
        timeout: float = 300.0,
        on_request: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.stats = Stats()
        self._on_request = on_request
        self._pending: dict[str, _Pending] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    def register(self, method: str, url: str, headers: Headers) -> str:
        token = secrets.token_urlsafe(18)
        self._pending[token] = _Pending(method, url, headers)
        return token

    async def start(self) -> int:
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _body(self, request: web.BaseRequest) -> bytes | AsyncIterator[bytes]:
        """The request body: whole if small (it then travels inside the head), else a
        stream."""
        if not request.body_exists:
            return b""
        first = bytearray()
        async for chunk in request.content.iter_any():
            first += chunk
            if len(first) > _INLINE:
                break
        else:
            return bytes(first)

        async def rest() -> AsyncIterator[bytes]:
            yield bytes(first)
            async for chunk in request.content.iter_chunked(1024 * 1024):
                yield chunk

        return rest()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        pending = self._pending.pop(request.headers.get(TOKEN_HEADER, ""), None)
        if pending is None:
            return _plain_error(400, "bridge", "wonders: unknown request (internal error)")
        self.stats.requests += 1
        status, sent = 0, 0
        try:
            body = await self._body(request)
            up = len(body) if isinstance(body, bytes) else 0
            try:
                response = await self.client.request(
                    pending.method, pending.url, pending.headers, body, timeout=self.timeout)
            except RelayError as exc:
                self.stats.errors += 1
                status = exc.status
                return _plain_error(exc.status, exc.code, f"wonders: {exc}")
            except EnvelopeError as exc:
                self.stats.errors += 1
                status = 502
                return _plain_error(502, "verification-failed",
                                    f"wonders: the response failed verification ({exc}); "
                                    "it was not delivered")
            except StoreError as exc:
                self.stats.errors += 1
                status = 502
                return _plain_error(502, "mailbox-error", f"wonders: mailbox error: {exc}")
            self.stats.bytes_up += up
            status = response.status
            if response.header("X-Wonders-Error") in ("policy-denied", "rate-limited"):
                self.stats.denied += 1
            elif response.header("X-Wonders-Error"):
                self.stats.errors += 1
            stream = web.StreamResponse(status=response.status, reason=response.reason or None)
            for name, value in strip_hop_by_hop(response.headers):
                stream.headers.add(name, value)
            try:
                await stream.prepare(request)
                async for chunk in response.iter_body():
                    await stream.write(chunk)
                    sent += len(chunk)
                await stream.write_eof()
            except (EnvelopeError, RelayError, StoreError) as exc:
                # Never a clean end: break the connection so the client sees the failure.
                self.stats.errors += 1
                log.error("%s %s: response aborted after %d bytes: %s",
                          pending.method, _no_query(pending.url), sent, exc)
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError from None
            finally:
                self.stats.bytes_down += sent
                await response.aclose()
            return stream
        finally:
            if self._on_request is not None:
                ms = (time.monotonic() - pending.started) * 1000
                self._on_request(f"{pending.method} {_no_query(pending.url)} {status or '-'} "
                                 f"{sent} B {ms:.0f} ms")


def _no_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


class WondersAddon:
    """The mitmproxy addon: every flow goes to the bridge, and nowhere else. Its hooks are
    async and never wait on I/O, so no flow holds up another."""

    def __init__(self, bridge: Bridge, listening: asyncio.Event) -> None:
        self.bridge = bridge
        self.listening = listening

    async def running(self) -> None:
        self.listening.set()  # mitmproxy calls this once its servers are bound

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        request = flow.request
        if request.headers.get("Upgrade", "").lower() == "websocket" or request.method == "PRI":
            flow.response = http.Response.make(
                501, b"wonders: WebSocket and other non-HTTP/1 traffic cannot be relayed\n",
                {"Content-Type": "text/plain; charset=utf-8", "X-Wonders-Error": "unsupported"},
            )
            return
        headers = tuple(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.fields
            if k.lower() not in (b"proxy-connection", b"proxy-authorization")
        )
        token = self.bridge.register(request.method, request.url, headers)
        request.stream = True
        request.scheme, request.host, request.port = "http", "127.0.0.1", self.bridge.port
        request.headers[TOKEN_HEADER] = token

    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            flow.response.stream = True

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.address != ("127.0.0.1", self.bridge.port):
            data.server.error = "wonders: the proxy connects to nothing but its relay"
