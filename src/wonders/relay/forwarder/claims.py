"""Claims: which forwarder instance executes a request, as a sans-I/O state machine.

:class:`ClaimMachine` is fed *events* (what the store answered, with the time it
answered) and returns the next *action* (what to ask the store, or how the claim ended),
as h11 does for HTTP/1.1. It does no I/O and reads no clock, so every rule below is
tested with tables (``tests/relay/test_claims.py``). :func:`drive` is its adapter: a short
loop that carries the actions out against a :class:`~wonders.mailbox.Store`.

The rules, in the order the machine applies them:

1. ``claims/<id>/0000`` is put create-only. Created: attempt 0 is won.
2. It exists, the request is *young* (issued less than ``stale_after / 2`` ago) and this
   is the first look at it: a race was just lost to a claim made moments ago, which cannot
   be stale. Look again after ``recheck`` seconds.
3. Otherwise list ``claims/<id>/``. A ``done`` marker: the request was answered and only
   leftovers remain, so delete the request's objects (the claims stay for the janitor).
4. Read the latest attempt's claim. Junk or missing: stale.
5. A claim of this instance is stale: one task per request runs here, and it is the one
   asking, so the claim is left from an earlier task that ended without answering.
6. Read the heartbeat of the claim's forwarder. Missing, junk or not signed by the
   forwarder key: stale once the claim is older than ``stale_after``. Another instance's
   heartbeat: that forwarder restarted, the claim is stale. Otherwise stale only if
   :class:`~wonders.relay.records.Liveness` judges it dead (alive, or pending while the
   clocks disagree: look again after ``recheck``).
7. A stale claim is taken over by putting the next attempt, create-only. Exists: another
   forwarder took it over first; look again after ``recheck``. Created: the attempt is
   won, and the attempt before it, if it was another instance's (or unreadable), may
   have died after storing its intent: complete that intent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any

from wonders.crypto import PublicBundle, request_id_time
from wonders.errors import ObjectExists, ObjectNotFound, UnsafeObject
from wonders.mailbox import Store, layout
from wonders.relay.records import Claim, Liveness, parse_claim, parse_heartbeat

__all__ = [
    "Action",
    "Answered",
    "ClaimMachine",
    "ClaimRead",
    "ClaimRules",
    "Claimant",
    "Created",
    "Event",
    "Exists",
    "GetClaim",
    "GetHeartbeat",
    "HeartbeatRead",
    "ListClaims",
    "Listed",
    "PutClaim",
    "Recheck",
    "Won",
    "drive",
]


# ---------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class PutClaim:
    """Put ``data`` (the claim of ``attempt``) at ``key``, create-only."""

    key: str
    attempt: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ListClaims:
    """List the keys under ``prefix`` (the request's claims)."""

    prefix: str


@dataclass(frozen=True, slots=True)
class GetClaim:
    """Read the claim at ``key`` (the latest attempt)."""

    key: str


@dataclass(frozen=True, slots=True)
class GetHeartbeat:
    """Read the heartbeat at ``key`` (of the forwarder holding the claim)."""

    key: str


@dataclass(frozen=True, slots=True)
class Answered:
    """Ends the claim: the request was answered; delete its objects (claims stay)."""


@dataclass(frozen=True, slots=True)
class Recheck:
    """Ends the claim: another forwarder holds the request; look again at ``at``."""

    at: float


@dataclass(frozen=True, slots=True)
class Won:
    """Ends the claim: ``attempt`` is this instance's. ``took_over``: a stale claim was
    taken over; ``complete``: the earlier attempt whose intent to complete, if any."""

    attempt: int
    took_over: bool = False
    complete: int | None = None


Action = PutClaim | ListClaims | GetClaim | GetHeartbeat | Answered | Recheck | Won
#: The actions that end a claim; the others ask the store something.
ENDS = (Answered, Recheck, Won)


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Created:
    """The create-only put of ``attempt`` succeeded."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Exists:
    """The create-only put of ``attempt`` found the key taken."""

    attempt: int


@dataclass(frozen=True, slots=True)
class Listed:
    """The keys listed under the claims prefix (anything, as the store listed it)."""

    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClaimRead:
    """The latest claim's bytes; None if it was missing or refused unread."""

    data: bytes | None


@dataclass(frozen=True, slots=True)
class HeartbeatRead:
    """The claiming forwarder's heartbeat bytes; None if missing or refused unread."""

    data: bytes | None


Event = Created | Exists | Listed | ClaimRead | HeartbeatRead


# ---------------------------------------------------------------------------- machine


@dataclass(frozen=True, slots=True)
class Claimant:
    """Who claims: this forwarder and instance; ``signer`` verifies heartbeats."""

    forwarder: str
    instance: str
    signer: PublicBundle


@dataclass(frozen=True, slots=True)
class ClaimRules:
    """``stale_after`` and ``recheck`` in seconds; ``liveness`` judges heartbeats."""

    stale_after: float
    recheck: float
    liveness: Liveness


class _State(Enum):
    FIRST = auto()  # putting attempt 0
    LISTING = auto()
    READING = auto()  # the latest claim
    BEAT = auto()  # its forwarder's heartbeat
    TAKING = auto()  # putting the next attempt
    ENDED = auto()


class ClaimMachine:
    """One claim of request ``rid``. ``rechecking``: this request was looked at before
    (it is due for a recheck), so a young one is no longer given the benefit of the doubt.

    Call :meth:`start`, then :meth:`send` with the event each action led to, until an
    action in :data:`ENDS` comes back. ``now`` is the wall clock (Unix seconds)."""

    def __init__(self, rid: str, claimant: Claimant, rules: ClaimRules, *,
                 rechecking: bool = False) -> None:
        self.rid = rid
        self._me, self._rules, self._rechecking = claimant, rules, rechecking
        self._state = _State.FIRST
        self._begun = 0.0  # when the claim began: claims are stamped with it
        self._attempts = 0  # attempts listed
        self._held: Claim | None = None  # the latest claim read (None: junk or missing)
        self._taking = 0  # the attempt being put

    def start(self, now: float) -> Action:
        self._begun = now
        return self._put(0, _State.FIRST)

    def send(self, event: Event, now: float) -> Action:
        """The next action, given what the last one led to."""
        handler = _TRANSITIONS.get((self._state, type(event)))
        if handler is None:
            raise RuntimeError(f"claim of {self.rid}: {type(event).__name__} is not an "
                               f"answer to what was asked ({self._state.name})")
        action = handler(self, event, now)
        if isinstance(action, ENDS):
            self._state = _State.ENDED
        return action

    # -- transitions, one per (state, event): see _TRANSITIONS

    def _first_created(self, event: Created, now: float) -> Action:
        self._check_attempt(event.attempt)
        return Won(0)

    def _first_exists(self, event: Exists, now: float) -> Action:
        self._check_attempt(event.attempt)
        young = self._begun - request_id_time(self.rid) < self._rules.stale_after / 2
        if young and not self._rechecking:
            return self._recheck()  # rule 2
        self._state = _State.LISTING
        return ListClaims(layout.claim_prefix(self.rid))

    def _listed(self, event: Listed, now: float) -> Action:
        keys = [k for k in event.keys if layout.parse_claim_key(k) is not None]
        if layout.done_key(self.rid) in keys:
            return Answered()  # rule 3
        attempts = sorted(k for k in keys if k.rsplit("/", 1)[1].isdigit())
        self._attempts = len(attempts)
        self._state = _State.READING
        return GetClaim(attempts[-1] if attempts else layout.claim_key(self.rid, 0))

    def _claim_read(self, event: ClaimRead, now: float) -> Action:
        self._held = held = parse_claim(event.data) if event.data is not None else None
        if held is None or held.instance == self._me.instance:
            return self._take_over()  # rules 4 and 5
        try:
            key = layout.heartbeat_key(held.forwarder)
        except ValueError:  # not a forwarder name: no heartbeat can be there
            return self._judged(self._old(held, now))
        self._state = _State.BEAT
        return GetHeartbeat(key)

    def _heartbeat_read(self, event: HeartbeatRead, now: float) -> Action:
        held = self._held
        assert held is not None
        beat = parse_heartbeat(event.data, self._me.signer) if event.data is not None else None
        if beat is None:
            return self._judged(self._old(held, now))
        if beat.instance != held.instance:
            return self._take_over()  # that forwarder restarted: the claimer is gone
        # alive or pending (its clock is off from ours; look again later): not stale
        return self._judged(self._rules.liveness.judge(beat, now) == "dead")

    def _taken(self, event: Created, now: float) -> Action:
        self._check_attempt(event.attempt)
        held, attempt = self._held, self._taking
        other = held is None or held.instance != self._me.instance
        return Won(attempt, took_over=True,
                   complete=attempt - 1 if other and attempt >= 1 else None)

    def _taken_first(self, event: Exists, now: float) -> Action:
        self._check_attempt(event.attempt)
        return self._recheck()  # lost the takeover race

    # -- helpers

    def _old(self, held: Claim, now: float) -> bool:
        return now - held.claimed > self._rules.stale_after

    def _judged(self, stale: bool) -> Action:
        return self._take_over() if stale else self._recheck()

    def _take_over(self) -> Action:
        held = self._held
        return self._put((held.attempt if held else self._attempts - 1) + 1, _State.TAKING)

    def _put(self, attempt: int, state: _State) -> PutClaim:
        claim = Claim(self._me.forwarder, self._me.instance, attempt, self._begun)
        key = layout.claim_key(self.rid, attempt)
        self._state, self._taking = state, attempt
        return PutClaim(key, attempt, claim.to_json())

    def _recheck(self) -> Recheck:
        return Recheck(self._begun + self._rules.recheck)

    def _check_attempt(self, attempt: int) -> None:
        if attempt != self._taking:
            raise RuntimeError(f"claim of {self.rid}: attempt {attempt} was not put "
                               f"(attempt {self._taking} was)")


#: The machine's transitions: (state, event type) -> handler. Anything else is refused.
#: (A handler takes the event of its row's type; ``Any`` says so to mypy.)
_TRANSITIONS: dict[tuple[_State, type], Callable[[ClaimMachine, Any, float], Action]] = {
    (_State.FIRST, Created): ClaimMachine._first_created,
    (_State.FIRST, Exists): ClaimMachine._first_exists,
    (_State.LISTING, Listed): ClaimMachine._listed,
    (_State.READING, ClaimRead): ClaimMachine._claim_read,
    (_State.BEAT, HeartbeatRead): ClaimMachine._heartbeat_read,
    (_State.TAKING, Created): ClaimMachine._taken,
    (_State.TAKING, Exists): ClaimMachine._taken_first,
}


# ---------------------------------------------------------------------------- adapter


async def drive(machine: ClaimMachine, store: Store,
                clock: Callable[[], float]) -> Answered | Recheck | Won:
    """Carry the machine's actions out against ``store`` until the claim ends; return how
    it ended. Store errors other than the answers below propagate."""
    action = machine.start(clock())
    while not isinstance(action, Answered | Recheck | Won):
        event = await _carry_out(action, store)
        action = machine.send(event, clock())
    return action


async def _carry_out(action: PutClaim | ListClaims | GetClaim | GetHeartbeat,
                     store: Store) -> Event:
    match action:
        case PutClaim(key, attempt, data):
            try:
                await store.put(key, data, create_only=True)
            except ObjectExists:
                return Exists(attempt)
            return Created(attempt)
        case ListClaims(prefix):
            return Listed(tuple([k async for k in store.list(prefix)]))
        case GetClaim(key):
            try:
                return ClaimRead(await store.get(key, max_bytes=layout.MAX_CLAIM_BYTES))
            except (ObjectNotFound, UnsafeObject):  # junk: as parse_claim, stale
                return ClaimRead(None)
        case GetHeartbeat(key):
            try:
                return HeartbeatRead(
                    await store.get(key, max_bytes=layout.MAX_HEARTBEAT_BYTES))
            except (ObjectNotFound, ValueError, UnsafeObject):
                return HeartbeatRead(None)
