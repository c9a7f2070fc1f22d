"""The audit log: one record per request, in signed, hash-chained batches.

**Records** say what a forwarder did with a request: when, which client, the method, host
and path (query values redacted unless configured otherwise), the decision and the rule
that made it, the status, bytes each way, durations, the SHA-256 of both bodies, and the
headers with every credential replaced by ``[redacted]``. Never a body.

**Batches** are immutable JSON-lines objects, created create-only at
``audit/<yyyy>/<mm>/<dd>/<forwarder>/<seq>.jsonl``::

    {"forwarder":"fw1","kid":"…","prev":"<sha256 of batch 6>","records":2,"seq":7,…}
    {…record…}
    {…record…}
    {"signature":"<base64 Ed25519 over every byte above, after a domain string>"}

Each forwarder keeps one chain: ``seq`` counts up from 0 and ``prev`` is the SHA-256 of
the previous batch object (``""`` for batch 0), so removing, editing, reordering or
inserting a batch breaks the chain or a signature. ``audit/head/<forwarder>.json`` names
the newest batch (signed too): a restarted forwarder continues from it, and a verifier
uses it to notice batches missing at the end of a chain. An object-locked bucket makes the
log not just tamper-evident but tamper-proof (see docs/audit.md).

:class:`AuditWriter` buffers records and writes a batch every ``interval`` seconds or
``batch_records`` records. When the store fails it keeps the records and retries; it
reports :attr:`AuditWriter.full` once ``capacity`` records wait, and the forwarder then
takes no new requests (fail closed). Records still unwritten at shutdown go to a local
spool file that the next start writes first.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from cryptography.exceptions import InvalidSignature

from wonders.audit.tip import Tip, load_tip, save_tip
from wonders.crypto import PrivateKey, PublicBundle, request_id_time
from wonders.errors import ObjectExists, ObjectNotFound, StoreError, UnsafeObject, WondersError
from wonders.mailbox import Store, layout
from wonders.relay.records import Heartbeat, parse_heartbeat

__all__ = [
    "FORWARDER_DIED",
    "AuditError",
    "AuditTruncated",
    "AuditWriter",
    "Batch",
    "ChainHead",
    "Intent",
    "Problem",
    "heartbeats_of",
    "incomplete_intents",
    "is_credential",
    "iso_time",
    "parse_batch",
    "parse_intent",
    "parse_time",
    "read_batches",
    "redact_headers",
    "redact_target",
    "redact_url",
    "verify_log",
]

log = logging.getLogger("wonders.audit")

REDACTED = "[redacted]"
_SIGNATURE_DOMAIN = b"wonders-audit-batch-v1\n"
_HEAD_DOMAIN = b"wonders-audit-head-v1\n"
_INTENT_DOMAIN = b"wonders-audit-intent-v1\n"
#: The error of the record that completes an attempt whose forwarder died before
#: recording it (its status is unknown).
FORWARDER_DIED = "forwarder-died"

#: Headers whose values are never recorded.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
#: Header and query-parameter names that look like they carry a secret (API keys, tokens,
#: signatures, passwords, sessions): matched anywhere in the lower-cased name.
_SECRET_NAME = re.compile(
    r"api[-_]?key|apikey|token|secret|passw|passwd|pwd|session|credential|signature|auth"
)
#: Query parameters that carry a secret under a short name (``?key=`` of Google APIs,
#: ``?sig=`` of Azure SAS, ``?code=`` of OAuth, ``?X-Amz-…`` of presigned URLs).
_SECRET_PARAMS = frozenset({"key", "sig", "code", "pass", "x-amz-date", "x-amz-credential"})


class AuditError(WondersError):
    """An audit object that is not a valid batch (or head) of the expected signer."""


#: Response headers whose value is a URL that may carry a presigned credential in its
#: query (``Location: https://bucket.s3…/x?X-Amz-Signature=…``).
URL_HEADERS = frozenset({"location", "content-location"})


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return (lowered in CREDENTIAL_HEADERS or bool(_SECRET_NAME.search(lowered))
            or lowered.endswith(("-key", "_key")))


def is_credential(name: str) -> bool:
    """Whether the header (or query parameter) ``name`` carries a credential: its value
    is never recorded, and a redirect followed to another origin does not carry it on."""
    return _secret_name(name)


def redact_url(value: str, *, keep_query: bool = False) -> str:
    """A URL as recorded: its query redacted as :func:`redact_target` does, and any
    ``user:password@`` removed. A value without a query or userinfo is kept as is."""
    parts = urlsplit(value.strip())
    netloc = parts.netloc
    if not parts.query and "@" not in netloc:
        return value
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    prefix = f"{parts.scheme}://{netloc}" if parts.scheme or netloc else ""
    if parts.path or parts.query:
        return prefix + redact_target(value.strip(), keep_query=keep_query)
    return prefix


def redact_headers(headers: Iterable[tuple[str, str]], *,
                   keep_query: bool = False) -> list[list[str]]:
    """``[name, value]`` pairs with every credential's value replaced by ``[redacted]``,
    and the query of a URL-valued header (``Location``) redacted like a request's."""
    shown = []
    for name, value in headers:
        if _secret_name(name):
            value = REDACTED
        elif name.lower() in URL_HEADERS:
            value = redact_url(value, keep_query=keep_query)
        shown.append([name, value])
    return shown


def redact_target(url: str, *, keep_query: bool = False) -> str:
    """The path and query of ``url`` as recorded: every query value redacted, or with
    ``keep_query`` only the values of parameters that look like credentials."""
    parts = urlsplit(url)
    path = parts.path or "/"
    if not parts.query:
        return path
    shown = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        secret = not keep_query or _secret_name(name) or name.lower() in _SECRET_PARAMS
        shown.append(f"{quote(name, safe='')}={REDACTED if secret else quote(value, safe='')}")
    return f"{path}?{'&'.join(shown)}"


def iso_time(when: float) -> str:
    """Unix seconds as ``2026-11-22T10:00:01.123Z``."""
    moment = datetime.fromtimestamp(when, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: float) -> float:
    """``30m``, ``1h``, ``7d`` (that long before ``now``), or an ISO date or time (UTC
    unless it names a zone). Raises ValueError saying what is accepted."""
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return now - float(relative.group(1)) * _UNITS[relative.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use a duration before now (30m, 1h, 7d, 2w) or an "
            "ISO date or time (2026-11-22, 2026-11-22T10:00, UTC unless a zone is given)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# --------------------------------------------------------------------------- batches


def _line(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def encode_batch(
    key: PrivateKey, forwarder: str, seq: int, prev: str, when: float,
    records: list[dict[str, Any]],
) -> bytes:
    """The bytes of a signed batch."""
    header = {"wonders_audit": 1, "forwarder": forwarder, "kid": key.kid, "seq": seq,
              "prev": prev, "time": iso_time(when), "records": len(records)}
    body = _line(header) + b"".join(_line(record) for record in records)
    signature = key.signing.sign(_SIGNATURE_DOMAIN + body)
    return body + _line({"signature": base64.b64encode(signature).decode()})


@dataclass(frozen=True, slots=True)
class Batch:
    """A verified batch."""

    key: str
    forwarder: str
    kid: str
    seq: int
    prev: str
    time: str
    records: list[dict[str, Any]]
    hash: str


def _signed(doc: Mapping[str, Any], domain: bytes, key: PrivateKey) -> bytes:
    """A small signed object: its JSON line, then the line holding its signature (made
    over ``domain`` + the first line)."""
    body = _line(doc)
    signature = key.signing.sign(domain + body)
    return body + _line({"signature": base64.b64encode(signature).decode()})


def _verified(data: bytes, domain: bytes, what: str, signer: PublicBundle) -> Any:
    """The JSON document of a small signed object (:func:`_signed`) once its signature
    checks; AuditError otherwise."""
    lines = data.split(b"\n")
    if len(lines) != 3 or lines[2]:
        raise AuditError(f"not an {what} object")
    try:
        signer.signing.verify(_signature(lines[1]), domain + lines[0] + b"\n")
    except InvalidSignature:
        raise AuditError(f"its signature does not verify with forwarder key {signer.kid}") from None
    try:
        return json.loads(lines[0])
    except ValueError:
        raise AuditError(f"not an {what} object") from None


def _signature(line: bytes) -> bytes:
    try:
        doc = json.loads(line)
        return base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise AuditError("its last line is not a signature") from None


def parse_batch(key: str, data: bytes, signer: PublicBundle) -> Batch:
    """Verify and parse a batch; AuditError says what is wrong with it."""
    if not data.endswith(b"\n"):
        raise AuditError("it is cut short (no final newline)")
    lines = data[:-1].split(b"\n")
    if len(lines) < 2:
        raise AuditError("it is not an audit batch (too few lines)")
    body = data[: len(data) - len(lines[-1]) - 1]
    try:
        signer.signing.verify(_signature(lines[-1]), _SIGNATURE_DOMAIN + body)
    except InvalidSignature:
        raise AuditError(
            f"its signature does not verify with forwarder key {signer.kid} "
            "(edited, or forged)"
        ) from None
    try:
        header = json.loads(lines[0])
        records = [json.loads(line) for line in lines[1:-1]]
        batch = Batch(key, str(header["forwarder"]), str(header["kid"]), int(header["seq"]),
                      str(header["prev"]), str(header["time"]), records,
                      hashlib.sha256(data).hexdigest())
        count = int(header["records"])
    except (ValueError, KeyError, TypeError):
        raise AuditError("it is signed but not a valid batch") from None
    if header.get("wonders_audit") != 1 or count != len(records):
        raise AuditError("it is signed but not a valid batch")
    if not all(isinstance(record, dict) for record in records):
        raise AuditError("it is signed but not a valid batch")
    return batch


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest batch of a forwarder's chain, as its head object names it."""

    forwarder: str
    seq: int
    hash: str
    key: str

    def sign(self, key: PrivateKey) -> bytes:
        return _signed({"forwarder": self.forwarder, "seq": self.seq, "hash": self.hash,
                        "key": self.key}, _HEAD_DOMAIN, key)


def parse_head(data: bytes, signer: PublicBundle) -> ChainHead:
    doc = _verified(data, _HEAD_DOMAIN, "audit head", signer)
    try:
        return ChainHead(str(doc["forwarder"]), int(doc["seq"]), str(doc["hash"]),
                         str(doc["key"]))
    except (ValueError, KeyError, TypeError):
        raise AuditError("not an audit head object") from None


# ---------------------------------------------------------------------------- intents


@dataclass(frozen=True, slots=True)
class Intent:
    """What an attempt is about to execute, stored (signed, create-only) before the
    upstream sees a byte: the audit essentials of the request, and who executes it."""

    forwarder: str
    instance: str
    id: str
    attempt: int
    client: str
    time: str
    method: str
    scheme: str
    host: str | None
    port: int | None
    path: str
    decision: str
    rule: str | None

    def sign(self, key: PrivateKey) -> bytes:
        return _signed({"wonders_intent": 1, **asdict(self)}, _INTENT_DOMAIN, key)

    def completion(self, by: str, when: float) -> dict[str, Any]:
        """The audit record of this attempt when its forwarder died before recording it:
        the decision it was about to carry out, status unknown."""
        return {
            "time": iso_time(when), "forwarder": self.forwarder, "client": self.client,
            "id": self.id, "attempt": self.attempt, "method": self.method,
            "scheme": self.scheme, "host": self.host, "port": self.port, "path": self.path,
            "decision": self.decision, "rule": self.rule, "status": None,
            "error": FORWARDER_DIED, "up": 0, "down": 0, "queue_ms": None,
            "upstream_ms": None, "total_ms": None, "request_sha256": None,
            "response_sha256": None, "request_headers": [], "response_headers": [],
            "intent": True, "intended": self.time, "instance": self.instance,
            "completed_by": by,
        }


def parse_intent(data: bytes, signer: PublicBundle) -> Intent:
    """Verify and parse an intent object; AuditError says what is wrong with it."""
    doc = _verified(data, _INTENT_DOMAIN, "intent", signer)
    try:
        port = doc["port"]
        return Intent(
            str(doc["forwarder"]), str(doc["instance"]), str(doc["id"]), int(doc["attempt"]),
            str(doc["client"]), str(doc["time"]), str(doc["method"]), str(doc["scheme"]),
            None if doc["host"] is None else str(doc["host"]),
            None if port is None else int(port), str(doc["path"]), str(doc["decision"]),
            None if doc["rule"] is None else str(doc["rule"]),
        )
    except (ValueError, KeyError, TypeError):
        raise AuditError("not an intent object") from None


# ---------------------------------------------------------------------------- writing


def default_spool(forwarder: str) -> Path:
    """``$XDG_STATE_HOME/wonders/audit-spool-<forwarder>.jsonl`` (``~/.local/state``)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "wonders" / f"audit-spool-{forwarder}.jsonl"


@dataclass
class AuditState:
    """What a heartbeat says about the audit log."""

    seq: int = -1
    waiting: int = 0
    blocked: bool = False
    failing: str = ""
    #: SHA-256 of batch ``seq``: with ``seq``, the chain's tip, anchored in the signed
    #: heartbeat so that a verifier notices newest batches deleted with the head rolled back.
    hash: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "waiting": self.waiting,
                "blocked": self.blocked, "failing": self.failing}


class AuditTruncated(AuditError):
    """The chain in the bucket ends before a batch this forwarder knows it wrote."""

    exit_code = 2  # a startup problem, like a missing bucket


@dataclass
class _Pending:
    seq: int
    key: str
    data: bytes
    count: int


@dataclass
class AuditWriter:
    """Writes one forwarder's chain of batches. ``await open()``, then run :meth:`run` as
    a task; :meth:`add` a record per request; ``await close()`` at shutdown."""

    store: Store
    key: PrivateKey
    forwarder: str
    batch_records: int = 500
    interval: float = 1.0
    capacity: int = 10_000
    spool: Path | None = None
    clock: Callable[[], float] = time.time
    retry_max: float = 10.0
    #: The local chain-tip file (see :mod:`wonders.relay.forwarder.state`); None: no local state.
    tip_file: Path | None = None
    #: The mailbox: this forwarder's last heartbeat (whose chain tip is checked at open)
    #: and the claims (which say whether a request was taken over).
    mailbox: Store | None = None
    #: This forwarder process (its intents are not another instance's orphans).
    instance: str = ""
    #: At open, every record of this chain's batches of the last ``recent`` seconds (and
    #: of the spool) is passed to ``on_record``: the forwarder rebuilds its executed ids.
    #: Intents of that time left by an earlier instance of this forwarder that no record
    #: completes are completed (``forwarder-died``).
    recent: float = 0.0
    on_record: Callable[[dict[str, Any]], None] | None = None
    #: ``(id, attempt)`` of the attempts completed here for a dead forwarder.
    completed: set[tuple[str, int]] = field(default_factory=set)
    _buffer: list[dict[str, Any]] = field(default_factory=list)
    _next: int = 0
    _prev: str = ""
    _pending: _Pending | None = None
    _failing: str = ""
    _kick: asyncio.Event = field(default_factory=asyncio.Event)
    _written: int = 0

    async def open(self) -> None:
        """Find where this forwarder's chain ends, and take back spooled records.

        Raises :class:`AuditTruncated` when the chain in the bucket ends before a batch
        that the head object, this forwarder's last heartbeat or its local tip file names:
        newest batches were deleted, and continuing would hide that."""
        head = await self._read_head()
        latest = await self._find_latest(head)
        await self._check_tip(head, latest)
        if latest is not None:
            key, seq, data = latest
            try:
                parse_batch(key, data, self.key.public)
            except AuditError as exc:
                log.error("audit: the newest batch %s of this chain does not verify (%s); "
                          "continuing after it; run 'wonders audit verify'", key, exc)
            self._next, self._prev = seq + 1, hashlib.sha256(data).hexdigest()
            log.info("audit: continuing the chain of %s at batch %d", self.forwarder, seq + 1)
        if self.spool is not None and self.spool.exists():
            records = [json.loads(line) for line in self.spool.read_bytes().splitlines() if line]
            if latest is not None:
                # A batch whose write seemed to fail at shutdown may have landed after all.
                stored = [json.loads(line) for line in latest[2].splitlines()[1:-1]]
                if stored and records[: len(stored)] == stored:
                    del records[: len(stored)]
            self._buffer[:0] = records
            log.warning("audit: %d records from the spool file %s are written first",
                        len(records), self.spool)
        if latest is not None and self.tip_file is not None:
            self._save_tip(Tip(latest[1], self._prev, latest[0]))
        await self._recall()

    async def _recall(self) -> None:
        """Pass the records of this chain's recent batches, and the spooled ones, to
        ``on_record``; complete the intents an earlier instance left unrecorded."""
        if self.on_record is None or self.recent <= 0:
            return
        now = self.clock()
        since = now - self.recent
        keys = []
        for key in await batch_keys(self.store, since, now):
            parsed = layout.parse_audit_key(key)
            if parsed is not None and parsed.forwarder == self.forwarder:
                keys.append(key)
        recorded: set[tuple[str, int]] = set()
        async for item in read_batches(self.store, keys, self.key.public):
            if isinstance(item, Batch):
                for record in item.records:
                    self.on_record(record)
                    recorded.add((str(record.get("id")), _attempt(record)))
        for record in self._buffer:
            self.on_record(record)
            recorded.add((str(record.get("id")), _attempt(record)))
        log.debug("audit: %d recent records of %s recalled from %d batches", len(recorded),
                 self.forwarder, len(keys))
        await self._complete_orphans(since, now, recorded)

    async def _complete_orphans(self, since: float, now: float,
                                recorded: set[tuple[str, int]]) -> None:
        """Record ``forwarder-died`` for each intent that an earlier instance of this
        forwarder stored in the mailbox and never recorded (killed while executing, or
        after answering and before its batch was written), unless another forwarder took
        the request over (a later claim: the taker records it)."""
        if self.mailbox is None:
            return
        keys = [k async for k in self.mailbox.list(layout.CLAIMS)]
        later: dict[str, int] = {}
        for key in keys:
            parsed = layout.parse_claims_key(key)
            if parsed is not None and parsed[1] is not None and not parsed[2]:
                later[parsed[0]] = max(later.get(parsed[0], -1), parsed[1])
        for key in keys:
            parsed = layout.parse_claims_key(key)
            if parsed is None or not parsed[2] or parsed[1] is None:
                continue
            rid, attempt = parsed[0], parsed[1]
            if (rid, attempt) in recorded or (rid, attempt) in self.completed:
                continue
            if later.get(rid, -1) > attempt:
                continue  # taken over: the taker records this attempt
            try:
                if request_id_time(rid) < since:
                    continue  # its record may be in a batch older than those recalled
                intent = parse_intent(
                    await self.mailbox.get(key, max_bytes=layout.MAX_INTENT_BYTES),
                    self.key.public)
            except (ValueError, ObjectNotFound, UnsafeObject):
                continue
            except AuditError as exc:
                log.error("audit: %s: %s", key, exc)
                continue
            if intent.forwarder != self.forwarder or intent.instance == self.instance:
                continue
            if (intent.id, intent.attempt) != (rid, attempt):
                continue
            self.completed.add((rid, attempt))
            self._buffer.append(intent.completion(self.forwarder, now))
            log.warning("audit: request %s attempt %d was about to be executed by an "
                        "earlier instance of %s that died before recording it; recorded "
                        "as %s", rid, attempt, self.forwarder, FORWARDER_DIED)

    async def _check_tip(self, head: ChainHead | None,
                         latest: tuple[str, int, bytes] | None) -> None:
        """Refuse to continue a chain that ends before a batch known to exist."""
        anchors: list[tuple[str, int, str]] = []
        if head is not None:
            anchors.append((f"the head object {layout.audit_head_key(self.forwarder)}",
                            head.seq, head.hash))
        if self.tip_file is not None and (tip := load_tip(self.tip_file)) is not None:
            anchors.append((f"this forwarder's state file {self.tip_file}", tip.seq, tip.hash))
        if self.mailbox is not None:
            with contextlib.suppress(ObjectNotFound, UnsafeObject):
                data = await self.mailbox.get(layout.heartbeat_key(self.forwarder),
                                              max_bytes=layout.MAX_HEARTBEAT_BYTES)
                beat = parse_heartbeat(data, self.key.public)
                if beat is not None and isinstance(beat.audit.get("seq"), int):
                    anchors.append((f"its last heartbeat (instance {beat.instance})",
                                    int(beat.audit["seq"]), str(beat.audit.get("hash") or "")))
        ends = latest[1] if latest is not None else -1
        digest = hashlib.sha256(latest[2]).hexdigest() if latest is not None else ""
        where = latest[0] if latest is not None else "(no batch)"
        for what, seq, tip_hash in anchors:
            if seq > ends:
                raise AuditTruncated(
                    f"audit: the chain of forwarder {self.forwarder} in {self.store.url} ends "
                    f"at batch {ends} ({where}), but {what} names batch {seq}: "
                    f"{_missing(self.forwarder, ends + 1, seq)}, or the head rolled back. "
                    "Refusing to continue from the cut, which would hide them. Run "
                    "'wonders audit verify'; restore the batches, or to accept the loss "
                    "remove the objects and files named here and start again"
                )
            if seq == ends and tip_hash and tip_hash != digest:
                raise AuditTruncated(
                    f"audit: batch {ends} of forwarder {self.forwarder} ({where}) is not the "
                    f"one {what} names (replaced). Refusing to continue; run "
                    "'wonders audit verify'"
                )

    def _save_tip(self, tip: Tip) -> None:
        assert self.tip_file is not None
        try:
            save_tip(self.tip_file, tip)
        except OSError as exc:
            log.error("audit: chain tip not saved to %s: %s", self.tip_file, exc)

    async def _read_head(self) -> ChainHead | None:
        try:
            return parse_head(await self.store.get(layout.audit_head_key(self.forwarder),
                                                   max_bytes=layout.MAX_AUDIT_HEAD_BYTES),
                              self.key.public)
        except ObjectNotFound:
            return None
        except (AuditError, UnsafeObject) as exc:
            log.error("audit: head object of %s ignored: %s", self.forwarder, exc)
            return None

    async def _find_latest(self, head: ChainHead | None = None) -> tuple[str, int, bytes] | None:
        """The newest batch of this chain in the bucket, found by listing from the head
        object's day on (every day without one): batches beyond the head are found."""
        if head is None:
            head = await self._read_head()
        keys: list[str] = []
        if head is not None and (parsed := layout.parse_audit_key(head.key)) is not None:
            today = datetime.fromtimestamp(self.clock(), UTC).date()
            day = parsed.day
            while day <= today:
                prefix = layout.audit_forwarder_prefix(day, self.forwarder)
                keys += [k async for k in self.store.list(prefix)]
                day += timedelta(days=1)
        else:
            # No head object (a new forwarder, or the head was lost): look at everything.
            keys = [k async for k in self.store.list(layout.AUDIT)]
        best: tuple[int, str] | None = None
        for key in keys:
            parsed = layout.parse_audit_key(key)
            mine = parsed is not None and parsed.forwarder == self.forwarder
            if mine and parsed is not None and (best is None or parsed.seq > best[0]):
                best = (parsed.seq, key)
        if best is None:
            return None
        try:
            data = await self.store.get(best[1], max_bytes=layout.MAX_AUDIT_BATCH_BYTES)
        except UnsafeObject as exc:  # not one this writer wrote: open() says it does not verify
            log.error("audit: %s", exc)
            data = b""
        return best[1], best[0], data

    @property
    def waiting(self) -> int:
        """Records not yet stored."""
        return len(self._buffer)

    @property
    def full(self) -> bool:
        """True while ``capacity`` records wait: take no new requests."""
        return len(self._buffer) >= self.capacity

    @property
    def written(self) -> int:
        """Records stored by this writer."""
        return self._written

    def state(self) -> AuditState:
        return AuditState(self._next - 1, len(self._buffer), self.full, self._failing,
                          self._prev)

    def add(self, record: dict[str, Any]) -> None:
        """Queue a record. Never drops one; the forwarder checks :attr:`full`."""
        self._buffer.append(record)
        if len(self._buffer) >= self.batch_records:
            self._kick.set()

    async def run(self) -> None:
        """Write batches until cancelled."""
        delay = self.interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), delay)
            self._kick.clear()
            try:
                while self._buffer:
                    await self._write_one()
                    if len(self._buffer) < self.batch_records:
                        break
            except StoreError as exc:
                if not self._failing:
                    log.warning("audit: cannot write batch %d: %s; keeping %d records and "
                                "retrying", self._next, exc, len(self._buffer))
                self._failing = str(exc)
                delay = min(self.retry_max, max(delay * 2, 0.25))
                continue
            if self._failing:
                log.warning("audit: writing again after a store failure; %d records waiting",
                            len(self._buffer))
                self._failing = ""
            delay = self.interval

    async def _write_one(self) -> None:
        if self._pending is None:
            now = self.clock()
            records = self._buffer[: self.batch_records]
            data = encode_batch(self.key, self.forwarder, self._next, self._prev, now, records)
            while len(data) > layout.MAX_AUDIT_BATCH_BYTES and len(records) > 1:
                records = records[: len(records) // 2]  # readers refuse larger batches
                data = encode_batch(self.key, self.forwarder, self._next, self._prev, now,
                                    records)
            key = layout.audit_batch_key(self.forwarder, self._next,
                                         datetime.fromtimestamp(now, UTC))
            self._pending = _Pending(self._next, key, data, len(records))
        pending = self._pending
        try:
            await self.store.put(pending.key, pending.data, create_only=True)
        except ObjectExists:
            try:
                stored = await self.store.get(pending.key, max_bytes=len(pending.data))
            except UnsafeObject:
                stored = b""
            if stored != pending.data:
                # Another process writes under this forwarder id: carry on after its batch
                # (verify will report the fork) without losing a record.
                log.error("audit: %s was written by another process using forwarder id "
                          "%r; give each forwarder its own id", pending.key, self.forwarder)
                self._pending = None
                latest = await self._find_latest()
                if latest is not None:
                    self._next = latest[1] + 1
                    self._prev = hashlib.sha256(latest[2]).hexdigest()
                return
        del self._buffer[: pending.count]
        self._written += pending.count
        self._pending = None
        self._next, self._prev = pending.seq + 1, hashlib.sha256(pending.data).hexdigest()
        head = ChainHead(self.forwarder, pending.seq, self._prev, pending.key)
        if self.tip_file is not None:
            self._save_tip(Tip(pending.seq, self._prev, pending.key))
        try:
            await self.store.put(layout.audit_head_key(self.forwarder), head.sign(self.key))
        except StoreError as exc:  # the chain is stored; the head is written next time
            log.warning("audit: head object not updated: %s", exc)
        if self.spool is not None and not self._buffer:
            with contextlib.suppress(FileNotFoundError):
                self.spool.unlink()

    async def close(self, grace: float) -> None:
        """Write every waiting record, retrying for up to ``grace`` seconds; what still
        cannot be stored goes to the spool file (or, without one, is reported lost)."""
        deadline = time.monotonic() + grace
        delay = 0.25
        while self._buffer:
            try:
                await self._write_one()
                continue
            except StoreError as exc:
                self._failing = str(exc)
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(delay, left))  # a retry interval: nothing to wait on
            delay = min(delay * 2, self.retry_max)
        if not self._buffer:
            return
        if self.spool is None:
            log.error("audit: store unreachable at shutdown (%s); %d records lost",
                      self._failing, len(self._buffer))
            return
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=self.spool.parent, delete=False) as out:
            out.write(b"".join(_line(record) for record in self._buffer))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(out.name, 0o600)
        os.replace(out.name, self.spool)
        log.error("audit: store unreachable at shutdown (%s); %d records saved to %s, "
                  "written on the next start", self._failing, len(self._buffer), self.spool)


# ---------------------------------------------------------------------------- reading


def _days(since: float, until: float) -> list[date]:
    first = datetime.fromtimestamp(since, UTC).date()
    last = datetime.fromtimestamp(until, UTC).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


async def batch_keys(store: Store, since: float | None, until: float) -> list[str]:
    """Keys of the batches filed on the days from ``since`` (None: all) to ``until``."""
    if since is None:
        keys = [k async for k in store.list(layout.AUDIT)]
    else:
        keys = []
        for day in _days(since, until):
            keys += [k async for k in store.list(layout.audit_day_prefix(day))]
    return [k for k in keys if layout.parse_audit_key(k) is not None]


@dataclass(frozen=True, slots=True)
class Problem:
    """Something ``verify`` found, with the object it is about."""

    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


async def read_batches(
    store: Store, keys: Iterable[str], signer: PublicBundle
) -> AsyncIterator[Batch | Problem]:
    """Each batch verified, or the problem with it."""
    for key in keys:
        try:
            data = await store.get(key, max_bytes=layout.MAX_AUDIT_BATCH_BYTES)
        except ObjectNotFound:
            yield Problem(key, "listed but gone when read")
            continue
        except UnsafeObject as exc:
            yield Problem(key, str(exc))
            continue
        try:
            yield parse_batch(key, data, signer)
        except AuditError as exc:
            yield Problem(key, str(exc))


@dataclass
class Verification:
    forwarders: int = 0
    batches: int = 0
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    #: Attempts whose intent is stored but no audit record completes it.
    incomplete: int = 0


async def heartbeats_of(store: Store, signer: PublicBundle) -> dict[str, Heartbeat]:
    """The forwarders' heartbeats in ``store`` that ``signer`` signed, by forwarder."""
    beats: dict[str, Heartbeat] = {}
    async for key in store.list(layout.HEARTBEATS):
        try:
            beat = parse_heartbeat(await store.get(key, max_bytes=layout.MAX_HEARTBEAT_BYTES),
                                   signer)
        except (ObjectNotFound, UnsafeObject):
            continue
        if beat is not None and key == layout.heartbeat_key(beat.forwarder):
            beats[beat.forwarder] = beat
    return beats


def _running(beat: Heartbeat | None, instance: str, now: float) -> bool:
    """Whether ``instance`` is still at work, by its forwarder's heartbeat."""
    if beat is None or beat.instance != instance:
        return False
    return abs(now - beat.time) <= 3 * beat.interval + 1.0


async def incomplete_intents(
    mailbox: Store, signer: PublicBundle, recorded: set[tuple[str, int]], *,
    beats: Mapping[str, Heartbeat], intended: Iterable[tuple[str, str, int]] = (),
    now: float,
) -> tuple[list[Problem], int]:
    """Problems with the intents in the mailbox (``claims/<id>/<attempt>.intent``, kept
    as long as claims): an intent that no record completes (executed, or about to be,
    with nothing recorded after: *incomplete*), an intent that is not one, and a record
    made under an intent whose intent object is gone while its claims are still there
    (``intended``: ``(batch key, id, attempt)`` of such records). Attempts in flight (their
    forwarder instance is alive) are left out. Returns the problems and how many are
    incomplete."""
    intents: dict[tuple[str, int], str] = {}
    claimed: set[str] = set()
    async for key in mailbox.list(layout.CLAIMS):
        parsed = layout.parse_claims_key(key)
        if parsed is None:
            continue
        rid, attempt, is_intent = parsed
        claimed.add(rid)
        if is_intent and attempt is not None:
            intents[(rid, attempt)] = key
    problems: list[Problem] = []
    incomplete = 0
    for (rid, attempt), key in sorted(intents.items()):
        if (rid, attempt) in recorded:
            continue
        try:
            intent = parse_intent(await mailbox.get(key, max_bytes=layout.MAX_INTENT_BYTES),
                                  signer)
        except ObjectNotFound:
            continue  # swept meanwhile
        except UnsafeObject as exc:
            problems.append(Problem(key, f"not a valid intent: {exc}"))
            continue
        except AuditError as exc:
            problems.append(Problem(key, f"not a valid intent: {exc}"))
            continue
        if (intent.id, intent.attempt) != (rid, attempt):
            problems.append(Problem(key, f"holds the intent of request {intent.id} attempt "
                                         f"{intent.attempt} (copied)"))
            continue
        if _running(beats.get(intent.forwarder), intent.instance, now):
            continue  # in flight: its record is still to come
        incomplete += 1
        problems.append(Problem(key, (
            f"request {rid} attempt {attempt} of client {intent.client} ({intent.method} "
            f"{intent.scheme}://{intent.host}{intent.path}, {intent.decision}) was about to "
            f"be executed by forwarder {intent.forwarder} at {intent.time}, and no audit "
            "record completes it (incomplete: the forwarder died, and no other forwarder "
            "has recorded it since)")))
    for batch_key, rid, attempt in intended:
        if (rid, attempt) not in intents and rid in claimed:
            problems.append(Problem(batch_key, (
                f"records request {rid} attempt {attempt} as executed under an intent, but "
                f"{layout.intent_key(rid, attempt)} is gone while its claims are kept "
                "(deleted)")))
    return problems, incomplete


def _placement(batch: Batch) -> str | None:
    """Why a verified batch is not where its key says, if it is not."""
    parsed = layout.parse_audit_key(batch.key)
    assert parsed is not None
    if parsed.forwarder != batch.forwarder or parsed.seq != batch.seq:
        return (f"holds batch {batch.seq} of forwarder {batch.forwarder}; the key says "
                f"batch {parsed.seq} of {parsed.forwarder} (moved or reordered)")
    if not batch.time.startswith(parsed.day.isoformat()):
        return f"was written {batch.time}, not on the day its key says (moved)"
    return None


async def verify_log(
    store: Store, signer: PublicBundle, *, since: float | None = None,
    until: float | None = None, clock: Callable[[], float] = time.time,
    mailbox: Store | None = None,
) -> Verification:
    """Check every batch (from ``since``; None: all): signatures, placement, and each
    forwarder's chain — gaps, breaks, duplicates, and batches missing at the end (past
    the newest batch the head object or the forwarder's signed heartbeat names); then
    every intent: an executed request that no record completes is reported.
    ``mailbox`` holds the heartbeats and intents (default: ``store``, where the audit log
    is unless the forwarder was given a separate audit store)."""
    result = Verification()
    now = clock()
    end = until if until is not None else now
    keys = await batch_keys(store, since, end)
    beats = await heartbeats_of(mailbox or store, signer)
    recorded: set[tuple[str, int]] = set()
    intended: list[tuple[str, str, int]] = []
    chains: dict[str, list[Batch]] = {}
    invalid: dict[str, set[int]] = {}  # reported already: not reported missing as well
    async for item in read_batches(store, keys, signer):
        if isinstance(item, Problem):
            result.problems.append(item)
            parsed = layout.parse_audit_key(item.key)
            if parsed is not None:
                invalid.setdefault(parsed.forwarder, set()).add(parsed.seq)
            continue
        result.batches += 1
        result.records += len(item.records)
        for record in item.records:
            done = (str(record.get("id")), _attempt(record))
            recorded.add(done)
            if record.get("intent"):
                intended.append((item.key, *done))
        misplaced = _placement(item)
        if misplaced:
            result.problems.append(Problem(item.key, misplaced))
        chains.setdefault(item.forwarder, []).append(item)
    heads: dict[str, ChainHead] = {}
    async for key in store.list(layout.AUDIT_HEADS):
        try:
            head = parse_head(await store.get(key, max_bytes=layout.MAX_AUDIT_HEAD_BYTES), signer)
        except (AuditError, ObjectNotFound, UnsafeObject) as exc:
            result.problems.append(Problem(key, str(exc)))
            continue
        heads[head.forwarder] = head
        chains.setdefault(head.forwarder, [])
    tips: dict[str, tuple[int, str]] = {}
    for forwarder, beat in beats.items():
        seq = beat.audit.get("seq")
        if isinstance(seq, int) and seq >= 0:
            tips[forwarder] = (seq, str(beat.audit.get("hash") or ""))
            chains.setdefault(forwarder, [])
    result.forwarders = len(chains)
    for forwarder, batches in sorted(chains.items()):
        result.problems += _check_chain(forwarder, batches, heads.get(forwarder),
                                        invalid.get(forwarder, set()), whole=since is None,
                                        tip=tips.get(forwarder))
    problems, result.incomplete = await incomplete_intents(
        mailbox or store, signer, recorded, beats=beats, intended=intended, now=now)
    result.problems += problems
    return result


def _attempt(record: Mapping[str, Any]) -> int:
    try:
        return int(record.get("attempt") or 0)
    except (TypeError, ValueError):
        return 0


def _check_chain(
    forwarder: str, batches: list[Batch], head: ChainHead | None, invalid: set[int], *,
    whole: bool, tip: tuple[int, str] | None = None,
) -> list[Problem]:
    problems: list[Problem] = []
    batches = sorted(batches, key=lambda b: (b.seq, b.key))

    def missing(key: str, first: int, last: int, suffix: str = "") -> None:
        for low, high in _gaps(first, last, invalid):
            problems.append(Problem(key, _missing(forwarder, low, high) + suffix))

    if whole and batches and batches[0].seq != 0:
        missing(batches[0].key, 0, batches[0].seq - 1)
    if whole and batches and batches[0].seq == 0 and batches[0].prev:
        problems.append(Problem(batches[0].key, "batch 0 names a previous batch (inserted)"))
    for before, after in itertools.pairwise(batches):
        if after.seq == before.seq:
            problems.append(Problem(after.key, f"a second batch {after.seq} of {forwarder} "
                                               f"besides {before.key} (inserted or forked)"))
        elif after.seq > before.seq + 1:
            missing(after.key, before.seq + 1, after.seq - 1)
        elif after.prev != before.hash:
            problems.append(Problem(after.key, f"does not follow {before.key}: the chain is "
                                               "broken (a batch was replaced or reordered)"))
    last = batches[-1] if batches else None
    # What names the newest batch: the head object, and the signed heartbeat of a running
    # forwarder (a rolled-back or deleted head does not hide deleted batches from it).
    anchors: list[tuple[str, str, int, str]] = []
    if head is not None:
        anchors.append((layout.audit_head_key(forwarder), "the head object", head.seq,
                        head.hash))
    if tip is not None:
        anchors.append((layout.heartbeat_key(forwarder), f"the heartbeat of {forwarder}",
                        *tip))
    if anchors:
        where, what, seq, _ = max(anchors, key=lambda a: a[2])
        if last is None or seq > last.seq:
            first = last.seq + 1 if last else 0
            if whole or last is not None:
                missing(where, first, seq, f" at the end ({what} names batch {seq})")
    for _where, what, seq, digest in anchors:
        if last is not None and seq == last.seq and digest and digest != last.hash:
            problems.append(Problem(last.key, f"differs from the batch {what} names "
                                              "(replaced)"))
    return problems


def _gaps(first: int, last: int, known: set[int]) -> list[tuple[int, int]]:
    """The runs of ``first..last`` not in ``known``."""
    runs: list[tuple[int, int]] = []
    for seq in range(first, last + 1):
        if seq in known:
            continue
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


def _missing(forwarder: str, first: int, last: int) -> str:
    which = f"batch {first}" if first == last else f"batches {first}-{last}"
    return f"{which} of forwarder {forwarder} missing (deleted)"
