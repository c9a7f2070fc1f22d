"""The exchange of one request: open, admit (replays refused, the intent stored), serve
(policy, limits, ping), fetch through the upstream seam, follow redirects, relay the
response (:mod:`.pump`), and record the outcome (:mod:`.outcome`).

One :class:`Exchange` per claimed attempt. What it shares with the forwarder that runs it
(the mailbox, the key, the upstream, the limiter, the audit writer, the clocks) comes in
a :class:`Context`. Nothing here imports an HTTP library: the upstream is a
:class:`~wonders.relay.forwarder.seam.Upstream`, its failures the seam's exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from wonders import __version__
from wonders.audit import AuditWriter, Intent, is_credential, iso_time, redact_target
from wonders.crypto import (
    MAX_INLINE,
    Headers,
    OpenedRequest,
    PrivateKey,
    ResponseHead,
    open_request,
)
from wonders.errors import EnvelopeError, ObjectExists, ObjectNotFound, StoreError, UnsafeObject
from wonders.mailbox import Store, layout
from wonders.policy import (
    ClientPolicy,
    Decision,
    Limiter,
    Policy,
    egress_bytes,
    header_bytes,
    parse_target,
)
from wonders.relay.forwarder.outcome import Counters, _log, _Outcome, _record
from wonders.relay.forwarder.pump import Pump
from wonders.relay.forwarder.seam import (
    AddressDenied,
    ResponseHeadersTooLarge,
    Upstream,
    UpstreamError,
    UpstreamFailure,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from wonders.relay.forwarder.segmenter import Segmenter, flush_delay_for
from wonders.relay.forwarder.settings import ForwarderSettings
from wonders.relay.forwarder.state import ExecutedIds
from wonders.relay.forwarder.writer import ErrorReply, ResponseWriter, error_head
from wonders.relay.headers import strip_hop_by_hop
from wonders.relay.records import PING_HOST

if TYPE_CHECKING:
    from wonders.relay.forwarder.metrics import Metrics

__all__ = ["IDEMPOTENT", "Context", "Exchange", "delete_request"]

log = logging.getLogger("wonders.forwarder")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: How a request that got no response head is answered: status, code and message
#: (``{where}`` the host, ``{exc}`` the failure). A failure not named here is an error.
_FAILURES: dict[type[UpstreamFailure], tuple[int, str, str]] = {
    UpstreamUnreachable: (502, "upstream-unreachable",
                          "wonders: cannot connect to {where}: {exc}"),
    UpstreamTimeout: (504, "upstream-timeout", "wonders: {where} did not answer in time"),
    ResponseHeadersTooLarge: (502, "response-headers-too-large",
                              "wonders: the response headers of {where} are over the "
                              "forwarder's limits: {exc}"),
    UpstreamError: (502, "upstream-error", "wonders: request to {where} failed: {exc}"),
}


@dataclass(frozen=True, slots=True)
class Context:
    """What every exchange shares with its forwarder. ``policy`` returns the current
    policy (a reload replaces it); ``clock`` is the wall clock, ``monotonic`` the one
    durations are measured with."""

    store: Store
    key: PrivateKey
    settings: ForwarderSettings
    instance: str
    policy: Callable[[], Policy]
    limiter: Limiter
    upstream: Upstream
    executed: ExecutedIds
    audit: AuditWriter
    counters: Counters
    clock: Callable[[], float]
    monotonic: Callable[[], float]
    in_flight: Callable[[], int]
    metrics: Metrics | None = None
    keep_query: bool = False


async def delete_request(store: Store, client: str, rid: str, *, streamed: bool = True) -> None:
    """Delete a request's objects (an inline one is just its head); its claims stay
    until the janitor's turn."""
    if streamed:
        prefix = layout.envelope_prefix("requests", client, rid)
        keys = [k async for k in store.list(prefix) if layout.parse_envelope_key(k) is not None]
    else:
        keys = [layout.head_key("requests", client, rid)]
    for key in keys:
        await store.delete(key)


def _location(headers: Headers) -> str | None:
    """The first ``Location`` header, its bytes read as UTF-8 (undecodable ones kept as
    surrogates), as the HTTP client reads header text."""
    for name, value in headers:
        if name.lower() == "location":
            return value.encode("latin-1").decode("utf-8", "surrogateescape")
    return None


class Exchange:
    """Attempt ``attempt`` at request ``rid`` of ``client``, claimed: :meth:`run` it."""

    def __init__(self, context: Context, client: str, rid: str, attempt: int) -> None:
        self._ctx = context
        self.client, self.rid, self.attempt = client, rid, attempt
        self.store = context.store
        self.settings = context.settings
        self.clock = context.clock
        self.counters = context.counters
        self._keep_query = context.keep_query
        self.outcome = _Outcome()

    # ---------------------------------------------------------------- the attempt

    async def run(self, fetched: asyncio.Task[bytes]) -> None:
        """Handle the request whose head ``fetched`` reads; always logged, and recorded
        unless nothing was done."""
        started = self._ctx.monotonic()
        claimed = self.clock()
        outcome = self.outcome
        opened: OpenedRequest | None = None
        try:
            opened = await self._open(fetched)
            if opened is not None and await self._admit(opened):
                await self._answer(opened)
        except StoreError as exc:
            outcome.error = outcome.error or f"store: {exc}"
            raise
        finally:
            _log(self, self.client, self.rid, opened, outcome, started)
            if not outcome.nothing or outcome.intent:
                record = _record(self, self.client, self.rid, self.attempt, opened, outcome,
                                 claimed, started)
                self._ctx.audit.add(record)
                if self._ctx.metrics is not None:
                    self._ctx.metrics.observe(record)

    async def _answer(self, opened: OpenedRequest) -> None:
        """Serve an admitted request, answer it (an error reply if serving did not), mark
        it done and delete it."""
        outcome, rid = self.outcome, self.rid
        writer = self._writer(opened)
        try:
            await self._serve(opened, writer)
        except ErrorReply as reply:
            outcome.status, outcome.error = reply.status, reply.code
            if not writer.started:
                head, body = error_head(reply.status, reply.code, reply.message, reply.extra)
                with contextlib.suppress(ObjectExists):
                    await writer.whole(head, body)
        outcome.bytes_down = writer.bytes
        outcome.response_sha256 = writer.sha256
        with contextlib.suppress(ObjectExists):
            await self.store.put(layout.done_key(rid), b"", create_only=True)
        self._ctx.executed.add(rid, opened.expires + 2 * self.settings.skew)
        await delete_request(self.store, self.client, rid, streamed=opened.body is None)

    def _writer(self, request: OpenedRequest) -> ResponseWriter:
        return ResponseWriter(self.store, self._ctx.key, request, self.client,
                              settings=self.settings, clock=self.clock,
                              monotonic=self._ctx.monotonic)

    # ----------------------------------------------------------------------- open

    async def _open(self, fetched: asyncio.Task[bytes]) -> OpenedRequest | None:
        """The verified request (its head read by ``fetched``), or None once an unusable
        one has been dealt with."""
        client, rid, outcome = self.client, self.rid, self.outcome
        try:
            data = await fetched
        except ObjectNotFound:
            outcome.nothing = True
            return None
        except UnsafeObject as exc:  # too large, or not a file: unauthenticated junk
            self.counters.rejected += 1
            outcome.decision, outcome.error = "rejected", "malformed"
            log.warning("request %s in %s's mailbox removed: %s", rid, client, exc)
            await delete_request(self.store, client, rid)
            return None
        opened = await self._verified(data)
        if opened is None or await self._lives_too_long(opened):
            await delete_request(self.store, client, rid)
            return None
        return opened

    async def _verified(self, data: bytes) -> OpenedRequest | None:
        """The request in ``data`` opened; None once one that does not open is dealt
        with (answered if it is authentic but out of its time, else only logged)."""
        client, rid, outcome = self.client, self.rid, self.outcome
        policy = self._ctx.policy()
        entry = policy.clients.get(client)

        def opened(check_time: bool = True) -> OpenedRequest:
            return open_request(data, recipient=self._ctx.key, senders=policy.sender,
                                now=self.clock(), skew=self.settings.skew, expected_id=rid,
                                expected_sender=entry.bundle.kid if entry else "",
                                check_time=check_time)

        try:
            return opened()
        except EnvelopeError as exc:
            self.counters.rejected += 1
            outcome.decision, outcome.error = "rejected", exc.reason
            if exc.reason not in ("expired", "not-yet-valid"):
                log.warning("request %s in %s's mailbox removed: %s", rid, client, exc)
                return None
            late = opened(check_time=False)
            log.warning("request %s from %s refused: %s", rid, client, exc)
            status = 504 if exc.reason == "expired" else 400
            outcome.status = status
            hint = ("it waited longer than its lifetime for a forwarder"
                    if exc.reason == "expired" else "check the clocks of both sides")
            await self._refuse(late, status, "request-" + exc.reason,
                               f"wonders: request refused: {exc.message}; {hint}")
            return None

    async def _lives_too_long(self, opened: OpenedRequest) -> bool:
        """Whether the request asks to stay valid longer than accepted (then answered)."""
        longest = self.settings.max_request_lifetime
        if opened.expires - opened.issued <= longest:
            return False
        self.counters.rejected += 1
        outcome = self.outcome
        outcome.decision, outcome.error, outcome.status = "rejected", "request-lifetime", 400
        await self._refuse(
            opened, 400, "request-lifetime",
            f"wonders: request refused: it asks to stay valid for "
            f"{opened.expires - opened.issued:.0f} s; this forwarder accepts {longest:.0f} s",
        )
        return True

    async def _refuse(self, request: OpenedRequest, status: int, code: str,
                      message: str) -> None:
        """Answer an authenticated request that will not be executed; mark it done."""
        head, body = error_head(status, code, message)
        with contextlib.suppress(ObjectExists):
            await self._writer(request).whole(head, body)
        with contextlib.suppress(ObjectExists):
            await self.store.put(layout.done_key(request.id), b"", create_only=True)

    # ---------------------------------------------------------------------- admit

    async def _admit(self, request: OpenedRequest) -> bool:
        """Whether this opened request may go on to be served: not a replay. If it may go
        upstream, its intent is stored first (create-only, beside its claim), so that
        nothing is executed unaudited even if this process is killed: a forwarder taking
        the request over, or this one restarted, records it; an intent already there for
        this attempt means the claims were deleted and the head copied back."""
        rid, attempt = self.rid, self.attempt
        if rid in self._ctx.executed and attempt == 0:
            # executed here, and its claims are gone: copied back. (A later attempt is a
            # takeover of this forwarder's own unfinished one: _serve never runs a POST
            # again, and re-runs an idempotent method as any takeover does.)
            return await self._replayed(request, "this forwarder ran it already")
        now = self.clock()
        decision = self._decide(self._ctx.policy(), request, request.head.url, now)
        if urlsplit(request.head.url).hostname == PING_HOST or not decision.allowed:
            return True  # nothing goes upstream
        data = self._intent(request, decision, now).sign(self._ctx.key)
        key = layout.intent_key(rid, attempt)
        try:
            await self.store.put(key, data, create_only=True)
        except ObjectExists:
            if await self.store.get(key, max_bytes=layout.MAX_INTENT_BYTES) != data:
                return await self._replayed(request,
                                            f"attempt {attempt} has an intent already ({key})")
        self.outcome.intent = True
        # executed from here on, whatever happens to its done marker or its head later
        self._ctx.executed.add(rid, request.expires + 2 * self.settings.skew)
        return True

    def _intent(self, request: OpenedRequest, decision: Decision, now: float) -> Intent:
        method, url = request.head.method, request.head.url
        parts = urlsplit(url)
        return Intent(
            self.settings.id, self._ctx.instance, self.rid, self.attempt, self.client,
            iso_time(now), method, parts.scheme, parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
            redact_target(url, keep_query=self._keep_query), decision.action,
            decision.rule or None,
        )

    async def _replayed(self, request: OpenedRequest, why: str) -> bool:
        """Refuse a request executed before, whose head came back: audited, not answered
        (its client had its answer), and removed."""
        self.counters.rejected += 1
        self.outcome.decision, self.outcome.error = "rejected", "replay"
        log.warning("request %s from %s refused as a replay: %s", self.rid, self.client, why)
        with contextlib.suppress(ObjectExists):
            await self.store.put(layout.done_key(self.rid), b"", create_only=True)
        await delete_request(self.store, self.client, self.rid,
                             streamed=request.body is None)
        return False

    def _decide(self, policy: Policy, request: OpenedRequest, url: str,
                now: float) -> Decision:
        size = len(request.body) if request.body is not None else None
        return policy.decide(self.client, request.head.method, url, now=now,
                             request_bytes=size)

    # ---------------------------------------------------------------------- serve

    async def _serve(self, request: OpenedRequest, writer: ResponseWriter) -> None:
        method, url = request.head.method, request.head.url
        self.counters.requests += 1
        answered = layout.head_key("responses", self.client, request.id)
        if self.attempt > 0 and await self.store.exists(answered):
            self.outcome.error, self.outcome.nothing = "already-answered", True
            return  # the previous attempt began answering: nothing can be added to that
        if self.attempt > 0 and method not in IDEMPOTENT:
            raise ErrorReply(502, "not-retried",
                             f"wonders: the forwarder handling this {method} stopped before "
                             "answering; it may or may not have reached the server, so it was "
                             "not sent again")
        policy = self._ctx.policy()  # this request's, whatever a reload does meanwhile
        entry = policy.clients.get(self.client)
        if entry is None:
            raise ErrorReply(403, "policy-denied",
                             f"wonders: client {self.client!r} is no longer in the policy")
        if urlsplit(url).hostname == PING_HOST:
            await self._pong(request, writer)
            return
        self._check_sizes(entry, request)
        # What is decided is what is fetched and audited: the URL with its host normalised
        # (Unicode dots, fullwidth digits, case, literal spellings); decide() denies a URL
        # that cannot be normalised.
        with contextlib.suppress(ValueError):
            url = self.outcome.url = parse_target(url).url
        self._permit(policy, request, url)
        try:
            self.counters.allowed += 1
            await self._fetch(policy, request, url, writer)
        finally:
            self._ctx.limiter.release(self.client)

    def _permit(self, policy: Policy, request: OpenedRequest, url: str) -> None:
        """The policy's decision and the limiter's slot for this request, or the refusal;
        a slot taken here is released by the caller."""
        outcome, client = self.outcome, self.client
        decision = self._decide(policy, request, url, self.clock())
        outcome.decision, outcome.rule = decision.action, decision.rule
        if not decision.allowed:
            self.counters.denied += 1
            raise ErrorReply(403, "policy-denied",
                             f"wonders: denied by policy ({decision.rule}): {decision.reason}")
        if decision.action == "report":
            log.info("request %s from %s: %s", request.id, client, decision)
        size = len(request.body) if request.body is not None else None
        sent = egress_bytes(request.head.method, url, request.head.headers, size or 0)
        admitted = self._ctx.limiter.admit(client, sent)
        if not admitted.allowed:
            self.counters.denied += 1
            outcome.decision, outcome.rule = "deny", admitted.rule
            retry = f"{max(1, round(admitted.retry_after or 1))}"
            raise ErrorReply(429, "rate-limited", f"wonders: {admitted.reason}",
                             (("Retry-After", retry),))

    def _check_sizes(self, entry: ClientPolicy, request: OpenedRequest) -> None:
        """The client's caps on URL length and header bytes, before anything is sent (in
        either mode: they bound what any request may make the forwarder send)."""
        outcome = self.outcome
        url, who = request.head.url, f"client {entry.name}"
        cap = entry.max_url_length
        if cap is not None and len(url) > cap:
            self.counters.denied += 1
            outcome.decision, outcome.rule = "deny", f"{who}: max_url_length {cap}"
            raise ErrorReply(414, "url-too-long",
                             f"wonders: the URL is {len(url)} characters long, over the "
                             f"max_url_length of {cap} for {entry.name}")
        cap, size = entry.max_header_bytes, header_bytes(request.head.headers)
        if cap is not None and size > cap:
            self.counters.denied += 1
            outcome.decision, outcome.rule = "deny", f"{who}: max_header_bytes {cap}"
            raise ErrorReply(431, "request-headers-too-large",
                             f"wonders: the request headers take {size} bytes, over the "
                             f"max_header_bytes of {cap} for {entry.name}")

    async def _pong(self, request: OpenedRequest, writer: ResponseWriter) -> None:
        """Answer ``wonders ping`` here: no upstream, no DNS; only the client's
        ``not_before``/``not_after`` window of the policy applies."""
        outcome = self.outcome
        window = self._ctx.policy().window(self.client, now=self.clock())
        if not window.allowed:
            self.counters.denied += 1
            outcome.decision, outcome.rule = "deny", window.rule
            raise ErrorReply(403, "policy-denied",
                             f"wonders: denied by policy ({window.rule}): {window.reason}")
        body = json.dumps({
            "forwarder": self.settings.id, "instance": self._ctx.instance,
            "version": __version__, "time": self.clock(), "in_flight": self._ctx.in_flight(),
            "request": request.id,
        }).encode()
        outcome.decision, outcome.rule, outcome.status = "allow", "ping (answered here)", 200
        await writer.whole(ResponseHead(200, "OK", (
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))))), body)

    # ---------------------------------------------------------------------- fetch

    async def _fetch(self, policy: Policy, request: OpenedRequest, url: str,
                     writer: ResponseWriter) -> None:
        outcome = self.outcome
        entry = policy.clients[self.client]
        headers = strip_hop_by_hop(request.head.headers)
        host = urlsplit(request.head.url).netloc.rpartition("@")[2]
        given = [v for k, v in headers if k.lower() == "host"]
        if given and any(v.lower() != host.lower() for v in given):
            raise ErrorReply(400, "host-mismatch",
                             f"wonders: the Host header {given[0]!r} differs from the URL's "
                             f"host {host!r}; refusing an ambiguous request")
        headers = tuple((k, v) for k, v in headers if k.lower() != "host")
        body: bytes | AsyncIterator[bytes] | None = (
            request.body if request.body is not None
            else self._request_body(request, entry.max_request_bytes)
        )
        if request.body is not None:
            outcome.bytes_up = len(request.body)
            outcome.request_sha256 = hashlib.sha256(request.body).digest()
        began = self._ctx.monotonic()
        try:
            await self._hops(policy, request, url, writer, headers, body)
        finally:
            outcome.upstream_seconds = self._ctx.monotonic() - began

    async def _hops(self, policy: Policy, request: OpenedRequest, url: str,
                    writer: ResponseWriter, headers: Headers,
                    body: bytes | AsyncIterator[bytes] | None) -> None:
        """Send the request, follow the redirects to be followed here, relay the last."""
        entry = policy.clients[self.client]
        method = request.head.method
        for hop in range(self.settings.max_redirects + 1):
            response = await self._send(method, url, headers, body)
            async with response:
                follow = self._follow(policy, response, url, hop, headers)
                if follow is None:
                    await self._relay(entry.max_response_bytes, response, writer)
                    return
                method, (url, headers), body = "GET", follow, None
                hop_url = urlsplit(url)
                self.outcome.redirects.append(
                    f"{hop_url.scheme}://{hop_url.netloc.rpartition('@')[2]}"
                    f"{redact_target(url, keep_query=self._keep_query)}")
        raise AssertionError("unreachable: the last hop is always relayed")

    async def _send(self, method: str, url: str, headers: Headers,
                    body: bytes | AsyncIterator[bytes] | None) -> UpstreamResponse:
        """The upstream's response head, or the error reply for its failure."""
        where = urlsplit(url).netloc
        try:
            return await self._ctx.upstream.request(self.client, method, url, headers, body)
        except AddressDenied as exc:
            self.counters.denied += 1
            self.outcome.decision, self.outcome.rule = "deny", exc.decision.rule
            raise ErrorReply(403, "policy-denied",
                             f"wonders: denied by policy ({exc.decision.rule}): "
                             f"{exc.decision.reason}") from None
        except UpstreamFailure as exc:
            self.counters.errors += 1
            kind = next((k for k in type(exc).__mro__ if k in _FAILURES), UpstreamError)
            status, code, message = _FAILURES[kind]
            raise ErrorReply(status, code, message.format(where=where, exc=exc)) from None

    def _follow(self, policy: Policy, response: UpstreamResponse, url: str, hop: int,
                headers: Headers) -> tuple[str, Headers] | None:
        """The next hop's URL and headers, if ``response`` is a redirect to follow here
        (and the limiter lets its request go out)."""
        target = self._redirect(policy, response, url, hop)
        if target is None:
            return None
        if parse_target(target).origin != parse_target(url).origin:
            # another scheme, host or port: the credentials stay with their origin
            headers = tuple((k, v) for k, v in headers if not is_credential(k))
        # the next hop sends its URL and headers out again: charge them
        charged = self._ctx.limiter.charge(self.client, egress_bytes("GET", target, headers))
        if not charged.allowed:
            log.info("redirect to %s returned to %s: %s", target, self.client, charged.reason)
            return None
        return target, headers

    def _redirect(self, policy: Policy, response: UpstreamResponse, url: str,
                  hop: int) -> str | None:
        """Where to go next (the URL normalised), if this redirect is to be followed here:
        allowed by the policy, and not from https down to http."""
        location = _location(response.headers)
        follow = policy.clients[self.client].follow_redirects
        if not (follow and response.status in _REDIRECTS and location):
            return None
        if hop >= self.settings.max_redirects:
            return None
        target = urljoin(url, location)
        decision = policy.decide(self.client, "GET", target, now=self.clock())
        if not decision.allowed:
            log.info("redirect to %s returned to %s: %s", target, self.client, decision)
            return None
        next_url = parse_target(target)  # decide() allowed it: it parses
        if urlsplit(url).scheme == "https" and next_url.scheme != "https":
            log.info("redirect from https to %s returned to %s", target, self.client)
            return None
        return next_url.url

    async def _relay(self, limit: int | None, response: UpstreamResponse,
                     writer: ResponseWriter) -> None:
        """Seal and store the upstream response as it arrives (see :mod:`.pump`)."""
        settings, outcome = self.settings, self.outcome
        outcome.status = response.status
        head = ResponseHead(response.status, response.reason,
                            strip_hop_by_hop(response.headers))
        outcome.response_headers = head.headers
        segmenter = Segmenter(
            now=self._ctx.monotonic(), segment_size=settings.segment_size,
            inline_limit=min(settings.inline_limit, MAX_INLINE), limit=limit,
            delay=flush_delay_for(head.headers, bulk=settings.flush_delay,
                                  stream=settings.stream_flush_delay),
            limit_message=f"response body over {limit} bytes (max_response_bytes of "
                          f"client {self.client}); cut here",
        )
        pump = Pump(writer, head, segmenter, outcome=outcome, counters=self.counters,
                    monotonic=self._ctx.monotonic)
        await pump.run(response)

    async def _request_body(self, request: OpenedRequest,
                            limit: int | None) -> AsyncIterator[bytes]:
        """A streamed request body, verified segment by segment as the upstream sends it."""
        client, outcome = self.client, self.outcome
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
            charged = self._ctx.limiter.charge(client, len(plain))
            if not charged.allowed:
                raise EnvelopeError("incomplete", charged.reason)
            self.counters.bytes_up += len(plain)
            outcome.bytes_up += len(plain)
            if plain:
                yield plain
        assert opener.trailer is not None
        outcome.request_sha256 = opener.trailer.sha256
