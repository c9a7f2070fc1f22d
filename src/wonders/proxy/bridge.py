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
* The proxy serves only whoever knows its per-run secret: every plain request and every
  CONNECT must carry it as ``Proxy-Authorization: Basic`` (``wonders:<secret>``), which
  clients send by themselves when the proxy URL holds the credentials. Anything else gets
  407. Requests inside a tunnel opened by an authorised CONNECT ride on that CONNECT.
* A request target holding control characters, and conflicting or duplicated
  ``Content-Length``/``Transfer-Encoding``, get 400 (``bad-request``). The relayed request
  never carries the client's framing: the body is framed again by whoever sends it on.

Every error the application sees is one line of plain text with ``X-Wonders-Error``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import re
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from mitmproxy import connection, http
from mitmproxy.proxy import server_hooks

from wonders.crypto import Headers
from wonders.errors import EnvelopeError, RelayError, StoreError
from wonders.relay.client import RelayClient
from wonders.relay.headers import strip_hop_by_hop
from wonders.text import human_bytes

__all__ = ["PROXY_USER", "Bridge", "Stats", "WondersAddon", "printable"]

log = logging.getLogger("wonders.proxy")

TOKEN_HEADER = "X-Wonders-Bridge-Token"  # noqa: S105 (a header name, not a secret)
PROXY_USER = "wonders"  # the user name in the proxy URL; the password is the secret
_INLINE = 256 * 1024
#: Headers of the client's connection to the proxy: never relayed. The body's framing
#: (Content-Length, Transfer-Encoding) is the bridge's to set again.
_NOT_RELAYED = frozenset({"proxy-connection", "proxy-authorization", "content-length",
                          "transfer-encoding"})
#: An HTTP method is a token (RFC 9110 §5.6.2).
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A request target is printable ASCII (RFC 9112 §3.2): no control characters, spaces,
#: DEL or raw non-ASCII (the bridge could not take those anyway). Percent-encoded, any byte
#: is fine.
_BAD_TARGET = re.compile(rb"[^\x21-\x7e]")
#: No host or authority may hold C0 or C1 controls, a space or DEL.
_BAD_HOST = re.compile(rb"[\x00-\x20\x7f]|\xc2[\x80-\x9f]")


class BadRequest(RelayError):
    """The request cannot be relayed as it is (its body did not match its length)."""

    status = 400
    code = "bad-request"


def printable(text: str) -> str:
    """``text`` for a log line: control and other non-printable characters (and the
    backslash) escaped as ``repr`` does, so a line stays one line and cannot steer a
    terminal."""
    return "".join(
        "\\\\" if c == "\\" else c if c.isprintable() else repr(c)[1:-1] for c in text
    )


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
    length: int | None = None  # the client's Content-Length, checked by the addon
    started: float = field(default_factory=time.monotonic)


def _plain_error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, text=message.rstrip() + "\n",
                        headers={"X-Wonders-Error": code},
                        content_type="text/plain", charset="utf-8")


async def _exactly(body: AsyncIterator[bytes], length: int) -> AsyncIterator[bytes]:
    """``body``, which must be ``length`` bytes: a body that differs never goes out whole."""
    total = 0
    async for chunk in body:
        total += len(chunk)
        if total > length:
            raise BadRequest(f"the request body is longer than its Content-Length {length}")
        yield chunk
    if total != length:
        raise BadRequest(f"the request body ended after {total} of {length} bytes")


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

    def register(self, method: str, url: str, headers: Headers,
                 length: int | None = None) -> str:
        """Hold a request for the bridge; ``headers`` must not frame the body (the bridge
        adds ``Content-Length`` when ``length`` is given or the body is sent whole)."""
        token = secrets.token_urlsafe(18)
        self._pending[token] = _Pending(method, url, headers, length)
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
            headers = pending.headers
            if isinstance(body, bytes):
                if pending.length is not None and len(body) != pending.length:
                    status = 400
                    return _plain_error(400, "bad-request",
                                        "wonders: the request body does not match its "
                                        "Content-Length")
                if body or pending.length is not None:
                    headers = (*headers, ("Content-Length", str(len(body))))
            elif pending.length is not None:
                headers = (*headers, ("Content-Length", str(pending.length)))
                body = _exactly(body, pending.length)
            try:
                response = await self.client.request(
                    pending.method, pending.url, headers, body, timeout=self.timeout)
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
                          printable(pending.method), printable(_no_query(pending.url)), sent,
                          printable(str(exc)))
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
                self._on_request(f"{printable(pending.method)} "
                                 f"{printable(_no_query(pending.url))} {status or '-'} "
                                 f"{sent} B {ms:.0f} ms")


def _no_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _refusal(status: int, code: str, message: str,
             extra: dict[str, str] | None = None) -> http.Response:
    return http.Response.make(
        status, (message.rstrip() + "\n").encode(),
        {"Content-Type": "text/plain; charset=utf-8", "X-Wonders-Error": code, **(extra or {})},
    )


def _framing(request: http.Request) -> tuple[int | None, str | None]:
    """The client's Content-Length (None if absent), or why its framing is refused.
    mitmproxy already refuses these (``validate_inbound_headers``); this holds even if it
    did not."""
    lengths = [v for k, v in request.headers.fields if k.lower() == b"content-length"]
    codings = [v for k, v in request.headers.fields if k.lower() == b"transfer-encoding"]
    if lengths and codings:
        return None, "both Content-Length and Transfer-Encoding"
    if len(lengths) > 1 or len(codings) > 1:
        return None, "a duplicated Content-Length or Transfer-Encoding"
    if codings and codings[0].strip().lower() != b"chunked":
        return None, "a Transfer-Encoding other than chunked"
    if lengths:
        if not lengths[0].isdigit() or not lengths[0].isascii() or len(lengths[0]) > 18:
            return None, "an invalid Content-Length"
        return int(lengths[0]), None
    return None, None


class WondersAddon:
    """The mitmproxy addon: every flow from whoever holds the secret goes to the bridge,
    and nowhere else. Its hooks are async and never wait on I/O, so no flow holds up
    another."""

    def __init__(self, bridge: Bridge, listening: asyncio.Event, secret: str) -> None:
        if len(secret) < 16:
            raise ValueError("the proxy secret is too short")
        self.bridge = bridge
        self.listening = listening
        self._credentials = f"{PROXY_USER}:{secret}".encode()
        #: client connections whose CONNECT carried the secret: their tunnel is theirs
        self._tunnels: weakref.WeakSet[connection.Client] = weakref.WeakSet()

    async def running(self) -> None:
        self.listening.set()  # mitmproxy calls this once its servers are bound

    def _authorized(self, request: http.Request) -> bool:
        """Whether the request carries exactly one ``Proxy-Authorization: Basic`` with the
        secret, compared in constant time."""
        values = request.headers.get_all("Proxy-Authorization")
        if len(values) != 1:
            return False
        scheme, _, token = values[0].strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._credentials)

    @staticmethod
    def _unauthorized() -> http.Response:
        return _refusal(
            407, "proxy-auth",
            "wonders: proxy authentication required: this proxy serves only the command "
            "wonder-run started, through the proxy URL it was given",
            {"Proxy-Authenticate": f'Basic realm="{PROXY_USER}"'},
        )

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if self._authorized(flow.request):
            self._tunnels.add(flow.client_conn)
            del flow.request.headers["Proxy-Authorization"]
        else:
            flow.response = self._unauthorized()

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        request = flow.request
        if flow.client_conn not in self._tunnels and not self._authorized(request):
            flow.response = self._unauthorized()
            return
        if request.headers.get("Upgrade", "").lower() == "websocket" or request.method == "PRI":
            flow.response = _refusal(
                501, "unsupported",
                "wonders: WebSocket and other non-HTTP/1 traffic cannot be relayed")
            return
        raw_method = request.data.method.decode("latin-1")
        if (not _TOKEN.fullmatch(raw_method) or _BAD_TARGET.search(request.data.path)
                or _BAD_HOST.search(request.data.authority)
                or _BAD_HOST.search(request.host.encode("utf-8", "surrogateescape"))):
            flow.response = _refusal(
                400, "bad-request",
                "wonders: the request line holds control characters, spaces or raw "
                "non-ASCII bytes; percent-encode them")
            return
        length, problem = _framing(request)
        if problem is not None:
            flow.response = _refusal(
                400, "bad-request", f"wonders: the request has {problem}; refusing it")
            return
        headers = tuple(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.fields
            if k.decode("latin-1").lower() not in _NOT_RELAYED
        )
        token = self.bridge.register(request.method, request.url, headers, length)
        request.headers.pop("Proxy-Authorization", None)
        request.stream = True
        request.scheme, request.host, request.port = "http", "127.0.0.1", self.bridge.port
        request.headers[TOKEN_HEADER] = token

    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            flow.response.stream = True

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.address != ("127.0.0.1", self.bridge.port):
            data.server.error = "wonders: the proxy connects to nothing but its relay"
