"""Where things live in the mailbox: the one module that spells object keys.

::

    requests/<client>/<id>/head          sealed request head (small bodies inline)
    requests/<client>/<id>/body/<n>      streamed request body segments, written before the head
    claims/<id>/<attempt>                a forwarder's create-only claim (attempt 0000, 0001, …)
    claims/<id>/<attempt>.intent         what that attempt is about to execute (signed,
                                         create-only, stored before the upstream sees a byte)
    claims/<id>/done                     written once the request is answered; kept until expiry
    responses/<client>/<id>/head         sealed response head
    responses/<client>/<id>/body/<n>     streamed response body segments, the trailer last
    audit/<yyyy>/<mm>/<dd>/<forwarder>/<seq>.jsonl   signed, hash-chained audit batches
    audit/head/<forwarder>.json          the newest batch of each forwarder (signed)
    status/forwarders/<forwarder>.json   forwarder heartbeats

``<n>`` is zero-padded to 8 digits and ``<seq>`` to 12, so that listing order is segment
(and batch) order. Per-client prefixes let a bucket policy confine each GPU node's
credentials to its own objects. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Final, Literal

from wonders.crypto import ID_PATTERN, MAX_HEAD_OBJECT, MAX_SEGMENT_OBJECT, check_name

REQUESTS: Final = "requests/"
RESPONSES: Final = "responses/"
CLAIMS: Final = "claims/"
AUDIT: Final = "audit/"
AUDIT_HEADS: Final = "audit/head/"
HEARTBEATS: Final = "status/forwarders/"
_DIGITS = 8

#: The largest object of each kind a reader accepts: ``Store.get(key, max_bytes=…)`` refuses
#: a larger one before reading it (a 3 GiB "head" must not cost 3 GiB of memory).
MAX_HEAD_BYTES: Final = MAX_HEAD_OBJECT  # request and response heads, inline body included
MAX_SEGMENT_BYTES: Final = MAX_SEGMENT_OBJECT  # one stored body segment
MAX_CLAIM_BYTES: Final = 4096
MAX_INTENT_BYTES: Final = 64 * 1024  # a signed intent: the audit essentials of one attempt
MAX_HEARTBEAT_BYTES: Final = 64 * 1024
MAX_AUDIT_HEAD_BYTES: Final = 64 * 1024
#: The audit writer cuts batches so that none is larger (see AuditWriter).
MAX_AUDIT_BATCH_BYTES: Final = 64 * 1024 * 1024
_SEQ_DIGITS = 12

Direction = Literal["requests", "responses"]


def _checked(client: str, request_id: str) -> tuple[str, str]:
    check_name(client)
    if not ID_PATTERN.fullmatch(request_id):
        raise ValueError(f"not a request id: {request_id!r}")
    return client, request_id


def envelope_prefix(direction: Direction, client: str, request_id: str) -> str:
    client, request_id = _checked(client, request_id)
    return f"{direction}/{client}/{request_id}/"


def head_key(direction: Direction, client: str, request_id: str) -> str:
    return envelope_prefix(direction, client, request_id) + "head"


def body_key(direction: Direction, client: str, request_id: str, index: int) -> str:
    if not 0 <= index < 10**_DIGITS:
        raise ValueError(f"segment index {index} out of range")
    return envelope_prefix(direction, client, request_id) + f"body/{index:0{_DIGITS}d}"


def claim_prefix(request_id: str) -> str:
    if not ID_PATTERN.fullmatch(request_id):
        raise ValueError(f"not a request id: {request_id!r}")
    return f"{CLAIMS}{request_id}/"


def claim_key(request_id: str, attempt: int) -> str:
    """Attempt ``n`` at claiming a request; a takeover creates attempt ``n + 1``."""
    if not 0 <= attempt < 10_000:
        raise ValueError(f"claim attempt {attempt} out of range")
    return f"{claim_prefix(request_id)}{attempt:04d}"


def intent_key(request_id: str, attempt: int) -> str:
    """The intent of attempt ``n``: the audit essentials of what it is about to execute."""
    return claim_key(request_id, attempt) + ".intent"


def parse_claims_key(key: str) -> tuple[str, int | None, bool] | None:
    """``(request id, attempt, is an intent)`` of ``claims/<id>/<attempt>[.intent]``
    (attempt None for ``done``); None for anything else."""
    parts = key.split("/")
    if len(parts) != 3 or f"{parts[0]}/" != CLAIMS or not ID_PATTERN.fullmatch(parts[1]):
        return None
    name = parts[2]
    if name == "done":
        return parts[1], None, False
    number = name.removesuffix(".intent")
    if len(number) != 4 or not (number.isascii() and number.isdigit()):
        return None
    return parts[1], int(number), name.endswith(".intent")


def done_key(request_id: str) -> str:
    """Marks a request answered, so a copied head is never executed again."""
    return claim_prefix(request_id) + "done"


def parse_claim_key(key: str) -> tuple[str, int | None] | None:
    """``claims/<id>/<attempt>`` as (id, attempt), ``claims/<id>/done`` as (id, None);
    None for anything else (an intent included: see :func:`parse_claims_key`)."""
    parsed = parse_claims_key(key)
    if parsed is None or parsed[2]:
        return None
    return parsed[0], parsed[1]


def heartbeat_key(forwarder: str) -> str:
    return f"{HEARTBEATS}{check_name(forwarder)}.json"


@dataclass(frozen=True, slots=True)
class EnvelopeKey:
    """A parsed envelope object key; ``index`` is None for the head."""

    direction: Direction
    client: str
    request_id: str
    index: int | None


def parse_envelope_key(key: str) -> EnvelopeKey | None:
    """Parse a request/response object key; None if the key is not one (junk)."""
    parts = key.split("/")
    if len(parts) not in (4, 5) or parts[0] not in ("requests", "responses"):
        return None
    direction: Direction = "requests" if parts[0] == "requests" else "responses"
    try:
        client, request_id = _checked(parts[1], parts[2])
    except ValueError:
        return None
    if len(parts) == 4:
        return EnvelopeKey(direction, client, request_id, None) if parts[3] == "head" else None
    digits = parts[4]
    if parts[3] != "body" or len(digits) != _DIGITS or not (digits.isascii() and digits.isdigit()):
        return None
    return EnvelopeKey(direction, client, request_id, int(parts[4]))


def audit_day_prefix(day: date) -> str:
    """Every forwarder's audit batches of one (UTC) day."""
    return f"{AUDIT}{day:%Y/%m/%d}/"


def audit_forwarder_prefix(day: date, forwarder: str) -> str:
    return f"{audit_day_prefix(day)}{check_name(forwarder)}/"


def audit_batch_key(forwarder: str, seq: int, when: datetime) -> str:
    """Batch ``seq`` of a forwarder's chain, filed under the UTC day it was written."""
    if not 0 <= seq < 10**_SEQ_DIGITS:
        raise ValueError(f"audit sequence number {seq} out of range")
    return f"{audit_forwarder_prefix(when.date(), forwarder)}{seq:0{_SEQ_DIGITS}d}.jsonl"


def audit_head_key(forwarder: str) -> str:
    return f"{AUDIT_HEADS}{check_name(forwarder)}.json"


@dataclass(frozen=True, slots=True)
class AuditKey:
    """A parsed audit batch key."""

    day: date
    forwarder: str
    seq: int


def parse_audit_key(key: str) -> AuditKey | None:
    """Parse ``audit/<yyyy>/<mm>/<dd>/<forwarder>/<seq>.jsonl``; None for anything else."""
    parts = key.split("/")
    if len(parts) != 6 or parts[0] != AUDIT.rstrip("/"):
        return None
    yyyy, mm, dd, forwarder, name = parts[1:]
    seq = name.removesuffix(".jsonl")
    if (len(yyyy), len(mm), len(dd)) != (4, 2, 2) or not name.endswith(".jsonl"):
        return None
    if len(seq) != _SEQ_DIGITS or not seq.isdigit() or not (yyyy + mm + dd).isdigit():
        return None
    try:
        return AuditKey(date(int(yyyy), int(mm), int(dd)), check_name(forwarder), int(seq))
    except ValueError:
        return None
