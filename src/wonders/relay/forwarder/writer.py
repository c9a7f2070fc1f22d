"""Storing one response: sealed inline in its head, or a head followed by segments, each
segment stored only when the flow-control window (:mod:`.flow`) has room for it. Also the
forwarder's own error answers (:class:`ErrorReply`, :func:`error_head`).

The writer's I/O is the store's; its decisions (when is there room, when to give up) are
:class:`~wonders.relay.forwarder.flow.FlowWindow`'s, with the times passed in.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable

from wonders.crypto import Headers, OpenedRequest, PrivateKey, ResponseHead, Sealed, seal_response
from wonders.errors import StoreError
from wonders.mailbox import Backoff, Store, layout
from wonders.relay.forwarder.flow import FlowWindow, GiveUp
from wonders.relay.forwarder.settings import ForwarderSettings

__all__ = ["ErrorReply", "NoRoom", "ResponseWriter", "error_head"]

log = logging.getLogger("wonders.forwarder")

_REASONS = {400: "Bad Request", 403: "Forbidden", 414: "URI Too Long",
            429: "Too Many Requests", 431: "Request Header Fields Too Large",
            502: "Bad Gateway", 504: "Gateway Timeout"}


class ErrorReply(Exception):
    """Answer the client with a forwarder-made error response."""

    def __init__(self, status: int, code: str, message: str, extra: Headers = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


class NoRoom(Exception):
    """The client did not make room for the next segment in time: the response ends here
    (no error trailer can be stored without a free slot)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def error_head(status: int, code: str, message: str,
               extra: Headers = ()) -> tuple[ResponseHead, bytes]:
    """A forwarder-made error response: ``X-Wonders-Error: <code>``, ``message`` as text."""
    body = (message.rstrip() + "\n").encode()
    headers = (
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("X-Wonders-Error", code),
        *extra,
    )
    return ResponseHead(status, _REASONS.get(status, ""), headers), body


class ResponseWriter:
    """Seals and stores one response: inline, or a head followed by segments.

    Flow control: segment n is stored once :attr:`window` has room for it, polled with a
    backoff; a client that frees no slot in time ends the response with :class:`NoRoom`.

    One failed put does not end the response (a download once broke off at 256 MiB after a
    single failed put: tests/relay/test_stalls.py). A segment or trailer the store fails to
    take is stored again until it does, for up to ``read_timeout``: nothing else would ever
    store it, and the client would wait its whole timeout for it.
    ``clock`` is the wall clock (the response's lifetime), ``monotonic`` the one waits
    are measured with."""

    def __init__(self, store: Store, key: PrivateKey, request: OpenedRequest, client: str, *,
                 settings: ForwarderSettings, clock: Callable[[], float],
                 monotonic: Callable[[], float]) -> None:
        self._store, self._key = store, key
        self._request = request
        self._client = client
        self._lifetime = settings.response_lifetime
        self._read_timeout = settings.read_timeout
        self._clock, self._monotonic = clock, monotonic
        self.window = FlowWindow(settings.max_unread_segments, settings.read_timeout,
                                 settings.total_timeout)
        self._sealed: Sealed | None = None
        self._index = 0
        self.bytes = 0
        self.sha256: bytes | None = None

    @property
    def request_id(self) -> str:
        return self._request.id

    @property
    def client(self) -> str:
        return self._client

    @property
    def started(self) -> bool:
        return self._sealed is not None

    async def whole(self, head: ResponseHead, body: bytes) -> None:
        await self._put_head(head, body)
        self.bytes = len(body)
        self.sha256 = hashlib.sha256(body).digest()

    async def start(self, head: ResponseHead) -> None:
        self._sealed = await self._put_head(head, None)

    async def segment(self, data: bytes | memoryview) -> None:
        assert self._sealed is not None
        assert self._sealed.body is not None
        await self._put(self._sealed.body.seal(data))
        self.bytes += len(data)

    async def finish(self, error: str | None = None) -> None:
        assert self._sealed is not None
        assert self._sealed.body is not None
        await self._put(self._sealed.body.finish(error))
        self.sha256 = self._sealed.body.sha256

    async def _put_head(self, head: ResponseHead, body: bytes | None) -> Sealed:
        sealed = seal_response(
            self._request, head, sender=self._key, now=self._clock(),
            lifetime=self._lifetime, body=body,
        )
        # create-only: a takeover never writes over a response that already started
        key = layout.head_key("responses", self._client, self._request.id)
        await self._store.put(key, sealed.data, create_only=True)
        return sealed

    async def _put(self, segment: bytes) -> None:
        await self._room(self._index)
        key = layout.body_key("responses", self._client, self._request.id, self._index)
        await self._store_again(key, segment)
        self._index += 1

    async def _store_again(self, key: str, segment: bytes) -> None:
        """Put ``segment`` at ``key``, again after a failure (a plain put of the same bytes
        is idempotent), until it lands or ``read_timeout`` passes; then the last failure is
        raised."""
        until = self._monotonic() + self._read_timeout
        delay, failures = 0.05, 0
        while True:
            try:
                await self._store.put(key, segment)
            except StoreError as exc:
                failures += 1
                left = until - self._monotonic()
                if left <= 0:
                    raise
                if failures == 1:  # once per segment, not once per attempt
                    log.warning("response %s to %s: could not store %s, retrying for up to "
                                "%.0f s: %s", self.request_id, self._client, key, left, exc)
            else:
                if failures:
                    log.info("response %s to %s: %s stored after %d failed attempts",
                             self.request_id, self._client, key, failures)
                return
            await asyncio.sleep(min(delay, left))  # the retry interval
            delay = min(delay * 2, 2.0)

    async def _room(self, index: int) -> None:
        """Wait until segment ``index`` may be stored: until the window's blocker is gone."""
        oldest = self.window.blocker(index)
        if oldest is None:
            return
        key = layout.body_key("responses", self._client, self._request.id, oldest)
        until = self.window.until(self._monotonic())
        backoff = Backoff(0.005, 0.25, hold=0.0, clock=self._monotonic)
        while await self._store.exists(key):
            left = self.window.left(until, self._monotonic())
            if isinstance(left, GiveUp):
                raise NoRoom(left.code, left.message)
            await asyncio.sleep(min(backoff.next(), left))  # a poll interval
        self.window.freed(oldest)
