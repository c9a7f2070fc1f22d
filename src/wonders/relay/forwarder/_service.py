"""The forwarder: claim, verify, decide, fetch, stream back.

Theory of operation:

* **Poll.** One LIST of ``requests/`` per interval (adaptive, see ``_polling``) finds
  request heads. Heads are started fairly: round-robin across clients, oldest first
  within a client, up to ``max_in_flight`` at once and up to each client's
  ``max_concurrent``; the rest wait in the mailbox until a slot frees (a concurrency cap
  schedules, it does not refuse).
* **Claim.** ``claims/<id>/0000`` is created create-only: among forwarders sharing the
  mailbox, one wins. A claim whose forwarder instance is gone (its heartbeat is stale or
  names another instance) is taken over by creating the next attempt, again create-only.
  A takeover re-executes only idempotent methods; a POST or PATCH gets a 502 that says it
  was not retried. Claims stay, with ``claims/<id>/done`` once answered, until the request
  can no longer open (``max_request_lifetime`` + skew), so a copied head is never
  executed twice. A janitor then deletes them, and whatever else outlived its expiry.
  Claims can be deleted by a mailbox writer, so the forwarder also keeps the ids it
  answered (memory, state file, rebuilt from its audit log) and refuses them as replays.
* **Intent.** Before the upstream sees a byte, ``claims/<id>/<attempt>.intent`` (signed,
  create-only) says what is about to be executed; whoever takes the request over, or
  this forwarder restarted, records a dead attempt from it (``forwarder-died``).
* **Open.** Only a request signed by the client whose mailbox holds it, under its own id,
  within its lifetime, is executed. Unauthenticated objects are deleted and logged; an
  authenticated but expired request is answered with an error, never executed.
* **Decide.** The policy (403, ``X-Wonders-Error: policy-denied``) and the limiter (429)
  run before any DNS lookup; the address guard runs in the resolver.
* **Fetch and stream.** The upstream body is sealed in segments as it arrives: a segment
  is flushed when full or at most ``flush_delay`` seconds after its oldest byte arrived
  (``stream_flush_delay`` for event streams), so a steady token stream flows. A body over
  the client's ``max_response_bytes`` ends with an error trailer. A response that ends
  within its delay and ``inline_limit`` goes inline in its head (see
  :mod:`wonders.relay.forwarder.segmenter`).
* **Audit.** Every attempt that got past its claim becomes one audit record (see
  :mod:`wonders.audit`); while too many records wait for a failing store, no new
  request is started.
* **Heartbeat** every ``heartbeat_interval`` seconds, signed; deleted on a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import secrets
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp

from wonders import __version__
from wonders.audit import (
    FORWARDER_DIED,
    AuditError,
    AuditWriter,
    Intent,
    is_credential,
    iso_time,
    parse_intent,
    redact_target,
)
from wonders.crypto import (
    MAX_INLINE,
    Headers,
    OpenedRequest,
    PrivateKey,
    ResponseHead,
    Sealed,
    open_request,
    request_id_time,
    seal_response,
)
from wonders.errors import (
    EnvelopeError,
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StorePermissionError,
    UnsafeObject,
    WondersError,
)
from wonders.mailbox import Backoff, OddKeys, Store, layout, wait_event, watch
from wonders.mailbox.layout import EnvelopeKey
from wonders.policy import ClientPolicy, Limiter, Policy, egress_bytes, header_bytes, parse_target
from wonders.relay.forwarder.claims import (
    Answered,
    Claimant,
    ClaimMachine,
    ClaimRules,
    Recheck,
    Won,
    drive,
)
from wonders.relay.forwarder.metrics import Metrics
from wonders.relay.forwarder.outcome import Counters, _log, _Outcome, _record
from wonders.relay.forwarder.segmenter import (
    Action,
    Finish,
    Refuse,
    Segment,
    Segmenter,
    Start,
    Whole,
    flush_delay_for,
)
from wonders.relay.forwarder.settings import ForwarderSettings
from wonders.relay.forwarder.state import ExecutedIds, state_paths
from wonders.relay.forwarder.upstream import (
    AddressDenied,
    ResponseHeadersTooLarge,
    Upstream,
    response_headers,
)
from wonders.relay.headers import strip_hop_by_hop
from wonders.relay.records import PING_HOST, Heartbeat, Liveness
from wonders.text import Throttle

__all__ = ["Forwarder", "ForwarderFailed", "ForwarderSettings"]

log = logging.getLogger("wonders.forwarder")

#: Keys a second the forwarder spends listing a backlog it already knows (one S3 page).
_LIST_RATE = 1000.0
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class ForwarderFailed(WondersError):
    """A part of the forwarder that must run for as long as it serves (the heartbeat, the
    janitor, the audit writer, the poll loop) stopped unexpectedly: the forwarder stopped
    rather than go on half working. ``wonders forward`` exits with status 1."""


class _ErrorReply(Exception):
    """Answer the client with a forwarder-made error response."""

    def __init__(self, status: int, code: str, message: str, extra: Headers = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra


class _NoRoom(Exception):
    """The client did not make room for the next segment in time: the response ends here
    (no error trailer can be stored without a free slot)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _ResponseWriter:
    """Seals and stores one response: inline, or a head followed by segments.

    Flow control: at most ``max_unread_segments`` (W) segments wait unread. Segment n >= W
    is stored only once segment n - W is gone (the client deletes each segment it read),
    polled with a backoff; a client that frees no slot for ``read_timeout`` (or past
    ``deadline``) ends the response with :class:`_NoRoom`."""

    def __init__(self, forwarder: Forwarder, request: OpenedRequest, client: str) -> None:
        self._fwd = forwarder
        self._request = request
        self._client = client
        self._sealed: Sealed | None = None
        self._index = 0
        self._gone = -1  # the highest segment index known read (and deleted) by the client
        #: Loop time after which no more waiting for room (the total timeout).
        self.deadline = float("inf")
        self.bytes = 0
        self.sha256: bytes | None = None

    @property
    def request_id(self) -> str:
        return self._request.id

    def _head_key(self) -> str:
        return layout.head_key("responses", self._client, self._request.id)

    async def _put_head(self, head: ResponseHead, body: bytes | None) -> Sealed:
        fwd = self._fwd
        sealed = seal_response(
            self._request, head, sender=fwd.key, now=fwd.clock(),
            lifetime=fwd.settings.response_lifetime, body=body,
        )
        # create-only: a takeover never writes over a response that already started
        await fwd.store.put(self._head_key(), sealed.data, create_only=True)
        return sealed

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

    async def _put(self, segment: bytes) -> None:
        await self._room(self._index)
        key = layout.body_key("responses", self._client, self._request.id, self._index)
        await self._fwd.store.put(key, segment)
        self._index += 1

    async def _room(self, index: int) -> None:
        """Wait until segment ``index`` may be stored: until segment ``index - W`` is gone.

        Meanwhile nothing reads the upstream (the pump waits here, the reader's queue is
        bounded), so TCP backpressure holds the server back."""
        settings = self._fwd.settings
        oldest = index - settings.max_unread_segments
        if oldest <= self._gone:
            return
        key = layout.body_key("responses", self._client, self._request.id, oldest)
        loop = asyncio.get_running_loop()
        until = min(loop.time() + settings.read_timeout, self.deadline)
        backoff = Backoff(0.005, 0.25, hold=0.0)
        while await self._fwd.store.exists(key):
            left = until - loop.time()
            if left <= 0:
                if until >= self.deadline:
                    raise _NoRoom("total-timeout", "the response took longer than "
                                  f"total_timeout ({settings.total_timeout:.0f} s)")
                raise _NoRoom("client-stopped-reading",
                              f"the client read no segment for {settings.read_timeout:.0f} s "
                              f"({settings.max_unread_segments} unread)")
            await asyncio.sleep(min(backoff.next(), left))  # a poll interval
        self._gone = oldest

    @property
    def started(self) -> bool:
        return self._sealed is not None

    @property
    def client(self) -> str:
        return self._client


def _error_head(status: int, code: str, message: str, extra: Headers = ()) -> tuple[
    ResponseHead, bytes
]:
    body = (message.rstrip() + "\n").encode()
    headers = (
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("X-Wonders-Error", code),
        *extra,
    )
    reasons = {400: "Bad Request", 403: "Forbidden", 414: "URI Too Long",
               429: "Too Many Requests", 431: "Request Header Fields Too Large",
               502: "Bad Gateway", 504: "Gateway Timeout"}
    return ResponseHead(status, reasons.get(status, ""), headers), body


class Forwarder:
    """The internet-side service. ``await run()`` until :meth:`stop` is called."""

    def __init__(
        self,
        store: Store,
        key: PrivateKey,
        policy: Policy,
        settings: ForwarderSettings | None = None,
        *,
        upstream_ca: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        audit_store: Store | None = None,
        audit_spool: Path | None = None,
        audit_keep_query: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        """``audit_store`` (default: the mailbox) holds the audit log; records that cannot
        be stored at shutdown go to ``audit_spool`` and are written at the next start.
        ``audit_keep_query`` records query values (credentials are redacted still).
        ``metrics`` (optional) counts every request for Prometheus. ``clock`` is the
        wall clock (Unix seconds: claims, envelopes, the audit log), ``monotonic`` the one
        durations and deadlines are measured with."""
        self.store = store
        self.key = key
        self.settings = settings or ForwarderSettings()
        self.clock = clock
        self.monotonic = monotonic
        self.instance = secrets.token_hex(8)
        self.started = clock()
        self.counters = Counters()
        self._policy = policy
        self._limiter = Limiter(policy, clock)
        self._upstream = Upstream(
            lambda: self._policy,
            extra_ca=Path(upstream_ca) if upstream_ca else None,
            connect_timeout=self.settings.connect_timeout,
            read_timeout=self.settings.read_timeout,
            total_timeout=self.settings.total_timeout,
        )
        self._backoff = Backoff(self.settings.poll_fast, self.settings.poll_slow)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._per_client: Counter[str] = Counter()
        self._recheck: dict[str, float] = {}  # claimed by others: when to look again
        self._backlog: dict[str, EnvelopeKey] = {}  # listed, not started yet
        self._listed_at = -float("inf")
        self._claimant = Claimant(self.settings.id, self.instance, key.public)
        self._claim_rules = ClaimRules(
            self.settings.stale_after, self.settings.recheck,
            Liveness(self.settings.stale_after, self.settings.skew, monotonic))
        #: Set once the first heartbeat is stored: from then on clients see this forwarder.
        self.ready = asyncio.Event()
        # Replay protection that does not trust the mailbox: the ids answered here until
        # they can no longer open, kept beside the spool and rebuilt from the audit log.
        horizon = self.settings.max_request_lifetime + 2 * self.settings.skew
        executed_file, tip_file = state_paths(audit_spool) if audit_spool else (None, None)
        self._executed = ExecutedIds(horizon, executed_file, clock)
        self.audit = AuditWriter(
            audit_store or store, key, self.settings.id, batch_records=self.settings.audit_batch,
            interval=self.settings.audit_interval, capacity=self.settings.audit_capacity,
            spool=audit_spool, clock=clock, tip_file=tip_file, mailbox=store,
            instance=self.instance, recent=horizon, on_record=self._executed.note,
        )
        self._keep_query = audit_keep_query
        self._blocked = False
        self._lasting = Throttle()  # permission failures and planted objects: said once
        self._failure: tuple[str, BaseException] | None = None
        #: Odd object names (not this protocol's keys), reported once each, left in place.
        self._odd = OddKeys(log)
        self.metrics = metrics
        if metrics is not None:
            metrics.watch(lambda: self.in_flight, lambda: self.audit.waiting,
                          lambda: float(self._blocked))

    # ---------------------------------------------------------------- lifecycle

    @property
    def policy(self) -> Policy:
        return self._policy

    def reload(self, policy: Policy) -> None:
        """Use a new policy from now on. A request in flight keeps the policy it started
        with (its decision, limits and redirects); the address guard, which runs at each
        connection, always applies the newest. Rate and budget counters carry over."""
        self._policy = policy
        self._limiter.update(policy)
        log.info("policy reloaded from %s (digest %s)", policy.source, policy.digest[:16])

    def stop(self) -> None:
        """Stop claiming; :meth:`run` finishes requests in flight (up to the grace period)."""
        self._stopping.set()
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._active)

    async def run(self) -> None:
        """Serve until :meth:`stop`; then finish in-flight work and clean up.

        Raises :class:`ForwarderFailed` if a background task (heartbeat, janitor, audit
        writer) or the poll loop ended unexpectedly: the forwarder then stops taking
        requests, finishes those in flight (up to the grace period) and cleans up, rather
        than go on half working (say, answering without an audit log, or unseen by clients
        without its heartbeat)."""
        await self.audit.open()
        background = [
            asyncio.create_task(self.audit.run(), name="audit writer"),
            asyncio.create_task(self._heartbeats(), name="heartbeat"),
            asyncio.create_task(self._janitor(), name="janitor"),
        ]
        for task in background:
            task.add_done_callback(self._background_ended)
        # filesystem events (directory mailbox) wake the poller at once; polling stays
        watcher = watch(self.store, layout.REQUESTS, self._wake.set)
        try:
            await self._write_heartbeat()
            self.ready.set()
            try:
                await self._poll()
            except Exception as failure:
                self._fail("poll loop", failure)
            await self._drain()
        finally:
            if watcher is not None:
                watcher.cancel()
            for task in background:
                task.remove_done_callback(self._background_ended)
                task.cancel()
            await asyncio.wait([*background, *([watcher] if watcher else [])])
            for task in background:  # one may have failed just before it was cancelled
                if not task.cancelled() and task.exception() is not None:
                    self._background_ended(task)
            try:
                await self.audit.close(self.settings.grace)
            except Exception as failure:  # its store failed in an unexpected way
                self._fail("audit writer", failure)
            finally:
                with contextlib.suppress(StoreError):
                    await self.store.delete(layout.heartbeat_key(self.settings.id))
                await self._upstream.close()
        if self._failure is not None:
            what, exc = self._failure
            raise ForwarderFailed(
                f"forwarder {self.settings.id} stopped: its {what} failed: "
                f"{type(exc).__name__}: {exc}") from exc

    def _background_ended(self, task: asyncio.Task[None]) -> None:
        """A background task ended while the forwarder runs: that is always a failure."""
        if task.cancelled():
            exc: BaseException = RuntimeError("cancelled")
        else:
            exc = task.exception() or RuntimeError("returned")
        self._fail(task.get_name(), exc)

    def _fail(self, what: str, exc: BaseException) -> None:
        """Stop, loudly: one error line naming the part and the exception."""
        if self._failure is None:
            self._failure = (what, exc)
            log.error("%s failed: %s: %s; stopping the forwarder", what, type(exc).__name__,
                      exc)
            log.debug("%s failed", what, exc_info=exc)
        self.stop()

    async def _drain(self) -> None:
        tasks = list(self._active.values())
        if not tasks:
            return
        log.info("stopping: waiting up to %.0f s for %d requests", self.settings.grace, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=self.settings.grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(self.settings.janitor_interval)
            try:
                removed = await self.sweep()
            except StoreError as exc:
                log.warning("janitor: %s", exc)
                continue
            if removed:
                log.info("janitor removed %d expired objects", removed)

    async def sweep(self) -> int:
        """Delete what outlived its expiry: claims of requests that can no longer open,
        unclaimed requests and unread responses. Returns how many objects went.

        Only this protocol's own keys are deleted; any other object (a name someone made
        up) is logged once and left in place."""
        now = self.clock()
        horizon = self.settings.max_request_lifetime + self.settings.skew
        unread = horizon + self.settings.response_lifetime
        removed = 0
        for prefix, limit in ((layout.CLAIMS, horizon), (layout.REQUESTS, horizon),
                              (layout.RESPONSES, unread)):
            keys = [k async for k in self.store.list(prefix)]
            for key in keys:
                request_id = self._own_request_id(key)
                if request_id is None:
                    continue
                try:
                    age = now - request_id_time(request_id)
                except ValueError:
                    continue
                if age > limit and request_id not in self._active:
                    await self.store.delete(key)
                    removed += 1
        return removed

    def _own_request_id(self, key: str) -> str | None:
        """The request id of a claim or envelope key; None (reported once) for others."""
        if key.startswith(layout.CLAIMS):
            claim = layout.parse_claims_key(key)  # claims, intents and done markers
            if claim is not None:
                return claim[0]
        else:
            parsed = layout.parse_envelope_key(key)
            if parsed is not None:
                return parsed.request_id
        self._odd.report(key, "not a wonders object key")
        return None

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                await self._write_heartbeat()
            except StoreError as exc:
                if not isinstance(exc, StorePermissionError) or self._lasting(exc.path):
                    log.warning("heartbeat not written: %s", exc)

    def heartbeat(self) -> Heartbeat:
        return Heartbeat(
            forwarder=self.settings.id, instance=self.instance, kid=self.key.kid,
            version=__version__, started=self.started, time=self.clock(),
            interval=self.settings.heartbeat_interval, in_flight=self.in_flight,
            policy=self._policy.digest, counters=self.counters.as_dict(),
            audit=self.audit.state().as_dict(),
        )

    async def _write_heartbeat(self) -> None:
        await self.store.put(layout.heartbeat_key(self.settings.id),
                             self.heartbeat().sign(self.key))

    # ------------------------------------------------------------------- polling

    async def _poll(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            if self._audit_full():
                await wait_event(self._stopping, self._backoff.next())
                continue
            # A backlog already listed is worked through from memory, and listed again
            # only after len(backlog) / _LIST_RATE seconds: listing costs stay linear in
            # the number of requests, however deep the backlog.
            now = time.monotonic()
            due = self._listed_at + max(self.settings.poll_fast, len(self._backlog) / _LIST_RATE)
            if not self._backlog or now >= due:
                try:
                    heads = [p async for p in self._list_heads()]
                except StoreError as exc:
                    if not isinstance(exc, StorePermissionError | UnsafeObject) \
                            or self._lasting(str(exc)):
                        log.warning("polling failed: %s", exc)
                    await wait_event(self._stopping, self._backoff.next())
                    continue
                self._backlog = {p.request_id: p for p in heads
                                 if p.request_id not in self._active}
                self._listed_at = now
                if self.metrics is not None:
                    self.metrics.pending.set(len(heads))
            started = 0
            for parsed in _fair(list(self._backlog.values())):
                if self.in_flight >= self.settings.max_in_flight:
                    break
                rid, client = parsed.request_id, parsed.client
                if rid in self._active or self._recheck.get(rid, 0.0) > self.clock():
                    continue
                entry = self._policy.clients.get(client)
                cap = entry.max_concurrent if entry else None
                if cap is not None and self._per_client[client] >= cap:
                    continue  # waits in the mailbox for one of this client's slots
                task = asyncio.create_task(self._start(parsed), name=f"wonders-request-{rid}")
                self._active[rid] = task
                self._per_client[client] += 1
                task.add_done_callback(functools.partial(self._finished, rid, client))
                started += 1
                del self._backlog[rid]
            interval = self._backoff.reset() if started or self._active else self._backoff.next()
            await wait_event(self._wake, interval)

    def _audit_full(self) -> bool:
        """Fail closed: no new request while the audit log cannot keep up."""
        full = self.audit.full
        if full and not self._blocked:
            log.error("audit: %d records wait for the audit store (%s); taking no new "
                      "requests until they are stored", self.audit.waiting,
                      self.audit.state().failing or "not yet written")
        elif self._blocked and not full:
            log.warning("audit: records are being stored again; taking requests")
        self._blocked = full
        return full

    def _finished(self, request_id: str, client: str, _task: object = None) -> None:
        self._active.pop(request_id, None)
        self._per_client[client] -= 1
        if self._per_client[client] <= 0:
            del self._per_client[client]
        self._wake.set()

    async def _list_heads(self) -> AsyncIterator[EnvelopeKey]:
        """Request heads waiting. Anything else under ``requests/`` that is not a body
        segment is reported once and left in place: a client may write anything into its
        own prefix, and nothing it writes may stop (or steer) the forwarder."""
        async for key in self.store.list(layout.REQUESTS):
            parsed = layout.parse_envelope_key(key)
            if parsed is None:
                self._odd.report(key, "not a wonders request key")
            elif parsed.index is None:
                yield parsed

    # -------------------------------------------------------------------- claims

    async def _start(self, parsed: EnvelopeKey) -> None:
        client, rid = parsed.client, parsed.request_id
        # The head is read while the claim is made: one round trip less before the
        # request goes out (a lost race costs one GET).
        head = asyncio.create_task(self.store.get(layout.head_key("requests", client, rid),
                                                  max_bytes=layout.MAX_HEAD_BYTES))
        try:
            attempt = await self._claim(client, rid)
            if attempt is None:
                return
            self._recheck.pop(rid, None)
            await self._handle(client, rid, attempt, head)
        except (StorePermissionError, UnsafeObject) as exc:
            # Retrying every second cannot help until someone fixes the permissions or
            # removes what was planted: say so once (the message has the fix), and look
            # again now and then.
            if self._lasting(exc.path if isinstance(exc, StorePermissionError) else str(exc)):
                log.error("request %s from %s: %s", rid, client, exc)
            self._recheck[rid] = self.clock() + self.settings.stale_after
        except StoreError as exc:
            log.warning("request %s from %s: store error: %s", rid, client, exc)
            self._recheck[rid] = self.clock() + 1.0
        except Exception:
            log.exception("request %s from %s: unexpected error", rid, client)
            self._recheck[rid] = self.clock() + self.settings.stale_after
        finally:
            if not head.done():
                head.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreError):
                await head  # retrieved: no "exception never retrieved" warning

    async def _claim(self, client: str, rid: str) -> int | None:
        """The attempt this instance won, or None if another forwarder holds the request
        (see :mod:`.claims`)."""
        machine = ClaimMachine(rid, self._claimant, self._claim_rules,
                               rechecking=rid in self._recheck)
        match await drive(machine, self.store, self.clock):
            case Recheck(at):
                self._recheck[rid] = at
            case Answered():
                await self._delete_request(client, rid)  # only leftovers remain
            case Won(attempt, took_over, complete):
                if took_over:
                    log.info("request %s: took over a stale claim (attempt %d)", rid, attempt)
                if complete is not None:
                    await self._complete(rid, complete)
                return attempt
        return None

    async def _complete(self, rid: str, attempt: int) -> None:
        """Record attempt ``attempt`` (taken over here) if its forwarder died after storing
        its intent, when the upstream may have seen it, and before recording it."""
        if attempt < 0 or (rid, attempt) in self.audit.completed:
            return
        key = layout.intent_key(rid, attempt)
        try:
            intent = parse_intent(
                await self.store.get(key, max_bytes=layout.MAX_INTENT_BYTES), self.key.public)
        except ObjectNotFound:
            return  # it stopped before anything could go upstream
        except (StoreError, AuditError) as exc:
            log.warning("request %s: the intent of attempt %d is unusable (%s); "
                        "'wonders audit verify' will report it", rid, attempt, exc)
            return
        if (intent.id, intent.attempt) != (rid, attempt) or intent.instance == self.instance:
            return
        self.audit.completed.add((rid, attempt))
        self.audit.add(intent.completion(self.settings.id, self.clock()))
        log.warning("request %s: attempt %d by forwarder %s died after it was about to be "
                    "executed; recorded as %s", rid, attempt, intent.forwarder, FORWARDER_DIED)

    # ------------------------------------------------------------------ requests

    async def _handle(self, client: str, rid: str, attempt: int,
                      fetched: asyncio.Task[bytes]) -> None:
        started = time.monotonic()
        claimed = self.clock()
        outcome = _Outcome()
        opened: OpenedRequest | None = None
        try:
            opened = await self._open(client, rid, outcome, fetched)
            if opened is None:
                return
            if not await self._admit(client, rid, attempt, opened, outcome):
                return
            writer = _ResponseWriter(self, opened, client)
            try:
                await self._serve(client, opened, attempt, writer, outcome)
            except _ErrorReply as reply:
                outcome.status, outcome.error = reply.status, reply.code
                if not writer.started:
                    head, body = _error_head(reply.status, reply.code, reply.message, reply.extra)
                    with contextlib.suppress(ObjectExists):
                        await writer.whole(head, body)
            outcome.bytes_down = writer.bytes
            outcome.response_sha256 = writer.sha256
            with contextlib.suppress(ObjectExists):
                await self.store.put(layout.done_key(rid), b"", create_only=True)
            self._executed.add(rid, opened.expires + 2 * self.settings.skew)
            await self._delete_request(client, rid, streamed=opened.body is None)
        except StoreError as exc:
            outcome.error = outcome.error or f"store: {exc}"
            raise
        finally:
            _log(self, client, rid, opened, outcome, started)
            if not outcome.nothing or outcome.intent:
                record = _record(self, client, rid, attempt, opened, outcome, claimed, started)
                self.audit.add(record)
                if self.metrics is not None:
                    self.metrics.observe(record)

    async def _open(self, client: str, rid: str, outcome: _Outcome,
                    fetched: asyncio.Task[bytes]) -> OpenedRequest | None:
        """The verified request (its head read by ``fetched``), or None once an unusable
        one has been dealt with."""
        entry = self._policy.clients.get(client)
        try:
            data = await fetched
        except ObjectNotFound:
            outcome.nothing = True
            return None
        except UnsafeObject as exc:  # too large, or not a file: unauthenticated junk
            self.counters.rejected += 1
            outcome.decision, outcome.error = "rejected", "malformed"
            log.warning("request %s in %s's mailbox removed: %s", rid, client, exc)
            await self._delete_request(client, rid)
            return None
        kwargs = dict(recipient=self.key, senders=self._policy.sender, now=self.clock(),
                      skew=self.settings.skew, expected_id=rid,
                      expected_sender=entry.bundle.kid if entry else "")
        try:
            opened = open_request(data, **kwargs)  # type: ignore[arg-type]
        except EnvelopeError as exc:
            self.counters.rejected += 1
            outcome.decision, outcome.error = "rejected", exc.reason
            if exc.reason in ("expired", "not-yet-valid"):
                late = open_request(data, **kwargs, check_time=False)  # type: ignore[arg-type]
                log.warning("request %s from %s refused: %s", rid, client, exc)
                status = 504 if exc.reason == "expired" else 400
                outcome.status = status
                hint = ("it waited longer than its lifetime for a forwarder"
                        if exc.reason == "expired" else "check the clocks of both sides")
                await self._refuse(late, client, status, "request-" + exc.reason,
                                   f"wonders: request refused: {exc.message}; {hint}")
            else:
                log.warning("request %s in %s's mailbox removed: %s", rid, client, exc)
            await self._delete_request(client, rid)
            return None
        longest = self.settings.max_request_lifetime
        if opened.expires - opened.issued > longest:
            self.counters.rejected += 1
            outcome.decision, outcome.error, outcome.status = "rejected", "request-lifetime", 400
            await self._refuse(
                opened, client, 400, "request-lifetime",
                f"wonders: request refused: it asks to stay valid for "
                f"{opened.expires - opened.issued:.0f} s; this forwarder accepts {longest:.0f} s",
            )
            await self._delete_request(client, rid)
            return None
        return opened

    async def _admit(self, client: str, rid: str, attempt: int, request: OpenedRequest,
                     outcome: _Outcome) -> bool:
        """Whether this opened request may go on to be served: not a replay. If it may go
        upstream, its intent is stored first (create-only, beside its claim), so that
        nothing is executed unaudited even if this process is killed: a forwarder taking
        the request over, or this one restarted, records it; an intent already there for
        this attempt means the claims were deleted and the head copied back."""
        if rid in self._executed and attempt == 0:
            # executed here, and its claims are gone: copied back. (A later attempt is a
            # takeover of this forwarder's own unfinished one: _serve never runs a POST
            # again, and re-runs an idempotent method as any takeover does.)
            return await self._replayed(client, rid, request, outcome,
                                        "this forwarder ran it already")
        method, url = request.head.method, request.head.url
        size = len(request.body) if request.body is not None else None
        now = self.clock()
        decision = self._policy.decide(client, method, url, now=now, request_bytes=size)
        parts = urlsplit(url)
        if parts.hostname == PING_HOST or not decision.allowed:
            return True  # nothing goes upstream
        intent = Intent(
            self.settings.id, self.instance, rid, attempt, client, iso_time(now), method,
            parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
            redact_target(url, keep_query=self._keep_query), decision.action,
            decision.rule or None,
        )
        data = intent.sign(self.key)
        key = layout.intent_key(rid, attempt)
        try:
            await self.store.put(key, data, create_only=True)
        except ObjectExists:
            if await self.store.get(key, max_bytes=layout.MAX_INTENT_BYTES) != data:
                return await self._replayed(client, rid, request, outcome,
                                            f"attempt {attempt} has an intent already ({key})")
        outcome.intent = True
        # executed from here on, whatever happens to its done marker or its head later
        self._executed.add(rid, request.expires + 2 * self.settings.skew)
        return True

    async def _replayed(self, client: str, rid: str, request: OpenedRequest,
                        outcome: _Outcome, why: str) -> bool:
        """Refuse a request executed before, whose head came back: audited, not answered
        (its client had its answer), and removed."""
        self.counters.rejected += 1
        outcome.decision, outcome.error = "rejected", "replay"
        log.warning("request %s from %s refused as a replay: %s", rid, client, why)
        with contextlib.suppress(ObjectExists):
            await self.store.put(layout.done_key(rid), b"", create_only=True)
        await self._delete_request(client, rid, streamed=request.body is None)
        return False

    async def _refuse(self, request: OpenedRequest, client: str, status: int, code: str,
                      message: str) -> None:
        """Answer an authenticated request that will not be executed; mark it done."""
        head, body = _error_head(status, code, message)
        with contextlib.suppress(ObjectExists):
            await _ResponseWriter(self, request, client).whole(head, body)
        with contextlib.suppress(ObjectExists):
            await self.store.put(layout.done_key(request.id), b"", create_only=True)

    async def _serve(
        self, client: str, request: OpenedRequest, attempt: int, writer: _ResponseWriter,
        outcome: _Outcome,
    ) -> None:
        method, url = request.head.method, request.head.url
        self.counters.requests += 1
        answered = layout.head_key("responses", client, request.id)
        if attempt > 0 and await self.store.exists(answered):
            outcome.error, outcome.nothing = "already-answered", True
            return  # the previous attempt began answering: nothing can be added to that
        if attempt > 0 and method not in IDEMPOTENT:
            raise _ErrorReply(502, "not-retried",
                              f"wonders: the forwarder handling this {method} stopped before "
                              "answering; it may or may not have reached the server, so it was "
                              "not sent again")
        policy = self._policy  # this request's policy, whatever a reload does meanwhile
        entry = policy.clients.get(client)
        if entry is None:
            raise _ErrorReply(403, "policy-denied",
                              f"wonders: client {client!r} is no longer in the policy")
        if urlsplit(url).hostname == PING_HOST:
            await self._pong(request, writer, outcome)
            return
        self._check_sizes(entry, request, outcome)
        size = len(request.body) if request.body is not None else None
        # What is decided is what is fetched and audited: the URL with its host normalised
        # (Unicode dots, fullwidth digits, case, literal spellings); decide() denies a URL
        # that cannot be normalised.
        with contextlib.suppress(ValueError):
            url = outcome.url = parse_target(url).url
        decision = policy.decide(client, method, url, now=self.clock(), request_bytes=size)
        outcome.decision, outcome.rule = decision.action, decision.rule
        if not decision.allowed:
            self.counters.denied += 1
            raise _ErrorReply(403, "policy-denied",
                              f"wonders: denied by policy ({decision.rule}): {decision.reason}")
        if decision.action == "report":
            log.info("request %s from %s: %s", request.id, client, decision)
        sent = egress_bytes(method, url, request.head.headers, size or 0)
        admitted = self._limiter.admit(client, sent)
        if not admitted.allowed:
            self.counters.denied += 1
            outcome.decision, outcome.rule = "deny", admitted.rule
            retry = f"{max(1, round(admitted.retry_after or 1))}"
            raise _ErrorReply(429, "rate-limited", f"wonders: {admitted.reason}",
                              (("Retry-After", retry),))
        try:
            self.counters.allowed += 1
            await self._fetch(client, policy, request, url, writer, outcome)
        finally:
            self._limiter.release(client)

    def _check_sizes(self, entry: ClientPolicy, request: OpenedRequest,
                     outcome: _Outcome) -> None:
        """The client's caps on URL length and header bytes, before anything is sent (in
        either mode: they bound what any request may make the forwarder send)."""
        url, who = request.head.url, f"client {entry.name}"
        cap = entry.max_url_length
        if cap is not None and len(url) > cap:
            self.counters.denied += 1
            outcome.decision, outcome.rule = "deny", f"{who}: max_url_length {cap}"
            raise _ErrorReply(414, "url-too-long",
                              f"wonders: the URL is {len(url)} characters long, over the "
                              f"max_url_length of {cap} for {entry.name}")
        cap, size = entry.max_header_bytes, header_bytes(request.head.headers)
        if cap is not None and size > cap:
            self.counters.denied += 1
            outcome.decision, outcome.rule = "deny", f"{who}: max_header_bytes {cap}"
            raise _ErrorReply(431, "request-headers-too-large",
                              f"wonders: the request headers take {size} bytes, over the "
                              f"max_header_bytes of {cap} for {entry.name}")

    async def _pong(self, request: OpenedRequest, writer: _ResponseWriter,
                    outcome: _Outcome) -> None:
        """Answer ``wonders ping`` here: no upstream, no DNS; only the client's
        ``not_before``/``not_after`` window of the policy applies."""
        client = writer.client
        window = self._policy.window(client, now=self.clock())
        if not window.allowed:
            self.counters.denied += 1
            outcome.decision, outcome.rule = "deny", window.rule
            raise _ErrorReply(403, "policy-denied",
                              f"wonders: denied by policy ({window.rule}): {window.reason}")
        body = json.dumps({
            "forwarder": self.settings.id, "instance": self.instance, "version": __version__,
            "time": self.clock(), "in_flight": self.in_flight, "request": request.id,
        }).encode()
        outcome.decision, outcome.rule, outcome.status = "allow", "ping (answered here)", 200
        await writer.whole(ResponseHead(200, "OK", (
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))))), body)

    async def _fetch(
        self, client: str, policy: Policy, request: OpenedRequest, url: str,
        writer: _ResponseWriter, outcome: _Outcome,
    ) -> None:
        entry = policy.clients[client]
        headers = strip_hop_by_hop(request.head.headers)
        host = urlsplit(request.head.url).netloc.rpartition("@")[2]
        given = [v for k, v in headers if k.lower() == "host"]
        if given and any(v.lower() != host.lower() for v in given):
            raise _ErrorReply(400, "host-mismatch",
                              f"wonders: the Host header {given[0]!r} differs from the URL's "
                              f"host {host!r}; refusing an ambiguous request")
        headers = tuple((k, v) for k, v in headers if k.lower() != "host")
        body: bytes | AsyncIterator[bytes] | None = (
            request.body if request.body is not None
            else self._request_body(client, request, entry.max_request_bytes, outcome)
        )
        if request.body is not None:
            outcome.bytes_up = len(request.body)
            outcome.request_sha256 = hashlib.sha256(request.body).digest()
        began = time.monotonic()
        try:
            await self._hops(client, policy, request, url, writer, outcome, headers, body)
        finally:
            outcome.upstream_seconds = time.monotonic() - began

    async def _hops(
        self, client: str, policy: Policy, request: OpenedRequest, url: str,
        writer: _ResponseWriter, outcome: _Outcome, headers: Headers,
        body: bytes | AsyncIterator[bytes] | None,
    ) -> None:
        entry = policy.clients[client]
        method = request.head.method
        for hop in range(self.settings.max_redirects + 1):
            where = urlsplit(url).netloc
            try:
                response = await self._upstream.request(client, method, url, headers, body)
            except (AddressDenied, aiohttp.ClientConnectorError) as exc:
                # a literal is guarded before aiohttp sees it, a name in the resolver
                cause = exc if isinstance(exc, AddressDenied) else exc.os_error
                if isinstance(cause, AddressDenied):
                    self.counters.denied += 1
                    outcome.decision, outcome.rule = "deny", cause.decision.rule
                    raise _ErrorReply(403, "policy-denied",
                                      f"wonders: denied by policy ({cause.decision.rule}): "
                                      f"{cause.decision.reason}") from None
                self.counters.errors += 1
                raise _ErrorReply(502, "upstream-unreachable",
                                  f"wonders: cannot connect to {where}: {cause}") from None
            except (TimeoutError, aiohttp.ServerTimeoutError):
                self.counters.errors += 1
                raise _ErrorReply(504, "upstream-timeout",
                                  f"wonders: {where} did not answer in time") from None
            except ResponseHeadersTooLarge as exc:
                self.counters.errors += 1
                raise _ErrorReply(502, "response-headers-too-large",
                                  f"wonders: the response headers of {where} are over the "
                                  f"forwarder's limits: {exc}") from None
            except aiohttp.ClientError as exc:
                self.counters.errors += 1
                raise _ErrorReply(502, "upstream-error",
                                  f"wonders: request to {where} failed: {exc}") from None
            async with response:
                target = self._redirect(client, policy, response, url, hop)
                if target is not None:
                    if parse_target(target[1]).origin != parse_target(url).origin:
                        # another scheme, host or port: the credentials stay with their origin
                        headers = tuple((k, v) for k, v in headers if not is_credential(k))
                    # the next hop sends its URL and headers out again: charge them
                    charged = self._limiter.charge(client, egress_bytes(target[0], target[1],
                                                                        headers))
                    if not charged.allowed:
                        log.info("redirect to %s returned to %s: %s", target[1], client,
                                 charged.reason)
                        target = None
                if target is None:
                    await self._relay(client, entry.max_response_bytes, response, writer,
                                      outcome)
                    return
                method, url, body = target
                hop_url = urlsplit(url)
                outcome.redirects.append(f"{hop_url.scheme}://{hop_url.netloc.rpartition('@')[2]}"
                                         f"{redact_target(url, keep_query=self._keep_query)}")
        raise AssertionError("unreachable: the last hop is always relayed")

    def _redirect(
        self, client: str, policy: Policy, response: aiohttp.ClientResponse, url: str, hop: int
    ) -> tuple[str, str, bytes | None] | None:
        """Where to go next (the URL normalised), if this redirect is to be followed here:
        allowed by the policy, and not from https down to http."""
        location = response.headers.get("Location")
        follow = policy.clients[client].follow_redirects
        if not (follow and response.status in _REDIRECTS and location):
            return None
        if hop >= self.settings.max_redirects:
            return None
        target = urljoin(url, location)
        decision = policy.decide(client, "GET", target, now=self.clock())
        if not decision.allowed:
            log.info("redirect to %s returned to %s: %s", target, client, decision)
            return None
        next_url = parse_target(target)  # decide() allowed it: it parses
        if urlsplit(url).scheme == "https" and next_url.scheme != "https":
            log.info("redirect from https to %s returned to %s", target, client)
            return None
        return "GET", next_url.url, None

    async def _relay(
        self, client: str, limit: int | None, response: aiohttp.ClientResponse,
        writer: _ResponseWriter, outcome: _Outcome,
    ) -> None:
        """Seal and store the upstream response as it arrives."""
        outcome.status = response.status
        head = ResponseHead(response.status, response.reason or "",
                            response_headers(response.raw_headers))
        outcome.response_headers = head.headers
        settings = self.settings
        queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=4)

        async def read() -> None:
            try:
                async for chunk in response.content.iter_any():
                    await queue.put(chunk)
                await queue.put(None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                await queue.put(exc)

        reader = asyncio.create_task(read())
        loop = asyncio.get_running_loop()
        writer.deadline = loop.time() + settings.total_timeout
        segmenter = Segmenter(
            now=loop.time(), segment_size=settings.segment_size,
            inline_limit=min(settings.inline_limit, MAX_INLINE), limit=limit,
            delay=flush_delay_for(head.headers, bulk=settings.flush_delay,
                                  stream=settings.stream_flush_delay),
            limit_message=f"response body over {limit} bytes (max_response_bytes of "
                          f"client {client}); cut here",
        )
        try:
            while not segmenter.done:
                deadline = segmenter.deadline()
                wait = None if deadline is None else max(0.0, deadline - loop.time())
                try:
                    item = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    await self._act(writer, head, segmenter.tick(loop.time()))
                    continue
                if item is None:
                    actions = segmenter.end()
                elif isinstance(item, BaseException):
                    self.counters.errors += 1
                    actions = segmenter.fail(f"the upstream response broke off: {item}")
                    if not actions:  # nothing stored yet: answer with an error instead
                        if isinstance(item, TimeoutError):
                            raise _ErrorReply(504, "upstream-timeout",
                                              "wonders: the upstream server stopped sending")
                        raise _ErrorReply(502, "upstream-error",
                                          f"wonders: the upstream response broke off: {item}")
                    outcome.error = "upstream-broke"
                else:
                    actions = segmenter.feed(item, loop.time())
                    if segmenter.cut:
                        outcome.error = "response-too-large"
                await self._act(writer, head, actions)
        except _NoRoom as stopped:
            # No free slot, so no error trailer: the client sees a truncated body (if it
            # ever reads again); what is stored is left to the janitor.
            log.warning("response %s to %s ended: %s", writer.request_id, client, stopped)
            outcome.error = stopped.code
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self.counters.bytes_down += segmenter.total

    @staticmethod
    async def _act(writer: _ResponseWriter, head: ResponseHead, actions: list[Action]) -> None:
        """Carry out what the segmenter decided, in order."""
        for action in actions:
            match action:
                case Start():
                    await writer.start(head)
                case Segment(data):
                    await writer.segment(data)
                case Whole(data):
                    await writer.whole(head, data)
                case Finish(error):
                    await writer.finish(error)
                case Refuse(message):
                    raise _ErrorReply(502, "response-too-large", f"wonders: {message}")

    async def _request_body(
        self, client: str, request: OpenedRequest, limit: int | None, outcome: _Outcome
    ) -> AsyncIterator[bytes]:
        """A streamed request body, verified segment by segment as aiohttp sends it."""
        opener = request.body_opener()
        total = index = 0
        while not opener.done:
            key = layout.body_key("requests", client, request.id, index)
            try:
                plain = opener.feed(await self.store.get(key, max_bytes=layout.MAX_SEGMENT_BYTES))
            except ObjectNotFound:
                opener.close()  # raises truncated
                raise
            except UnsafeObject as exc:
                raise EnvelopeError("malformed", str(exc)) from None
            index += 1
            total += len(plain)
            if limit is not None and total > limit:
                raise EnvelopeError("incomplete", f"request body over {limit} bytes")
            charged = self._limiter.charge(client, len(plain))
            if not charged.allowed:
                raise EnvelopeError("incomplete", charged.reason)
            self.counters.bytes_up += len(plain)
            outcome.bytes_up += len(plain)
            if plain:
                yield plain
        assert opener.trailer is not None
        outcome.request_sha256 = opener.trailer.sha256

    # ------------------------------------------------------------------- cleanup

    async def _delete_request(self, client: str, rid: str, *, streamed: bool = True) -> None:
        """Delete a request's objects (an inline one is just its head); its claims stay
        until the janitor's turn."""
        if streamed:
            prefix = layout.envelope_prefix("requests", client, rid)
            keys = [k async for k in self.store.list(prefix)
                    if layout.parse_envelope_key(k) is not None]
        else:
            keys = [layout.head_key("requests", client, rid)]
        for key in keys:
            await self.store.delete(key)


def _fair(heads: list[EnvelopeKey]) -> list[EnvelopeKey]:
    """Round-robin across clients, oldest first within each client."""
    queues: dict[str, deque[EnvelopeKey]] = defaultdict(deque)
    for parsed in sorted(heads, key=lambda p: p.request_id):
        queues[parsed.client].append(parsed)
    order: list[EnvelopeKey] = []
    while queues:
        for client in list(queues):
            order.append(queues[client].popleft())
            if not queues[client]:
                del queues[client]
    return order

