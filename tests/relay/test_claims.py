"""The claim machine (wonders.relay.forwarder.claims) as tables of events and actions: no
store, no network, no clock. Each row is a script: the events the store answers with, and
the action the machine must take after each (the first after ``start``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from wonders.crypto import PrivateKey, new_request_id
from wonders.mailbox import layout
from wonders.relay.forwarder.claims import (
    Action,
    Answered,
    Claimant,
    ClaimMachine,
    ClaimRead,
    ClaimRules,
    Created,
    Event,
    Exists,
    GetClaim,
    GetHeartbeat,
    HeartbeatRead,
    ListClaims,
    Listed,
    PutClaim,
    Recheck,
    Won,
)
from wonders.relay.records import Claim, Heartbeat, Liveness

NOW = 1_795_305_600.0
STALE_AFTER = 30.0
RECHECK = 0.25
SKEW = 300.0
KEY = PrivateKey.generate("fw")
OTHER_KEY = PrivateKey.generate("fw")  # same kid, another key: a forged heartbeat
ME = Claimant("fw-a", "inst-a", KEY.public)
OLD = new_request_id(NOW - 100)  # well past the young window of stale_after / 2
YOUNG = new_request_id(NOW - 1)


def put(rid: str, attempt: int) -> PutClaim:
    """The claim this instance puts for ``attempt``, stamped when the claim began."""
    claim = Claim(ME.forwarder, ME.instance, attempt, NOW)
    return PutClaim(layout.claim_key(rid, attempt), attempt, claim.to_json())


def claim(rid: str, attempt: int) -> str:
    return layout.claim_key(rid, attempt)


def held(attempt: int = 0, *, by: str = "inst-b", forwarder: str = "fw-b",
         age: float = 100.0) -> ClaimRead:
    return ClaimRead(Claim(forwarder, by, attempt, NOW - age).to_json())


def beat(instance: str = "inst-b", *, age: float = 1.0, key: PrivateKey = KEY) -> HeartbeatRead:
    heartbeat = Heartbeat(forwarder="fw-b", instance=instance, kid=key.kid, version="1",
                          started=NOW - 1000, time=NOW - age, interval=5.0)
    return HeartbeatRead(heartbeat.sign(key))


HEARTBEAT_B = GetHeartbeat(layout.heartbeat_key("fw-b"))


@dataclass(frozen=True)
class Case:
    id: str
    rid: str
    script: list[tuple[Event | None, Action]]  # (event, action after it); None: start
    rechecking: bool = False


def _to_held(rid: str, *events: tuple[Event, Action]) -> list[tuple[Event | None, Action]]:
    """Lose the race for attempt 0 of an old request, list one claim, read it; then go on."""
    return [(None, put(rid, 0)), (Exists(0), ListClaims(layout.claim_prefix(rid))),
            (Listed((claim(rid, 0),)), GetClaim(claim(rid, 0))), *events]


CASES = [
    Case("won at 0", OLD, [(None, put(OLD, 0)), (Created(0), Won(0))]),
    Case("lost a young race: look again later", YOUNG,
         [(None, put(YOUNG, 0)), (Exists(0), Recheck(NOW + RECHECK))]),
    Case("a young request looked at again is examined", YOUNG,
         [(None, put(YOUNG, 0)), (Exists(0), ListClaims(layout.claim_prefix(YOUNG)))],
         rechecking=True),
    Case("answered: the done marker is there", OLD, [
        (None, put(OLD, 0)), (Exists(0), ListClaims(layout.claim_prefix(OLD))),
        (Listed((claim(OLD, 0), layout.done_key(OLD))), Answered())]),
    Case("stale: its heartbeat is missing and the claim old", OLD, _to_held(
        OLD, (held(), HEARTBEAT_B), (HeartbeatRead(None), put(OLD, 1)),
        (Created(1), Won(1, took_over=True, complete=0)))),
    Case("not stale: its heartbeat is missing but the claim young", OLD, _to_held(
        OLD, (held(age=5.0), HEARTBEAT_B), (HeartbeatRead(None), Recheck(NOW + RECHECK)))),
    Case("stale: its heartbeat is junk", OLD, _to_held(
        OLD, (held(), HEARTBEAT_B), (HeartbeatRead(b"{junk"), put(OLD, 1)))),
    Case("stale: its heartbeat is signed by another key", OLD, _to_held(
        OLD, (held(), HEARTBEAT_B), (beat(key=OTHER_KEY), put(OLD, 1)))),
    Case("stale: its heartbeat is another instance's (a restart)", OLD, _to_held(
        OLD, (held(age=1.0), HEARTBEAT_B), (beat("inst-c"), put(OLD, 1)),
        (Created(1), Won(1, took_over=True, complete=0)))),
    Case("stale: its forwarder is dead by Liveness", OLD, _to_held(
        OLD, (held(), HEARTBEAT_B), (beat(age=STALE_AFTER + SKEW + 1), put(OLD, 1)))),
    Case("alive: look again later", OLD, _to_held(
        OLD, (held(), HEARTBEAT_B), (beat(age=1.0), Recheck(NOW + RECHECK)))),
    Case("pending (its clock is off): look again later", OLD, _to_held(
        OLD, (held(), HEARTBEAT_B), (beat(age=STALE_AFTER + 60), Recheck(NOW + RECHECK)))),
    Case("own instance's leftover: taken over, no intent to complete", OLD, _to_held(
        OLD, (held(by=ME.instance, forwarder=ME.forwarder), put(OLD, 1)),
        (Created(1), Won(1, took_over=True, complete=None)))),
    Case("junk latest claim: the next attempt after those listed", OLD, [
        (None, put(OLD, 0)), (Exists(0), ListClaims(layout.claim_prefix(OLD))),
        (Listed((claim(OLD, 1), claim(OLD, 0))), GetClaim(claim(OLD, 1))),
        (ClaimRead(b"not json"), put(OLD, 2)),
        (Created(2), Won(2, took_over=True, complete=1))]),
    Case("claims gone meanwhile: attempt 0 again", OLD, [
        (None, put(OLD, 0)), (Exists(0), ListClaims(layout.claim_prefix(OLD))),
        (Listed(()), GetClaim(claim(OLD, 0))), (ClaimRead(None), put(OLD, 0)),
        (Created(0), Won(0, took_over=True, complete=None))]),
    Case("the latest attempt is read; odd keys and intents are not claims", OLD, [
        (None, put(OLD, 0)), (Exists(0), ListClaims(layout.claim_prefix(OLD))),
        (Listed((claim(OLD, 2), f"{claim(OLD, 2)}.intent", claim(OLD, 0),
                 f"{layout.claim_prefix(OLD)}zz", "claims/elsewhere/done")),
         GetClaim(claim(OLD, 2))),
        (held(2), HEARTBEAT_B), (HeartbeatRead(None), put(OLD, 3)),
        (Created(3), Won(3, took_over=True, complete=2))]),
    Case("a forwarder name that names no heartbeat: judged by the claim's age", OLD, _to_held(
        OLD, (held(forwarder="../up"), put(OLD, 1)))),
    Case("lost the takeover race", OLD, _to_held(
        OLD, (held(), HEARTBEAT_B), (HeartbeatRead(None), put(OLD, 1)),
        (Exists(1), Recheck(NOW + RECHECK)))),
]


def _machine(rid: str, rechecking: bool = False) -> ClaimMachine:
    # a fixed monotonic clock: Liveness judges each heartbeat as first seen
    rules = ClaimRules(STALE_AFTER, RECHECK, Liveness(STALE_AFTER, SKEW, lambda: 0.0))
    return ClaimMachine(rid, ME, rules, rechecking=rechecking)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_claim_machine(case: Case) -> None:
    machine = _machine(case.rid, case.rechecking)
    for event, expected in case.script:
        action = machine.start(NOW) if event is None else machine.send(event, NOW)
        assert action == expected, (event, action)


def test_a_claim_is_stamped_with_its_start_and_judged_at_each_answer() -> None:
    """The takeover claim carries the time the claim began; a heartbeat is judged at the
    time it was read (here: old enough to be stale only by then)."""
    machine = _machine(OLD)
    machine.start(NOW)
    machine.send(Exists(0), NOW)
    machine.send(Listed((claim(OLD, 0),)), NOW)
    machine.send(held(age=STALE_AFTER - 1), NOW)
    assert machine.send(HeartbeatRead(None), NOW + 2) == put(OLD, 1)


@pytest.mark.parametrize("event", [Listed(()), Created(1), HeartbeatRead(None)],
                         ids=["a listing", "another attempt", "a heartbeat"])
def test_an_answer_to_something_not_asked_is_refused(event: Event) -> None:
    machine = _machine(OLD)
    machine.start(NOW)
    with pytest.raises(RuntimeError):
        machine.send(event, NOW)


def test_nothing_is_accepted_once_the_claim_ended() -> None:
    machine = _machine(OLD)
    machine.start(NOW)
    assert machine.send(Created(0), NOW) == Won(0)
    with pytest.raises(RuntimeError):
        machine.send(Created(0), NOW)
