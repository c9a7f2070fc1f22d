"""The audit log: what a record holds and hides, batches and chains, verification of a
tampered log, restarts, and no record lost when the audit store fails."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from tests.eventually import eventually
from tests.relay.harness import (
    FAST,
    Keys,
    OutageStore,
    Upstream,
    client_for,
    make_keys,
    running_forwarder,
)
from wonders.audit import (
    REDACTED,
    AuditWriter,
    Batch,
    encode_batch,
    parse_batch,
    parse_time,
    read_batches,
    redact_headers,
    redact_target,
    verify_log,
)
from wonders.audit import batch_keys as list_batch_keys
from wonders.crypto import PrivateKey, new_request_id
from wonders.mailbox import DirectoryStore, Store, layout
from wonders.relay.records import Heartbeat, parse_heartbeat

AUDITED = dataclasses.replace(FAST, audit_interval=0.05)


@pytest.fixture
def keys(tmp_path: Path, upstream: Upstream) -> Keys:
    return make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))


async def _batches(store: Store, signer: PrivateKey) -> list[Batch]:
    keys = await list_batch_keys(store, None, time.time())
    found = [item async for item in read_batches(store, keys, signer.public)]
    assert all(isinstance(b, Batch) for b in found), found
    return [b for b in found if isinstance(b, Batch)]


async def _records(store: Store, signer: PrivateKey) -> list[dict[str, Any]]:
    return [r for batch in await _batches(store, signer) for r in batch.records]


# ------------------------------------------------------------------------- redaction

SECRET_HEADERS = {
    "Authorization": "Bearer sk-SECRET-authorization",
    "Proxy-Authorization": "Basic SECRET-proxy",
    "Cookie": "sid=SECRET-cookie",
    "Set-Cookie": "sid=SECRET-set-cookie; HttpOnly",
    "X-Api-Key": "SECRET-x-api-key",
    "Api-Key": "SECRET-api-key",
    "x-goog-api-key": "SECRET-goog",
    "X-Auth-Token": "SECRET-auth-token",
    "X-Amz-Security-Token": "SECRET-amz-token",
    "Anthropic-Api-Key": "SECRET-anthropic",
}

SECRET_PARAMS = {
    "key": "SECRET-q-key", "api_key": "SECRET-q-api-key", "apikey": "SECRET-q-apikey",
    "token": "SECRET-q-token", "access_token": "SECRET-q-access", "sig": "SECRET-q-sig",
    "X-Amz-Signature": "SECRET-q-amz-sig", "X-Amz-Credential": "SECRET-q-amz-cred",
    "password": "SECRET-q-password", "client_secret": "SECRET-q-client-secret",
    "code": "SECRET-q-code",
}


def test_every_credential_header_is_redacted() -> None:
    headers = [*SECRET_HEADERS.items(), ("User-Agent", "curl/8"), ("Accept", "*/*")]
    shown = {name: value for name, value in redact_headers(headers)}
    for name in SECRET_HEADERS:
        assert shown[name] == REDACTED, name
    assert shown["User-Agent"] == "curl/8"
    assert shown["Accept"] == "*/*"


def test_query_values_are_redacted_unless_kept_and_credentials_always() -> None:
    query = "&".join(f"{k}={v}" for k, v in {"q": "cats", **SECRET_PARAMS}.items())
    url = f"https://h.example/search?{query}"
    default = redact_target(url)
    kept = redact_target(url, keep_query=True)
    for value in SECRET_PARAMS.values():
        assert value not in default
        assert value not in kept
    assert default.startswith("/search?q=[redacted]&key=[redacted]")
    assert kept.startswith("/search?q=cats&key=[redacted]")
    assert redact_target("https://h.example") == "/"
    assert redact_target("https://h.example/a/b") == "/a/b"


def test_since_and_until_take_relative_or_iso_times() -> None:
    now = 1_800_000_000.0
    assert parse_time("1h", now) == now - 3600
    assert parse_time("7d", now) == now - 7 * 86400
    assert parse_time("2026-11-22", now) == 1_795_305_600.0
    assert parse_time("2026-11-22T01:00+01:00", now) == 1_795_305_600.0
    with pytest.raises(ValueError, match="30m, 1h, 7d"):
        parse_time("yesterday", now)


# -------------------------------------------------------------------- what is recorded


async def test_one_record_per_request_with_digests_and_no_credentials(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    query = "&".join(f"{k}={v}" for k, v in {"q": "cats", **SECRET_PARAMS}.items())
    request_headers = tuple((k, v) for k, v in SECRET_HEADERS.items() if k != "Set-Cookie")
    body = b"judge this answer" * 1000
    async with running_forwarder(store, keys, upstream, AUDITED), \
            client_for(store, keys) as client:
        async with await client.request("POST", f"{upstream.url}/echo?{query}",
                                        request_headers, body=body) as response:
            echoed = await response.read()
        async with await client.request("GET", f"{upstream.url}/bytes/200000") as response:
            streamed = await response.read()
        async with await client.request("GET", "https://example.com/x") as response:
            assert response.status == 403
    # records are flushed when the forwarder stops
    raw = b"".join([await store.get(k) for k in await list_batch_keys(store, None, time.time())])
    for secret in (*SECRET_HEADERS.values(), *SECRET_PARAMS.values()):
        assert secret.encode() not in raw, secret
    posted, fetched, denied = await _records(store, keys.forwarder)
    port = int(upstream.url.rsplit(":", 1)[1])
    assert posted["method"] == "POST"
    assert (posted["scheme"], posted["host"], posted["port"]) == ("https", "localhost", port)
    assert posted["path"].startswith("/echo?q=[redacted]&key=[redacted]&api_key=[redacted]")
    assert (posted["decision"], posted["status"], posted["error"]) == ("allow", 200, None)
    assert "gpu01" in posted["rule"]
    assert posted["up"] == len(body)
    assert posted["down"] == len(echoed)
    assert posted["request_sha256"] == hashlib.sha256(body).hexdigest()
    assert posted["response_sha256"] == hashlib.sha256(echoed).hexdigest()
    assert posted["client"] == "gpu01"
    assert posted["forwarder"] == AUDITED.id
    assert posted["attempt"] == 0
    assert posted["total_ms"] >= posted["upstream_ms"] >= 0
    assert posted["queue_ms"] >= 0
    sent = dict(map(tuple, posted["request_headers"]))
    assert all(sent[name] == REDACTED for name, _ in request_headers)
    received = dict(map(tuple, posted["response_headers"]))
    assert received["Set-Cookie"] == REDACTED
    assert received["X-Upstream"] == "yes"
    # a streamed response's digest is the digest of everything delivered
    assert fetched["down"] == len(streamed) == 200000
    assert fetched["response_sha256"] == hashlib.sha256(streamed).hexdigest()
    assert fetched["request_sha256"] == hashlib.sha256(b"").hexdigest()  # no body
    assert (denied["decision"], denied["status"], denied["host"]) == ("deny", 403, "example.com")
    assert denied["rule"]
    assert denied["upstream_ms"] is None


async def test_streamed_request_body_digest_and_kept_query(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    store = DirectoryStore(tmp_path / "mailbox")
    body = bytes(range(256)) * 3000  # over the inline limit: streamed in segments
    async with running_forwarder(store, keys, upstream, AUDITED, audit_keep_query=True), \
            client_for(store, keys) as client:
        async with await client.request("PUT", f"{upstream.url}/echo?q=cats&token=t0k",
                                        body=body) as response:
            assert response.status == 200
    (record,) = await _records(store, keys.forwarder)
    assert record["path"] == "/echo?q=cats&token=[redacted]"
    assert record["up"] == len(body)
    assert record["request_sha256"] == hashlib.sha256(body).hexdigest()


async def test_an_unauthenticated_object_is_recorded_as_rejected(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    store = DirectoryStore(tmp_path / "mailbox")
    rid = new_request_id(time.time())
    async with running_forwarder(store, keys, upstream, AUDITED) as forwarder:
        await store.put(layout.head_key("requests", "gpu01", rid), b"not an envelope")
        await eventually(lambda: forwarder.counters.rejected == 1, what="the rejection")
    (record,) = await _records(store, keys.forwarder)
    assert (record["id"], record["client"], record["decision"]) == (rid, "gpu01", "rejected")
    assert record["error"] == "malformed"
    assert record["method"] is None


# ------------------------------------------------------------------- chains, verify


async def _chain(store: Store, key: PrivateKey, forwarder: str, batches: int) -> list[str]:
    writer = AuditWriter(store, key, forwarder, batch_records=2, interval=3600)
    await writer.open()
    for n in range(batches * 2):
        writer.add({"n": n, "forwarder": forwarder})
    await writer.close(10)
    assert writer.waiting == 0
    return [k for k in await list_batch_keys(store, None, time.time())
            if f"/{forwarder}/" in k]


async def _problems(store: Store, key: PrivateKey, **kwargs: Any) -> list[str]:
    result = await verify_log(store, key.public, **kwargs)
    return [str(p) for p in result.problems]


async def test_a_clean_log_verifies(store: Store) -> None:
    key = PrivateKey.generate("fw")
    await _chain(store, key, "fw-a", 3)
    await _chain(store, key, "fw-b", 2)
    result = await verify_log(store, key.public)
    assert result.problems == []
    assert (result.forwarders, result.batches, result.records) == (2, 5, 10)


async def test_a_deleted_batch_is_reported(store: Store) -> None:
    key = PrivateKey.generate("fw")
    keys = await _chain(store, key, "fw-a", 4)
    await store.delete(keys[1])
    assert await _problems(store, key) == [
        f"{keys[2]}: batch 1 of forwarder fw-a missing (deleted)"]


async def test_deleted_batches_at_the_end_are_reported(store: Store) -> None:
    key = PrivateKey.generate("fw")
    keys = await _chain(store, key, "fw-a", 4)
    await store.delete(keys[3])
    await store.delete(keys[2])
    (problem,) = await _problems(store, key)
    assert problem.startswith(layout.audit_head_key("fw-a"))
    assert "batches 2-3 of forwarder fw-a missing (deleted) at the end" in problem


async def test_a_deleted_first_batch_is_reported(store: Store) -> None:
    key = PrivateKey.generate("fw")
    keys = await _chain(store, key, "fw-a", 3)
    await store.delete(keys[0])
    assert await _problems(store, key) == [
        f"{keys[1]}: batch 0 of forwarder fw-a missing (deleted)"]


async def test_an_edited_batch_is_reported(store: Store) -> None:
    key = PrivateKey.generate("fw")
    keys = await _chain(store, key, "fw-a", 3)
    data = await store.get(keys[1])
    assert b'"n":2' in data
    await store.delete(keys[1])
    await store.put(keys[1], data.replace(b'"n":2', b'"n":7'))
    (problem,) = await _problems(store, key)
    assert problem.startswith(f"{keys[1]}: its signature does not verify")


async def test_reordered_batches_are_reported(store: Store) -> None:
    key = PrivateKey.generate("fw")
    keys = await _chain(store, key, "fw-a", 3)
    first, second = await store.get(keys[0]), await store.get(keys[1])
    for k in keys[:2]:
        await store.delete(k)
    await store.put(keys[0], second)
    await store.put(keys[1], first)
    problems = await _problems(store, key)
    assert f"{keys[0]}: holds batch 1 of forwarder fw-a; the key says batch 0 of fw-a " \
           "(moved or reordered)" in problems
    assert f"{keys[1]}: holds batch 0 of forwarder fw-a; the key says batch 1 of fw-a " \
           "(moved or reordered)" in problems


async def test_a_forged_batch_is_reported(store: Store) -> None:
    key, other = PrivateKey.generate("fw"), PrivateKey.generate("mallory")
    keys = await _chain(store, key, "fw-a", 2)
    stored = await store.get(keys[1])
    forged = encode_batch(other, "fw-a", 2, hashlib.sha256(stored).hexdigest(), time.time(),
                          [{"n": 99}])
    forged_key = keys[1].replace("000000000001", "000000000002")
    await store.put(forged_key, forged, create_only=True)
    problems = await _problems(store, key)
    assert problems[0].startswith(f"{forged_key}: its signature does not verify")
    # and a genuine batch copied to a new place is not taken as new
    copy_key = keys[1].replace("000000000001", "000000000005")
    await store.put(copy_key, stored, create_only=True)
    assert (f"{copy_key}: holds batch 1 of forwarder fw-a; the key says batch 5 of fw-a "
            "(moved or reordered)") in await _problems(store, key)


async def test_a_replaced_batch_is_reported(store: Store) -> None:
    """The forwarder's own key re-signing a batch (a stolen key): the chain still breaks."""
    key = PrivateKey.generate("fw")
    keys = await _chain(store, key, "fw-a", 3)
    old = parse_batch(keys[1], await store.get(keys[1]), key.public)
    moment = time.time()
    replacement = encode_batch(key, "fw-a", 1, old.prev, moment, [{"n": "rewritten"}])
    await store.delete(keys[1])
    await store.put(keys[1], replacement)
    problems = await _problems(store, key)
    assert any(p.startswith(f"{keys[2]}: does not follow {keys[1]}") for p in problems), problems


async def test_verify_since_checks_the_window_only(store: Store) -> None:
    key = PrivateKey.generate("fw")
    keys = await _chain(store, key, "fw-a", 2)
    assert await _problems(store, key, since=time.time() - 60) == []
    await store.delete(keys[0])
    assert await _problems(store, key, since=time.time() + 3 * 86400) == []


async def test_a_restarted_writer_continues_its_chain(store: Store) -> None:
    key = PrivateKey.generate("fw")
    await _chain(store, key, "fw-a", 2)
    keys = await _chain(store, key, "fw-a", 1)
    assert keys[-1].endswith("/000000000002.jsonl")
    assert await _problems(store, key) == []
    # without its head object, the writer finds the end of its chain by listing
    await store.delete(layout.audit_head_key("fw-a"))
    keys = await _chain(store, key, "fw-a", 1)
    assert keys[-1].endswith("/000000000003.jsonl")
    assert await _problems(store, key) == []


async def test_a_restarted_forwarder_continues_its_chain(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    for run in range(2):
        async with running_forwarder(store, keys, upstream, AUDITED), \
                client_for(store, keys) as client:
            for _ in range(run + 1):
                async with await client.request("GET", f"{upstream.url}/echo") as response:
                    assert response.status == 200
    batches = await _batches(store, keys.forwarder)
    assert [b.seq for b in batches] == list(range(len(batches)))
    assert len(batches) >= 2
    assert sum(len(b.records) for b in batches) == 3
    assert await _problems(store, keys.forwarder) == []


# ------------------------------------------------------------ nothing lost, fail closed


async def test_audit_store_outage_during_traffic_loses_no_record(
    store: Store, tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    """The audit store (here the parametrized one) fails while requests run, then comes
    back: every request is answered, and every one has its record."""
    mailbox = DirectoryStore(tmp_path / "mailbox")
    audit = OutageStore(store)
    async with running_forwarder(mailbox, keys, upstream, AUDITED, audit_store=audit) \
            as forwarder, client_for(mailbox, keys) as client:

        async def one(n: int) -> int:
            async with await client.request("GET", f"{upstream.url}/echo/{n}") as response:
                await response.read()
                return response.status

        first = await asyncio.gather(*(one(n) for n in range(10)))
        audit.down = True
        during = await asyncio.gather(*(one(n) for n in range(10, 30)))
        await eventually(lambda: audit.calls_while_down > 0, what="a failed audit write")
        assert forwarder.audit.waiting >= 20
        assert forwarder.heartbeat().audit["failing"]
        audit.down = False
        after = await asyncio.gather(*(one(n) for n in range(30, 40)))
        await eventually(lambda: forwarder.audit.waiting == 0, what="the records to be stored")
    assert first + during + after == [200] * 40
    records = await _records(store, keys.forwarder)
    assert len(records) == 40
    assert sorted(r["path"] for r in records) == sorted(f"/echo/{n}" for n in range(40))
    assert await _problems(store, keys.forwarder) == []


async def test_a_full_audit_buffer_stops_new_requests_until_stored(
    tmp_path: Path, keys: Keys, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "wonders")
    mailbox = DirectoryStore(tmp_path / "mailbox")
    audit = OutageStore(DirectoryStore(tmp_path / "audit"))
    settings = dataclasses.replace(AUDITED, audit_capacity=3)
    async with running_forwarder(mailbox, keys, upstream, settings, audit_store=audit) \
            as forwarder, client_for(mailbox, keys) as client:
        audit.down = True  # after the start, which needs the end of the chain
        for n in range(3):
            async with await client.request("GET", f"{upstream.url}/echo/{n}") as response:
                assert response.status == 200
        await eventually(lambda: forwarder.audit.full, what="a full audit buffer")
        waiting = asyncio.create_task(client.request("GET", f"{upstream.url}/echo/3"))

        async def pending() -> list[str]:
            return [k async for k in mailbox.list("requests/gpu01/")]

        await eventually(pending, what="the fourth request to be stored")
        # two heartbeats later it is still unclaimed, and the heartbeat says why
        beats: list[Heartbeat] = []

        async def two_new_heartbeats() -> bool:
            data = await mailbox.get(layout.heartbeat_key(settings.id))
            beat = parse_heartbeat(data, keys.forwarder.public)
            assert beat is not None
            if not beats or beat.time > beats[-1].time:
                beats.append(beat)
            return len(beats) >= 2

        await eventually(two_new_heartbeats, what="two heartbeats", explain=lambda: f"{beats}")
        beat = beats[-1]
        assert beat.audit["blocked"] is True
        assert beat.audit["waiting"] == 3
        assert await pending()
        assert upstream.hits["/echo/3"] == 0
        assert "taking no new requests" in caplog.text
        audit.down = False
        async with await asyncio.wait_for(waiting, 30) as response:
            assert response.status == 200
    assert "taking requests" in caplog.text
    records = await _records(audit.inner, keys.forwarder)
    assert sorted(r["path"] for r in records) == [f"/echo/{n}" for n in range(4)]


async def test_records_are_flushed_at_shutdown_or_spooled(
    tmp_path: Path, keys: Keys, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "wonders")
    mailbox = DirectoryStore(tmp_path / "mailbox")
    audit = OutageStore(DirectoryStore(tmp_path / "audit"))
    spool = tmp_path / "state" / "spool.jsonl"
    slow = dataclasses.replace(FAST, audit_interval=3600, grace=0.5)
    # 1. a long batch interval: the records are written by the clean stop
    async with running_forwarder(mailbox, keys, upstream, slow, audit_store=audit,
                                 audit_spool=spool), client_for(mailbox, keys) as client:
        for n in range(2):
            async with await client.request("GET", f"{upstream.url}/echo/{n}") as response:
                assert response.status == 200
    assert len(await _records(audit.inner, keys.forwarder)) == 2
    # 2. the audit store is down at shutdown: the records go to the spool file ...
    async with running_forwarder(mailbox, keys, upstream, slow, audit_store=audit,
                                 audit_spool=spool), client_for(mailbox, keys) as client:
        audit.down = True
        for n in range(2, 5):
            async with await client.request("GET", f"{upstream.url}/echo/{n}") as response:
                assert response.status == 200
    assert len(spool.read_text().splitlines()) == 3
    assert f"3 records saved to {spool}" in caplog.text
    # 3. ... and the next start writes them first
    audit.down = False
    async with running_forwarder(mailbox, keys, upstream, AUDITED, audit_store=audit,
                                 audit_spool=spool) as forwarder:
        await eventually(lambda: forwarder.audit.waiting == 0, what="the spooled records")
    assert not spool.exists()
    records = await _records(audit.inner, keys.forwarder)
    assert sorted(r["path"] for r in records) == [f"/echo/{n}" for n in range(5)]
    assert await _problems(audit.inner, keys.forwarder) == []


async def test_a_batch_that_landed_before_a_lost_reply_is_not_written_twice(
    tmp_path: Path,
) -> None:
    """The spool holds records whose batch may have been stored after all: the next
    start does not store them again."""
    key = PrivateKey.generate("fw")
    store = DirectoryStore(tmp_path / "audit")
    spool = tmp_path / "spool.jsonl"
    writer = AuditWriter(store, key, "fw-a", batch_records=10, interval=3600, spool=spool)
    await writer.open()
    for n in range(3):
        writer.add({"n": n})
    await writer.close(5)
    # as if the write had seemed to fail: the same records were also spooled
    spool.write_text("".join(json.dumps({"n": n}) + "\n" for n in range(3)) + '{"n": 3}\n')
    again = AuditWriter(store, key, "fw-a", batch_records=10, interval=3600, spool=spool)
    await again.open()
    assert again.waiting == 1
    await again.close(5)
    assert [r["n"] for r in await _records(store, key)] == [0, 1, 2, 3]
