"""The small JSON records of the relay: claims and heartbeats. Pure code, no I/O.

**Claims** (``claims/<id>/<attempt>``) say which forwarder instance took a request. They
are created create-only, so one forwarder wins each attempt. A claim is *stale* when the
instance that wrote it is gone: its forwarder's heartbeat is missing or old, or names
another instance (the forwarder restarted). Another forwarder may then take the request
over by creating the next attempt.

**Heartbeats** (``status/forwarders/<forwarder>.json``) are written every few seconds by
each forwarder and signed with the forwarder key: ``{"body": "<json text>", "signature":
"<base64 Ed25519 over HEARTBEAT_DOMAIN + the body text>"}``, the body's ``v`` being
:data:`HEARTBEAT_VERSION`. Clients check them (with the pinned forwarder bundle) to fail
fast when no forwarder is alive; forwarders check each other's to find stale claims.
A heartbeat of another version, or signed without the domain string (version 1, as
earlier builds wrote), does not verify: its forwarder is not seen (``docs/PROTOCOL.md``
§4.1).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final, Literal

from cryptography.exceptions import InvalidSignature

from wonders.crypto import PrivateKey, PublicBundle

__all__ = [
    "HEARTBEAT_DOMAIN", "HEARTBEAT_VERSION", "PING_HOST", "PING_URL", "Claim", "Heartbeat",
    "Liveness", "parse_claim", "parse_heartbeat",
]

#: A request to this URL is answered by the forwarder itself (``wonders ping``): a signed
#: round trip through the mailbox that reaches no server. ``.invalid`` is reserved
#: (RFC 2606), so no real host can be shadowed.
PING_HOST = "ping.wonders.invalid"
PING_URL = f"https://{PING_HOST}/"

#: The heartbeat's format version (its body's ``v``). Version 2 signs over
#: :data:`HEARTBEAT_DOMAIN` + the body; version 1 signed the body alone.
HEARTBEAT_VERSION: Final = 2
#: Domain separation for heartbeat signatures, in the form of the envelope's
#: (``"wonders1 head\\0"``, ``"wonders1 trailer\\0"``): a heartbeat signature is never
#: valid as any other object the forwarder key signs, nor the other way round.
HEARTBEAT_DOMAIN: Final = b"wonders1 heartbeat\x00"


@dataclass(frozen=True, slots=True)
class Claim:
    """Attempt ``attempt`` at a request, by ``instance`` of forwarder ``forwarder``."""

    forwarder: str
    instance: str
    attempt: int
    claimed: float

    def to_json(self) -> bytes:
        return json.dumps({"v": 1, **asdict(self)}).encode()


def parse_claim(data: bytes) -> Claim | None:
    """The claim in ``data``, or None if it is not one (a reader treats junk as stale)."""
    try:
        doc = json.loads(data)
        return Claim(str(doc["forwarder"]), str(doc["instance"]), int(doc["attempt"]),
                     float(doc["claimed"]))
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A forwarder instance's signed statement that it is alive.

    Attributes:
        forwarder: the forwarder's id (several instances of one deployment differ here).
        instance: random per process start; a new value means the forwarder restarted.
        kid: the key id that signs its responses.
        time: when this heartbeat was written (Unix seconds, the forwarder's clock).
        interval: seconds until the next one.
    """

    forwarder: str
    instance: str
    kid: str
    version: str
    started: float
    time: float
    interval: float
    in_flight: int = 0
    policy: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    #: The audit log: newest batch ``seq``, records ``waiting``, ``blocked`` (taking no
    #: requests until they are stored), and the store error while ``failing``.
    audit: dict[str, Any] = field(default_factory=dict)

    def sign(self, key: PrivateKey) -> bytes:
        body = json.dumps({"v": HEARTBEAT_VERSION, **asdict(self)}, sort_keys=True)
        signature = key.signing.sign(HEARTBEAT_DOMAIN + body.encode())
        doc = {"body": body, "signature": base64.b64encode(signature).decode()}
        return json.dumps(doc, indent=1).encode()


_MEMBERS = frozenset(f.name for f in fields(Heartbeat))


def parse_heartbeat(data: bytes, signer: PublicBundle) -> Heartbeat | None:
    """The heartbeat in ``data`` if ``signer`` signed it (over :data:`HEARTBEAT_DOMAIN` and
    the body) and it is of :data:`HEARTBEAT_VERSION`, else None. Members it does not know
    are ignored."""
    try:
        doc = json.loads(data)
        body: str = doc["body"]
        signer.signing.verify(base64.b64decode(doc["signature"], validate=True),
                              HEARTBEAT_DOMAIN + body.encode())
        members: dict[str, Any] = json.loads(body)
        if members.get("v") != HEARTBEAT_VERSION:
            return None
        beat = Heartbeat(**{k: v for k, v in members.items() if k in _MEMBERS})
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error,
            InvalidSignature):
        return None
    if beat.kid != signer.kid:
        return None
    return beat


Verdict = Literal["alive", "dead", "pending"]


@dataclass
class _Seen:
    time: float  # the heartbeat's own time, by its writer's clock
    at: float  # when this value was first seen, by our monotonic clock
    moved: bool  # the value has changed while we watched
    skewed: bool  # when first seen, its time was more than stale_after from ours


@dataclass
class Liveness:
    """Whether a forwarder is alive, from its heartbeats, when the two clocks may differ by
    up to ``skew`` seconds.

    A heartbeat seen to change within the last ``stale_after`` seconds (of our own,
    monotonic clock) is alive, whatever its clock says. Before any change has been seen,
    one whose time is within ``stale_after`` of ours is alive; one further off, but within
    ``stale_after + skew``, is *pending*: look again after its interval, and it is alive
    if it moved. Anything else is dead.
    """

    stale_after: float
    skew: float
    monotonic: Callable[[], float] = time.monotonic
    _seen: dict[tuple[str, str], _Seen] = field(default_factory=dict)

    def judge(self, beat: Heartbeat, now: float) -> Verdict:
        """``now`` is our wall clock (Unix seconds), the one the skew is measured against."""
        key = (beat.forwarder, beat.instance)
        here = self.monotonic()
        age = now - beat.time
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen(beat.time, here, False, abs(age) > self.stale_after)
        elif seen.time != beat.time:
            seen.time, seen.at, seen.moved = beat.time, here, True
        if seen.moved:
            return "alive" if here - seen.at <= self.stale_after else "dead"
        if not seen.skewed:
            return "alive" if abs(age) <= self.stale_after else "dead"
        if here - seen.at <= self.stale_after and abs(age) <= self.stale_after + self.skew:
            return "pending"
        return "dead"
