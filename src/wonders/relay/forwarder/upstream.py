"""The forwarder's HTTP client: aiohttp, with the address guard in its resolver. The one
module of the forwarder that imports aiohttp: :class:`AiohttpUpstream` is the default
:class:`~wonders.relay.forwarder.seam.Upstream`, and converts aiohttp's exceptions into
the seam's (see :func:`mapped_errors`).

- One session (and connection pool) per client, whose resolver resolves a host, asks
  :meth:`Policy.guard <wonders.policy.Policy.guard>`, and hands aiohttp only the
  address the guard chose, so aiohttp connects to exactly the checked address (no second
  lookup, no DNS rebinding). aiohttp's DNS cache is off, so every connection is checked
  against the current policy. A denied host raises :class:`AddressDenied` and is never
  connected to.
- aiohttp never calls the resolver for an IP-literal host, so
  :meth:`AiohttpUpstream.request` puts every URL in its normalised form
  (:func:`wonders.policy.parse_target`: ``127。0。0。2`` and ``0x7f.0.0.2`` become
  ``127.0.0.2``) and asks the guard itself about a literal before aiohttp sees it. A name
  reaches aiohttp as IDNA ASCII, which aiohttp cannot take for a literal, so it always
  goes through the resolver.
- A response head over the limits (:data:`MAX_HEAD_LINE` bytes in a line or header field,
  :data:`MAX_HEADERS` headers) raises :class:`ResponseHeadersTooLarge` as soon as the
  parser passes the limit, not at a timeout.
- TLS verification is always on: the system roots, plus an optional extra CA bundle.
- Bodies pass through untouched: no automatic decompression, no headers invented
  (aiohttp's default User-Agent, Accept, Accept-Encoding and Content-Type are skipped
  unless the client sent them).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from ipaddress import IPv6Address, ip_address
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from wonders.crypto import Headers
from wonders.policy import Policy, parse_target
from wonders.relay.forwarder.seam import (
    AddressDenied,
    BodyBrokeOff,
    ResponseHeadersTooLarge,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
)

__all__ = [
    "MAX_HEADERS",
    "MAX_HEAD_LINE",
    "AddressDenied",
    "AiohttpUpstream",
    "ResponseHeadersTooLarge",
    "Upstream",
    "mapped_errors",
]

_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
#: The most of a response head the forwarder parses: bytes in a line (status line or
#: header field) and headers. aiohttp's defaults, named so they do not change under us.
MAX_HEAD_LINE = 8190
MAX_HEADERS = 128


def _head_over_limits(exc: BaseException) -> bool:
    """Whether aiohttp refused a response head for its size (a line or field too long,
    too many headers), judging by the parser errors behind ``exc``."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, LineTooLong):
            return True
        if isinstance(cause, HttpProcessingError) and "too many headers" in str(
            cause.message
        ).lower():
            return True
        cause = cause.__cause__ or cause.__context__
    return False


class GuardedResolver(AbstractResolver):
    """Resolve with the system resolver, then keep only the address the guard picks."""

    def __init__(self, client: str, policy: Callable[[], Policy]) -> None:
        self._client = client
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, family=family)
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
        addresses = list(dict.fromkeys(ip_address(info[4][0]) for info in infos))
        guarded = self._policy().guard(self._client, host, addresses)
        if guarded.address is None:
            raise AddressDenied(guarded.decision)
        v6 = isinstance(guarded.address, IPv6Address)
        return [{
            "hostname": host,
            "host": str(guarded.address),
            "port": port,
            "family": socket.AF_INET6 if v6 else socket.AF_INET,
            "proto": 0,
            "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
        }]

    async def close(self) -> None:
        return None


class AiohttpUpstream:
    """Sessions to the internet, one per client, with the guard and the timeouts."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        *,
        extra_ca: Path | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        total_timeout: float = 3600.0,
    ) -> None:
        self._policy = policy
        self._ssl = ssl.create_default_context()
        if extra_ca is not None:
            self._ssl.load_verify_locations(cafile=str(extra_ca))
        self._timeout = aiohttp.ClientTimeout(
            total=total_timeout, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._sessions: dict[str, aiohttp.ClientSession] = {}

    def _session(self, client: str) -> aiohttp.ClientSession:
        session = self._sessions.get(client)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(client, self._policy), ssl=self._ssl,
                use_dns_cache=False, limit=64,
            )
            session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, timeout=self._timeout,
                cookie_jar=aiohttp.DummyCookieJar(), max_line_size=MAX_HEAD_LINE,
                max_field_size=MAX_HEAD_LINE, max_headers=MAX_HEADERS,
            )
            self._sessions[client] = session
        return session

    async def request(
        self,
        client: str,
        method: str,
        url: str,
        headers: Headers,
        body: bytes | AsyncIterable[bytes] | None,
    ) -> AiohttpResponse:
        """Send one request (no redirects followed here); the caller reads and releases
        the response.

        Raises :class:`AddressDenied` for a host the guard refuses (a literal here, a name
        in the resolver), :class:`ResponseHeadersTooLarge` for a response head over
        :data:`MAX_HEAD_LINE` or :data:`MAX_HEADERS`, and the seam's other failures for
        aiohttp's errors (an :class:`UpstreamError` for a URL
        :func:`~wonders.policy.parse_target` refuses).
        """
        with mapped_errors():
            parsed = self._checked(client, url)
            present = {name.lower() for name, _ in headers}
            skip = [h for h in _AUTO_HEADERS if h.lower() not in present]
            kwargs: dict[str, Any] = {}
            if body is not None and body != b"":
                kwargs["data"] = body
            response = await self._session(client).request(
                method, parsed, headers=list(headers), allow_redirects=False,
                skip_auto_headers=skip, **kwargs,
            )
        return AiohttpResponse(response)

    def _checked(self, client: str, url: str) -> yarl.URL:
        """``url`` normalised, as aiohttp will read it; a literal host guarded."""
        try:
            target = parse_target(url)
            parsed = yarl.URL(target.url)
        except ValueError as exc:
            raise aiohttp.InvalidURL(url, str(exc)) from None
        if (parsed.raw_host, parsed.port) != (target.host.text.strip("[]"), target.port):
            # never send what aiohttp would read as another host than the one decided
            raise aiohttp.InvalidURL(url, f"read as {parsed.raw_host}:{parsed.port}")
        address = target.host.address
        if address is not None:
            # aiohttp connects to a literal without asking the resolver: guard it here.
            guarded = self._policy().guard(client, target.host.text, [address])
            if guarded.address != address:
                raise AddressDenied(guarded.decision)
        return parsed

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


#: The name this adapter had before the seam (kept for callers and tests).
Upstream = AiohttpUpstream


@contextlib.contextmanager
def mapped_errors() -> Iterator[None]:
    """aiohttp's exceptions from sending a request, as the seam's (the rest pass)."""
    try:
        yield
    except AddressDenied:
        raise
    except aiohttp.ClientConnectorError as exc:
        # a literal is guarded before aiohttp sees it, a name in the resolver
        if isinstance(exc.os_error, AddressDenied):
            raise exc.os_error from None
        raise UpstreamUnreachable(str(exc.os_error)) from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(str(exc)) from exc
    except aiohttp.ClientResponseError as exc:
        if _head_over_limits(exc):
            raise ResponseHeadersTooLarge(exc.message) from exc
        raise UpstreamError(str(exc)) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(str(exc)) from exc


class AiohttpResponse:
    """An aiohttp response as the seam's :class:`~wonders.relay.forwarder.seam.
    UpstreamResponse`: raw headers as latin-1 text, body errors as :class:`BodyBrokeOff`."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status: int = response.status
        self.reason: str = response.reason or ""
        self.headers: Headers = tuple(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BodyBrokeOff(str(exc), timeout=isinstance(exc, TimeoutError)) from exc

    async def close(self) -> None:
        self._response.release()
        await self._response.wait_for_close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
