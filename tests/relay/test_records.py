"""Heartbeats: signed over a domain string, of one format version; what a reader does with
a heartbeat that is not (docs/PROTOCOL.md §4.1)."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from pathlib import Path

import pytest

from wonders.crypto import PrivateKey
from wonders.errors import NoForwarder
from wonders.mailbox import DirectoryStore, layout
from wonders.relay import RelayClient
from wonders.relay.records import (
    HEARTBEAT_DOMAIN,
    HEARTBEAT_VERSION,
    Heartbeat,
    parse_heartbeat,
)

FORWARDER = PrivateKey.generate("fw1")


def _beat(now: float | None = None) -> Heartbeat:
    now = time.time() if now is None else now
    return Heartbeat(forwarder="fw1", instance="a1b2", kid=FORWARDER.kid, version="0.1.0",
                     started=now - 60, time=now, interval=5.0, in_flight=1, policy="ab" * 32,
                     counters={"requests": 3}, audit={"seq": 4, "hash": "cd" * 32,
                                                      "waiting": 0, "blocked": False,
                                                      "failing": ""})


def _signed(body: dict[str, object], *, domain: bytes, key: PrivateKey = FORWARDER) -> bytes:
    """A heartbeat object whose signature covers ``domain`` + the body text."""
    text = json.dumps(body, sort_keys=True)
    signature = key.signing.sign(domain + text.encode())
    return json.dumps({"body": text, "signature": base64.b64encode(signature).decode()}).encode()


def _members(beat: Heartbeat, version: int = HEARTBEAT_VERSION) -> dict[str, object]:
    return {"v": version, **dataclasses.asdict(beat)}


def test_a_heartbeat_signed_over_the_domain_string_verifies() -> None:
    beat = _beat()
    data = beat.sign(FORWARDER)
    assert parse_heartbeat(data, FORWARDER.public) == beat
    body = json.loads(data)["body"]
    assert json.loads(body)["v"] == HEARTBEAT_VERSION == 2
    FORWARDER.public.signing.verify(base64.b64decode(json.loads(data)["signature"]),
                                    b"wonders1 heartbeat\x00" + body.encode())


def test_a_heartbeat_signed_without_the_domain_string_is_rejected() -> None:
    assert parse_heartbeat(_signed(_members(_beat()), domain=b""), FORWARDER.public) is None


def test_a_version_1_heartbeat_as_earlier_builds_wrote_it_is_rejected() -> None:
    """Version 1 signed the body text alone."""
    old = _signed(_members(_beat(), version=1), domain=b"")
    assert parse_heartbeat(old, FORWARDER.public) is None


@pytest.mark.parametrize("version", [1, 3, None, "2"], ids=["v1", "v3", "no-v", "v-text"])
def test_a_heartbeat_of_another_version_is_rejected_even_when_signed_over_the_domain(
    version: object,
) -> None:
    members = _members(_beat())
    if version is None:
        del members["v"]
    else:
        members["v"] = version
    assert parse_heartbeat(_signed(members, domain=HEARTBEAT_DOMAIN), FORWARDER.public) is None


def test_a_heartbeat_signed_by_another_key_or_naming_another_kid_is_rejected() -> None:
    other = PrivateKey.generate("fw1")
    assert parse_heartbeat(_beat().sign(other), FORWARDER.public) is None
    foreign = dataclasses.replace(_beat(), kid=other.kid)
    assert parse_heartbeat(foreign.sign(FORWARDER), FORWARDER.public) is None


def test_members_a_reader_does_not_know_are_ignored() -> None:
    beat = _beat()
    members = {**_members(beat), "load": 0.5}
    assert parse_heartbeat(_signed(members, domain=HEARTBEAT_DOMAIN), FORWARDER.public) == beat


@pytest.mark.parametrize("data", [b"", b"{}", b"[]", b'{"body": 1, "signature": ""}',
                                  b'{"body": "[]", "signature": "!!"}'],
                         ids=["empty", "no-members", "a-list", "body-not-text", "bad-base64"])
def test_junk_is_not_a_heartbeat(data: bytes) -> None:
    assert parse_heartbeat(data, FORWARDER.public) is None


async def test_an_old_forwarders_heartbeat_leaves_a_new_client_with_no_forwarder(
    tmp_path: Path,
) -> None:
    """A forwarder of heartbeat version 1 on the mailbox is not seen: the client answers
    at once that no forwarder is alive, and sees the forwarder once it writes version 2."""
    store = DirectoryStore(tmp_path)
    client = PrivateKey.generate("gpu01")
    key = layout.heartbeat_key("fw1")
    await store.put(key, _signed(_members(_beat(), version=1), domain=b""))
    async with RelayClient(store, client, FORWARDER.public) as relay:
        assert not await relay.forwarder_alive(refresh=True)
        with pytest.raises(NoForwarder):
            await relay.request("GET", "https://example.com/", timeout=5)
        await store.put(key, _beat().sign(FORWARDER))
        assert await relay.forwarder_alive(refresh=True)
