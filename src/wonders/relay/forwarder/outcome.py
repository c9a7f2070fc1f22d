"""What one request came to: the tally of outcomes, the :class:`_Outcome` of one
attempt, its audit record (:func:`_record`) and its log line (:func:`_log`). No I/O here.

``_record`` and ``_log`` take the exchange as ``self``: they read its ``clock``,
``settings`` and ``_keep_query``. Their bodies are as they were in the forwarder's one
module (the audit record is being made a dataclass beside this change), so they still
measure ``total_ms`` with ``time.monotonic()``: the forwarder's default monotonic clock;
``started`` comes from the forwarder's ``monotonic``, so the two agree unless a caller
injects another.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from wonders.audit import iso_time, redact_headers, redact_target
from wonders.crypto import Headers, OpenedRequest

if TYPE_CHECKING:
    from collections.abc import Callable

    from wonders.relay.forwarder.settings import ForwarderSettings

__all__ = ["Counters", "_Outcome", "_log", "_record"]

log = logging.getLogger("wonders.forwarder")


class _Recording(Protocol):
    """What :func:`_record` and :func:`_log` read of the exchange they are given."""

    clock: Callable[[], float]
    settings: ForwarderSettings
    _keep_query: bool


@dataclass
class Counters:
    requests: int = 0
    allowed: int = 0
    denied: int = 0
    rejected: int = 0
    errors: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


@dataclass
class _Outcome:
    """What one request came to, for the log line and the audit record."""

    status: int = 0
    decision: str = "-"
    rule: str = ""
    error: str = ""
    bytes_up: int = 0
    bytes_down: int = 0
    upstream_seconds: float | None = None
    request_sha256: bytes | None = None
    response_sha256: bytes | None = None
    response_headers: Headers = ()
    redirects: list[str] = dataclasses.field(default_factory=list)
    #: The URL with its host normalised: what is decided, fetched and audited ("" if it
    #: cannot be normalised, and is denied as malformed).
    url: str = ""
    #: Nothing was done (the head vanished, or an earlier attempt already answered).
    nothing: bool = False
    #: An intent was stored for this attempt: its record must be written, whatever happens.
    intent: bool = False


def _record(
    self: _Recording, client: str, rid: str, attempt: int, request: OpenedRequest | None,
    outcome: _Outcome, claimed: float, started: float,
) -> dict[str, Any]:
    """The audit record of one attempt (see :mod:`wonders.audit`)."""
    record: dict[str, Any] = {
        "time": iso_time(self.clock()), "forwarder": self.settings.id, "client": client,
        "id": rid, "attempt": attempt, "method": None, "scheme": None, "host": None,
        "port": None, "path": None, "decision": outcome.decision,
        "rule": outcome.rule or None, "status": outcome.status or None,
        "error": outcome.error or None, "up": outcome.bytes_up,
        "down": outcome.bytes_down, "queue_ms": None,
        "upstream_ms": _ms(outcome.upstream_seconds),
        "total_ms": _ms(time.monotonic() - started),
        "request_sha256": outcome.request_sha256.hex() if outcome.request_sha256 else None,
        "response_sha256": (outcome.response_sha256.hex() if outcome.response_sha256
                            else None),
        "request_headers": [],
        "response_headers": redact_headers(outcome.response_headers,
                                           keep_query=self._keep_query),
    }
    if outcome.intent:
        record["intent"] = True
    if request is not None:
        fetched = outcome.url or request.head.url
        url = urlsplit(fetched)
        record.update(
            method=request.head.method, scheme=url.scheme, host=url.hostname,
            port=url.port or (443 if url.scheme == "https" else 80),
            path=redact_target(fetched, keep_query=self._keep_query),
            queue_ms=_ms(claimed - request.issued),
            request_headers=redact_headers(request.head.headers,
                                           keep_query=self._keep_query),
        )
    if outcome.redirects:
        record["redirects"] = outcome.redirects
    return record


def _log(self: _Recording, client: str, rid: str, request: OpenedRequest | None,
         outcome: _Outcome, started: float) -> None:
    method = request.head.method if request else "-"
    host = urlsplit(request.head.url).hostname if request else "-"
    ms = (time.monotonic() - started) * 1000
    log.info(
        "id=%s client=%s method=%s host=%s decision=%s status=%s error=%s up=%d down=%d "
        "ms=%.0f", rid, client, method, host, outcome.decision, outcome.status or "-",
        outcome.error or "-", outcome.bytes_up, outcome.bytes_down, ms,
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(max(0.0, seconds) * 1000, 1)
