"""``RelayClient``: the GPU side of the protocol, as a Python API.

It seals a request, puts it in the client's mailbox, waits for the sealed response, opens
it, and streams the body back segment by segment, each verified before it is released.
The proxy uses it for every flow; tests use it directly.

One poll loop per client serves every waiting request: one LIST of
``responses/<client>/`` per interval (never one poll per request), fast while responses
arrive and slower while nothing happens. Before a request goes out, and while it waits,
the client checks the forwarders' signed heartbeats, so with no forwarder alive it fails
at once (:class:`~wonders.errors.NoForwarder`, 503) instead of after the whole timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Self, TypeVar

from wonders.crypto import (
    MAX_INLINE,
    MAX_SEGMENT,
    BodyOpener,
    Headers,
    OpenedResponse,
    PrivateKey,
    PublicBundle,
    RequestHead,
    Sealed,
    new_request_id,
    open_response,
    seal_request,
)
from wonders.errors import (
    EnvelopeError,
    NoForwarder,
    ObjectExists,
    ObjectNotFound,
    RelayTimeout,
    StoreError,
    StorePermissionError,
    UnsafeObject,
)
from wonders.mailbox import Backoff, Store, layout, wait_event, watch
from wonders.relay.records import Liveness, parse_heartbeat
from wonders.text import Throttle

__all__ = ["RelayClient", "RelayResponse"]

_T = TypeVar("_T")

log = logging.getLogger("wonders.client")

Body = bytes | AsyncIterable[bytes]

#: Seconds ``close()`` waits for read segments still being deleted (retried while the store
#: fails); the janitor removes what is left.
_CLOSE_GRACE = 5.0


@dataclass
class _Waiter:
    """Keys seen so far under one request's response prefix."""

    request_id: str
    keys: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class RelayClient:
    """Send requests through a mailbox and receive their verified responses.

    Args:
        store: the mailbox.
        key: this client's private key; its name is the mailbox prefix.
        forwarder: the pinned forwarder bundle; responses from any other key are refused.
        clock: Unix seconds (injected for tests).
        poll_fast, poll_slow: the poll interval range, seconds.
        lifetime: how long a sealed request stays valid, seconds.
        inline_limit: request bodies up to this size travel inside the head object.
        stale_after: a heartbeat that has not moved for this long (seconds) does not count
            as alive.
        heartbeat_check: how often (seconds) to re-read heartbeats.
        skew: how far (seconds) the forwarder's clock may be from ours.
    """

    def __init__(
        self,
        store: Store,
        key: PrivateKey,
        forwarder: PublicBundle,
        *,
        clock: Callable[[], float] = time.time,
        poll_fast: float = 0.01,
        poll_slow: float = 1.0,
        lifetime: float = 300.0,
        inline_limit: int = 256 * 1024,
        segment_size: int = 1024 * 1024,
        stale_after: float = 30.0,
        heartbeat_check: float = 5.0,
        skew: float = 300.0,
    ) -> None:
        self.store = store
        self.key = key
        self.forwarder = forwarder
        self.clock = clock
        self.lifetime = lifetime
        self.inline_limit = min(inline_limit, MAX_INLINE)  # a forwarder reads no larger head
        self.segment_size = min(segment_size, MAX_SEGMENT)
        self.stale_after = stale_after
        self.heartbeat_check = heartbeat_check
        self._backoff = Backoff(poll_fast, poll_slow)
        self._waiters: dict[str, _Waiter] = {}
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._alive_at = -float("inf")
        self._alive = False
        self._alive_lock = asyncio.Lock()
        self._deleting: set[asyncio.Task[None]] = set()
        self._liveness = Liveness(stale_after, skew)
        self._off: float | None = None  # a heartbeat's clock offset, when beyond the skew
        self._lasting = Throttle()  # permission failures: said once per path

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._deleting:  # read segments still being deleted: a moment, then the janitor's
            _, late = await asyncio.wait(set(self._deleting), timeout=_CLOSE_GRACE)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    # ------------------------------------------------------------------- liveness

    async def forwarder_alive(self, *, refresh: bool = False) -> bool:
        """Whether a forwarder signed by the pinned key wrote a fresh heartbeat.

        The answer is cached for ``heartbeat_check`` seconds, and concurrent callers share
        one refresh.
        """
        if not refresh and self.clock() - self._alive_at < self.heartbeat_check:
            return self._alive
        async with self._alive_lock:
            if not refresh and self.clock() - self._alive_at < self.heartbeat_check:
                return self._alive  # refreshed while we waited for the lock
            return await self._read_heartbeats()

    async def _read_heartbeats(self) -> bool:
        """Alive if a heartbeat is; while the only candidates are *pending* (their clock
        is off from ours by more than ``stale_after``), look again after their interval
        until one moves or none can (see :class:`~wonders.relay.records.Liveness`)."""
        while True:
            now = self.clock()
            alive, pending = False, []
            self._off = None
            async for key in self.store.list(layout.HEARTBEATS):
                try:
                    beat = parse_heartbeat(
                        await self.store.get(key, max_bytes=layout.MAX_HEARTBEAT_BYTES),
                        self.forwarder)
                except (ObjectNotFound, UnsafeObject):
                    continue
                if beat is None:
                    continue
                verdict = self._liveness.judge(beat, now)
                if verdict == "alive":
                    alive = True
                    break
                if verdict == "pending":
                    pending.append(beat.interval)
                elif abs(now - beat.time) > self.stale_after + self._liveness.skew:
                    self._off = now - beat.time  # maybe alive, but the clocks disagree
            if alive or not pending:
                self._alive, self._alive_at = alive, now
                return alive
            await asyncio.sleep(min(min(pending), self.stale_after) / 2)  # its next beat

    async def _require_forwarder(self, refresh: bool = False) -> None:
        if not await self.forwarder_alive(refresh=refresh):
            if self._off is not None:
                direction = "behind" if self._off > 0 else "ahead of"
                raise NoForwarder(
                    f"the heartbeat of the forwarder on {self.store.url} is "
                    f"{abs(self._off):.0f} s {direction} this machine's clock, more than "
                    f"the {self._liveness.skew:.0f} s allowed: check the clocks (NTP) "
                    "on both sides"
                )
            raise NoForwarder(
                f"no forwarder is alive on {self.store.url}: no heartbeat signed by "
                f"{self.forwarder.name} ({self.forwarder.kid}) in the last "
                f"{self.stale_after:.0f} s; start one with 'wonders forward'"
            )

    # ------------------------------------------------------------------- polling

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="wonders-client-poll")
        if self._watcher is None:
            # filesystem events (directory mailbox) wake the poller at once
            self._watcher = watch(self.store, f"{layout.RESPONSES}{self.key.name}/",
                                  self._wake.set)

    async def _poll(self) -> None:
        prefix = f"{layout.RESPONSES}{self.key.name}/"
        failing = False
        while True:
            if not self._waiters:
                self._wake.clear()
                await self._wake.wait()
                self._backoff.reset()
            self._wake.clear()
            found: dict[str, set[str]] = {}
            try:
                async for key in self.store.list(prefix):
                    parsed = layout.parse_envelope_key(key)
                    if parsed is not None and parsed.request_id in self._waiters:
                        found.setdefault(parsed.request_id, set()).add(key)
                if failing:
                    log.warning("polling %s works again", prefix)
                failing = False
            except StoreError as exc:  # keep polling; waiters have their own deadlines
                if not failing:  # once per outage, not once per poll
                    log.warning("polling %s failed: %s; retrying", prefix, exc)
                failing = True
            changed = False
            for request_id, keys in found.items():
                waiter = self._waiters.get(request_id)
                if waiter is not None and not keys <= waiter.keys:
                    waiter.keys |= keys
                    waiter.changed.set()
                    changed = True
            interval = self._backoff.reset() if changed else self._backoff.next()
            await wait_event(self._wake, interval)

    async def _wait_for(self, waiter: _Waiter, key: str, deadline: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        while key not in waiter.keys:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RelayTimeout(f"no {what} for request {waiter.request_id} in time")
            waiter.changed.clear()
            if key in waiter.keys:
                break
            if not await wait_event(waiter.changed, min(remaining, self.heartbeat_check)):
                with contextlib.suppress(StoreError):  # unreachable for now: the deadline rules
                    await self._require_forwarder()

    async def _patiently(self, deadline: float, what: str, call: Callable[[], Awaitable[_T]],
                         ) -> _T:
        """``call()``, retried while the store fails (ObjectNotFound and ObjectExists are
        answers, not failures) until ``deadline`` (loop time): a mailbox briefly out of
        reach delays a request; for longer, the request times out (504). What the store
        refuses (an object too large, a planted link or FIFO) is an answer too. A
        permission failure is retried (someone may fix it) but logged once per path: its
        message says what to run."""
        loop = asyncio.get_running_loop()
        delay = 0.1
        while True:
            try:
                return await call()
            except (ObjectNotFound, ObjectExists, UnsafeObject):
                raise
            except StoreError as exc:
                left = deadline - loop.time()
                if left <= 0:
                    raise RelayTimeout(
                        f"the mailbox stayed out of reach while trying to {what}: {exc}"
                    ) from None
                if not isinstance(exc, StorePermissionError) or self._lasting(exc.path):
                    log.warning("could not %s, retrying: %s", what, exc)
                await asyncio.sleep(min(delay, left))  # the retry interval
                delay = min(delay * 2, 2.0)

    # ------------------------------------------------------------------- requests

    async def _put_body(self, sealed: Sealed, body: Body, deadline: float) -> None:
        assert sealed.body is not None
        index = 0

        async def put(data: bytes) -> None:
            nonlocal index
            key = layout.body_key("requests", self.key.name, sealed.id, index)
            await self._patiently(deadline, f"store {key}", lambda: self.store.put(key, data))
            index += 1

        buffer = bytearray()
        chunks: AsyncIterable[bytes] = _once(body) if isinstance(body, bytes) else body
        async for chunk in chunks:
            buffer += chunk
            while len(buffer) >= self.segment_size:
                await put(sealed.body.seal(bytes(buffer[: self.segment_size])))
                del buffer[: self.segment_size]
        if buffer:
            await put(sealed.body.seal(bytes(buffer)))
        await put(sealed.body.finish())

    async def request(
        self,
        method: str,
        url: str,
        headers: Headers = (),
        body: Body = b"",
        *,
        timeout: float = 300.0,  # noqa: ASYNC109 (a deadline for the answer, documented)
    ) -> RelayResponse:
        """Relay one request and return its verified response head.

        The body is read with :meth:`RelayResponse.iter_body` (or ``read``); close the
        response to delete it from the mailbox. Raises NoForwarder (503), RelayTimeout
        (504; also when the mailbox stays out of reach for ``timeout``: store failures
        are retried until then), EnvelopeError (a response that fails verification).
        """
        head = RequestHead(method, url, tuple(headers))
        loop = asyncio.get_running_loop()
        sending = loop.time() + timeout  # how long the store may be out of reach, sending
        await self._patiently(sending, "read the heartbeats", self._require_forwarder)
        now = self.clock()
        request_id = new_request_id(now)
        inline = isinstance(body, bytes) and len(body) <= self.inline_limit
        sealed = seal_request(
            head, request_id=request_id, sender=self.key, recipient=self.forwarder, now=now,
            lifetime=self.lifetime, body=body if inline and isinstance(body, bytes) else None,
        )
        waiter = _Waiter(request_id)
        self._waiters[request_id] = waiter
        head_key = layout.head_key("requests", self.key.name, request_id)
        try:
            if not inline:
                await self._put_body(sealed, body, sending)
            await self._patiently(sending, f"store {head_key}",
                                  lambda: self.store.put(head_key, sealed.data))
            self._ensure_poller()
            self._backoff.reset()
            self._wake.set()
            deadline = loop.time() + timeout
            response_head = layout.head_key("responses", self.key.name, request_id)
            await self._wait_for(waiter, response_head, deadline, "response")
            data = await _read(self._patiently(
                deadline, f"read {response_head}",
                lambda: self.store.get(response_head, max_bytes=layout.MAX_HEAD_BYTES)))
            opened = open_response(
                data, recipient=self.key, forwarder=self.forwarder, request=sealed,
                now=self.clock(),
            )
        except BaseException:
            self._waiters.pop(request_id, None)
            await self._discard(waiter, request=True)
            raise
        return RelayResponse(self, opened, waiter, timeout)

    def _delete_later(self, key: str, deadline: float) -> None:
        task = asyncio.create_task(self._delete_read(key, deadline))
        self._deleting.add(task)
        task.add_done_callback(self._deleting.discard)

    async def _delete_read(self, key: str, deadline: float) -> None:
        """Delete a segment that was read, again after a failure until ``deadline`` (loop
        time). Not only tidying: the deletion tells the forwarder the segment was read, and
        it stores no more of the response until the oldest unread one is gone, so one lost
        delete used to stall the download and then cut it (tests/relay/test_stalls.py)."""
        try:
            await self._patiently(deadline, f"delete {key}",
                                  functools.partial(self.store.delete, key))
        except (StoreError, RelayTimeout) as exc:  # the janitor is the backstop
            log.warning("could not delete %s, which the forwarder waits for: %s", key, exc)

    async def _discard(self, waiter: _Waiter, *, request: bool = False) -> None:
        """Delete what is left of an exchange: the response objects this client saw, and
        (after a failure) the request. Best effort: the janitor is the backstop."""
        keys = sorted(waiter.keys)
        try:
            if request:
                prefix = layout.envelope_prefix("requests", self.key.name, waiter.request_id)
                keys += [k async for k in self.store.list(prefix)
                         if layout.parse_envelope_key(k) is not None]  # only our own
            for key in keys:
                await self.store.delete(key)
        except StoreError as exc:
            log.warning("could not clean up request %s: %s", waiter.request_id, exc)


async def _read(reading: Awaitable[bytes]) -> bytes:
    """A response object's bytes; one the store refuses to read (too large, or not a
    file) is a malformed response, as one that fails to open is."""
    try:
        return await reading
    except UnsafeObject as exc:
        raise EnvelopeError("malformed", str(exc)) from None


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


class RelayResponse:
    """A verified response head; the body streams from :meth:`iter_body`.

    Each body segment is authenticated before it is yielded; if the stream ends badly
    (a failed segment or trailer, a truncated or aborted stream) ``iter_body`` raises
    after the last good segment, and the caller must abort, never end cleanly.
    """

    def __init__(
        self, client: RelayClient, opened: OpenedResponse, waiter: _Waiter, idle_timeout: float
    ) -> None:
        self._client = client
        self._opened = opened
        self._waiter = waiter
        self._idle_timeout = idle_timeout
        self._closed = False
        self.id = opened.id
        self.status = opened.head.status
        self.reason = opened.head.reason
        self.headers = opened.head.headers

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    async def iter_body(self) -> AsyncIterator[bytes]:
        if self._opened.body is not None:
            if self._opened.body:
                yield self._opened.body
            return
        opener: BodyOpener = self._opened.body_opener()
        client, name = self._client, self._client.key.name
        loop = asyncio.get_running_loop()
        index = 0
        while not opener.done:
            key = layout.body_key("responses", name, self.id, index)
            deadline = loop.time() + self._idle_timeout
            await client._wait_for(self._waiter, key, deadline, f"body segment {index}")
            plain = opener.feed(await _read(client._patiently(
                deadline, f"read {key}", functools.partial(
                    client.store.get, key, max_bytes=layout.MAX_SEGMENT_BYTES))))
            index += 1
            # Read segments go at once (in the background), so the response prefix the
            # poller lists holds only what is still to be read, however long the body.
            self._waiter.keys.discard(key)
            client._delete_later(key, loop.time() + self._idle_timeout)
            if plain:
                yield plain

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_body()])

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._client._waiters.pop(self.id, None)
            await self._client._discard(self._waiter)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
