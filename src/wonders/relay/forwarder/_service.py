"""The forwarder: claim, verify, decide, fetch, stream back.

Theory of operation (each step names the module that owns it):

* **Poll** (this module). One LIST of ``requests/`` per interval (adaptive, see
  ``_polling``) finds request heads. Heads are started fairly: round-robin across
  clients, oldest first within a client, up to ``max_in_flight`` at once and up to each
  client's ``max_concurrent``; the rest wait in the mailbox until a slot frees (a
  concurrency cap schedules, it does not refuse).
* **Claim** (:mod:`.claims`, a sans-I/O state machine). ``claims/<id>/0000`` is created
  create-only: among forwarders sharing the mailbox, one wins. A claim whose forwarder
  instance is gone (its heartbeat is stale or names another instance) is taken over by
  creating the next attempt, again create-only. A takeover re-executes only idempotent
  methods; a POST or PATCH gets a 502 that says it was not retried. Claims stay, with
  ``claims/<id>/done`` once answered, until the request can no longer open
  (``max_request_lifetime`` + skew), so a copied head is never executed twice. A janitor
  (this module) then deletes them, and whatever else outlived its expiry. Claims can be
  deleted by a mailbox writer, so the forwarder also keeps the ids it answered (memory,
  state file, rebuilt from its audit log: :mod:`.state`) and refuses them as replays.
* **Intent** (:mod:`.exchange`). Before the upstream sees a byte,
  ``claims/<id>/<attempt>.intent`` (signed, create-only) says what is about to be
  executed; whoever takes the request over, or this forwarder restarted, records a dead
  attempt from it (``forwarder-died``, this module).
* **Open** (:mod:`.exchange`). Only a request signed by the client whose mailbox holds
  it, under its own id, within its lifetime, is executed. Unauthenticated objects are
  deleted and logged; an authenticated but expired request is answered with an error,
  never executed.
* **Decide** (:mod:`.exchange`). The policy (403, ``X-Wonders-Error: policy-denied``) and
  the limiter (429) run before any DNS lookup; the address guard runs in the resolver of
  the upstream adapter (:mod:`.upstream`, behind the seam of :mod:`.seam`).
* **Fetch and stream** (:mod:`.exchange`, :mod:`.pump`, :mod:`.writer`). The upstream
  body is sealed in segments as it arrives: a segment is flushed when full or at most
  ``flush_delay`` seconds after its oldest byte arrived (``stream_flush_delay`` for event
  streams), so a steady token stream flows. A body over the client's
  ``max_response_bytes`` ends with an error trailer. A response that ends within its
  delay and ``inline_limit`` goes inline in its head (see :mod:`.segmenter`). At most
  ``max_unread_segments`` wait unread; the next is stored once the client read one
  (see :mod:`.flow`).
* **Audit** (:mod:`.outcome`). Every attempt that got past its claim becomes one audit
  record (see :mod:`wonders.audit`); while too many records wait for a failing store, no
  new request is started (this module).
* **Heartbeat** (this module) every ``heartbeat_interval`` seconds, signed; deleted on a
  clean stop.

Time is injected: the forwarder's wall ``clock`` and ``monotonic`` clock are passed to
the parts that decide; only this module's loops (and the writer's and pump's waits)
sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections import Counter, defaultdict, deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from wonders import __version__
from wonders.audit import FORWARDER_DIED, AuditError, AuditWriter, parse_intent
from wonders.crypto import PrivateKey, request_id_time
from wonders.errors import (
    ObjectNotFound,
    StoreError,
    StorePermissionError,
    UnsafeObject,
    WondersError,
)
from wonders.mailbox import Backoff, OddKeys, Store, layout, wait_event, watch
from wonders.mailbox.layout import EnvelopeKey
from wonders.policy import Limiter, Policy
from wonders.relay.forwarder.claims import (
    Answered,
    Claimant,
    ClaimMachine,
    ClaimRules,
    Recheck,
    Won,
    drive,
)
from wonders.relay.forwarder.exchange import Context, Exchange, delete_request
from wonders.relay.forwarder.metrics import Metrics
from wonders.relay.forwarder.outcome import Counters
from wonders.relay.forwarder.seam import Upstream
from wonders.relay.forwarder.settings import ForwarderSettings
from wonders.relay.forwarder.state import ExecutedIds, state_paths
from wonders.relay.forwarder.upstream import AiohttpUpstream
from wonders.relay.records import Heartbeat, Liveness
from wonders.text import Throttle

__all__ = ["Forwarder", "ForwarderFailed", "ForwarderSettings"]

log = logging.getLogger("wonders.forwarder")

#: Keys a second the forwarder spends listing a backlog it already knows (one S3 page).
_LIST_RATE = 1000.0


class ForwarderFailed(WondersError):
    """A part of the forwarder that must run for as long as it serves (the heartbeat, the
    janitor, the audit writer, the poll loop) stopped unexpectedly: the forwarder stopped
    rather than go on half working. ``wonders forward`` exits with status 1."""


class Forwarder:
    """The internet-side service. ``await run()`` until :meth:`stop` is called."""

    def __init__(
        self,
        store: Store,
        key: PrivateKey,
        policy: Policy,
        settings: ForwarderSettings | None = None,
        *,
        upstream: Upstream | None = None,
        upstream_ca: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        audit_store: Store | None = None,
        audit_spool: Path | None = None,
        audit_keep_query: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        """``upstream`` (default: aiohttp, trusting ``upstream_ca`` besides the system
        roots; closed when :meth:`run` ends) sends the requests out; one given here is the
        caller's to close. ``audit_store`` (default: the mailbox) holds the audit log;
        records that cannot be stored at shutdown go to ``audit_spool`` and are written at
        the next start. ``audit_keep_query`` records query values (credentials are
        redacted still). ``metrics`` (optional) counts every request for Prometheus.
        ``clock`` is the wall clock (Unix seconds: claims, envelopes, the audit log),
        ``monotonic`` the one durations and deadlines are measured with."""
        self.store = store
        self.key = key
        self.settings = settings = settings or ForwarderSettings()
        self.clock = clock
        self.monotonic = monotonic
        self.instance = secrets.token_hex(8)
        self.started = clock()
        self.counters = Counters()
        self._policy = policy
        self._limiter = Limiter(policy, clock)
        self._own_upstream = upstream is None
        self._upstream = upstream or self._aiohttp(upstream_ca)
        self._backoff = Backoff(settings.poll_fast, settings.poll_slow, clock=monotonic)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._active: dict[str, asyncio.Task[None]] = {}
        self._per_client: Counter[str] = Counter()
        self._recheck: dict[str, float] = {}  # claimed by others: when to look again
        self._backlog: dict[str, EnvelopeKey] = {}  # listed, not started yet
        self._listed_at = -float("inf")
        self._claimant = Claimant(settings.id, self.instance, key.public)
        self._claim_rules = ClaimRules(settings.stale_after, settings.recheck,
                                       Liveness(settings.stale_after, settings.skew, monotonic))
        #: Set once the first heartbeat is stored: from then on clients see this forwarder.
        self.ready = asyncio.Event()
        self.audit = self._audit_writer(audit_store or store, audit_spool)
        self._blocked = False
        self._lasting = Throttle()  # permission failures and planted objects: said once
        self._failure: tuple[str, BaseException] | None = None
        #: Odd object names (not this protocol's keys), reported once each, left in place.
        self._odd = OddKeys(log)
        self.metrics = metrics
        if metrics is not None:
            metrics.watch(lambda: self.in_flight, lambda: self.audit.waiting,
                          lambda: float(self._blocked))
        self._context = self._exchange_context(audit_keep_query)

    def _aiohttp(self, upstream_ca: str | None) -> AiohttpUpstream:
        settings = self.settings
        return AiohttpUpstream(
            lambda: self._policy, extra_ca=Path(upstream_ca) if upstream_ca else None,
            connect_timeout=settings.connect_timeout, read_timeout=settings.read_timeout,
            total_timeout=settings.total_timeout,
        )

    def _exchange_context(self, keep_query: bool) -> Context:
        """What the exchanges share with this forwarder."""
        return Context(
            store=self.store, key=self.key, settings=self.settings, instance=self.instance,
            policy=lambda: self._policy, limiter=self._limiter, upstream=self._upstream,
            executed=self._executed, audit=self.audit, counters=self.counters,
            clock=self.clock, monotonic=self.monotonic, in_flight=lambda: self.in_flight,
            metrics=self.metrics, keep_query=keep_query,
        )

    def _audit_writer(self, store: Store, spool: Path | None) -> AuditWriter:
        """The audit writer, and the executed ids it rebuilds (``self._executed``): replay
        protection that does not trust the mailbox, the ids answered here until they can
        no longer open, kept beside the spool and rebuilt from the audit log."""
        settings = self.settings
        horizon = settings.max_request_lifetime + 2 * settings.skew
        executed_file, tip_file = state_paths(spool) if spool else (None, None)
        self._executed = ExecutedIds(horizon, executed_file, self.clock)
        return AuditWriter(
            store, self.key, settings.id, batch_records=settings.audit_batch,
            interval=settings.audit_interval, capacity=settings.audit_capacity,
            spool=spool, clock=self.clock, tip_file=tip_file, mailbox=self.store,
            instance=self.instance, recent=horizon, on_record=self._executed.note,
        )

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
                if self._own_upstream:
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
            now = self.monotonic()
            due = self._listed_at + max(self.settings.poll_fast, len(self._backlog) / _LIST_RATE)
            if (not self._backlog or now >= due) and not await self._relist(now):
                await wait_event(self._stopping, self._backoff.next())
                continue
            started = self._schedule()
            interval = self._backoff.reset() if started or self._active else self._backoff.next()
            await wait_event(self._wake, interval)

    async def _relist(self, now: float) -> bool:
        """List the request heads waiting into the backlog; False if listing failed."""
        try:
            heads = [p async for p in self._list_heads()]
        except StoreError as exc:
            if not isinstance(exc, StorePermissionError | UnsafeObject) \
                    or self._lasting(str(exc)):
                log.warning("polling failed: %s", exc)
            return False
        self._backlog = {p.request_id: p for p in heads if p.request_id not in self._active}
        self._listed_at = now
        if self.metrics is not None:
            self.metrics.pending.set(len(heads))
        return True

    def _schedule(self) -> int:
        """Start what the backlog holds, fairly, as far as the slots go; how many started.
        A head claimed by another forwarder waits for its recheck time."""
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
        return started

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
                await delete_request(self.store, client, rid)  # only leftovers remain
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
        await Exchange(self._context, client, rid, attempt).run(fetched)


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

