"""The forwarder and RelayClient end to end: real store (directory and moto's S3), real
loopback HTTPS upstream whose CA only the forwarder trusts."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

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
    serve_upstream,
)
from wonders.crypto import PrivateKey, RequestHead, new_request_id, seal_request
from wonders.errors import EnvelopeError, NoForwarder, RelayTimeout
from wonders.mailbox import DirectoryStore, Store, layout
from wonders.relay.client import RelayResponse


@pytest.fixture
def keys(tmp_path: Path, upstream: Upstream) -> Keys:
    return make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))


async def _json(response: RelayResponse) -> dict[str, object]:
    data: dict[str, object] = json.loads(await response.read())
    return data


async def test_get_round_trip_keeps_status_and_headers(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    async with running_forwarder(store, keys, upstream), client_for(store, keys) as client:
        response = await client.request("GET", f"{upstream.url}/echo?q=1",
                                        (("X-Custom", "v1"), ("Accept", "application/json")))
        async with response:
            assert response.status == 200
            assert response.header("X-Upstream") == "yes"
            assert response.header("Set-Cookie") == "a=1"
            doc = await _json(response)
        assert doc["method"] == "GET"
        assert doc["path"] == "/echo?q=1"
        sent = {k.lower(): v for k, v in doc["headers"]}  # type: ignore[attr-defined]
        assert sent["x-custom"] == "v1"
        assert "user-agent" not in sent  # nothing invented on the way
    assert upstream.hits["/echo"] == 1
    # the exchange left nothing behind but the done marker
    assert [k async for k in store.list("requests/")] == []
    assert [k async for k in store.list("responses/")] == []


@pytest.mark.parametrize(("method", "size"), [("POST", 1000), ("PUT", 700 * 1024)])
async def test_request_bodies_reach_the_upstream_whole_inline_and_streamed(
    store: Store, keys: Keys, upstream: Upstream, method: str, size: int
) -> None:
    body = hashlib.sha256(b"x").digest() * (size // 32)
    async with running_forwarder(store, keys, upstream), client_for(store, keys) as client:
        async with await client.request(method, f"{upstream.url}/echo", body=body) as response:
            doc = await _json(response)
    assert doc["method"] == method
    assert doc["length"] == len(body)
    assert doc["sha256"] == hashlib.sha256(body).hexdigest()


async def test_a_head_response_has_no_body_and_any_status_passes_through(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    async with running_forwarder(store, keys, upstream), client_for(store, keys) as client:
        async with await client.request("HEAD", f"{upstream.url}/echo") as response:
            assert response.status == 200
            assert await response.read() == b""
        async with await client.request("DELETE", f"{upstream.url}/status/418") as response:
            assert (response.status, await response.read()) == (418, b"custom")


async def test_large_response_streams_in_segments(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    size = 5 * 1024 * 1024 + 123
    one_mib = dataclasses.replace(FAST, segment_size=1024 * 1024)
    async with running_forwarder(store, keys, upstream, one_mib), \
            client_for(store, keys) as client:
        async with await client.request("GET", f"{upstream.url}/bytes/{size}") as response:
            digest, total, pieces = hashlib.sha256(), 0, 0
            async for piece in response.iter_body():
                digest.update(piece)
                total += len(piece)
                pieces += 1
    expected = (bytes(range(256)) * 4096 * 6)[:size]
    assert total == size
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
    assert pieces >= 5  # segments, not one buffered body


async def test_read_segments_are_deleted_while_the_body_streams(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    """The client deletes each segment once read, so a long body never piles up in the
    response prefix that its poller lists."""
    size = 12 * 1024 * 1024
    one_mib = dataclasses.replace(FAST, segment_size=1024 * 1024)
    async with running_forwarder(store, keys, upstream, one_mib), \
            client_for(store, keys) as client:
        async with await client.request("GET", f"{upstream.url}/bytes/{size}") as response:
            first = layout.body_key("responses", "gpu01", response.id, 0)
            body = response.iter_body()
            head_start = 0
            for _ in range(3):
                head_start += len(await anext(body))
            async def first_deleted() -> bool:  # the deletion runs in the background
                return not await store.exists(first)

            await eventually(first_deleted, what=f"{first} to be deleted")
            rest = sum([len(piece) async for piece in body])
    assert rest == size - head_start


async def test_sse_first_event_arrives_while_upstream_still_sends(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    async with running_forwarder(store, keys, upstream), client_for(store, keys) as client:
        async with await client.request("GET", f"{upstream.url}/sse") as response:
            body = response.iter_body()
            first = await asyncio.wait_for(anext(body), 10)
            assert first == b"data: first\n\n"
            assert not upstream.sse_go.is_set()  # the upstream is still holding the stream
            upstream.sse_go.set()
            rest = b"".join([piece async for piece in body])
    assert rest == b"data: second\n\n"


async def test_response_over_the_limit_is_a_broken_stream(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    size = 33 * 1024 * 1024  # the policy allows gpu01 32 MiB
    async with running_forwarder(store, keys, upstream), client_for(store, keys) as client:
        async with await client.request("GET", f"{upstream.url}/bytes/{size}") as response:
            received: list[int] = []

            async def consume() -> None:
                async for piece in response.iter_body():
                    received.append(len(piece))

            with pytest.raises(EnvelopeError) as info:
                await consume()
    assert info.value.reason == "incomplete"
    assert "max_response_bytes" in info.value.message
    assert sum(received) <= 32 * 1024 * 1024


async def test_policy_denial_is_a_403_naming_the_rule(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    async with running_forwarder(store, keys, upstream), client_for(store, keys) as client:
        async with await client.request("GET", "https://example.com/") as response:
            assert response.status == 403
            assert response.header("X-Wonders-Error") == "policy-denied"
            text = (await response.read()).decode()
    assert "client gpu01: ports" in text  # example.com:443 is not an allowed port here
    assert text.count("\n") == 1


@pytest.mark.parametrize(
    "host",
    ["localhost", "127.0.0.1", "2130706433", "0x7f.1", "[::1]"],
)
async def test_private_addresses_are_refused_without_allow_private(
    store: Store, keys: Keys, upstream: Upstream, host: str
) -> None:
    port = upstream.url.rsplit(":", 1)[1]
    async with running_forwarder(store, keys, upstream), \
            client_for(store, keys, "locked") as client:
        async with await client.request("GET", f"https://{host}:{port}/echo") as response:
            assert response.status == 403
            assert response.header("X-Wonders-Error") == "policy-denied"
            assert "address guard: loopback" in (await response.read()).decode()
    assert upstream.hits["/echo"] == 0


@pytest.fixture
async def upstream2(tmp_path: Path) -> AsyncIterator[Upstream]:
    """An upstream on 127.0.0.2: the 'follower' client may reach only that address."""
    (tmp_path / "second").mkdir()
    async with serve_upstream(tmp_path / "second", host="127.0.0.2") as server:
        yield server


@pytest.fixture
def follower_keys(tmp_path: Path, upstream2: Upstream) -> Keys:
    return make_keys(tmp_path / "second", int(upstream2.url.rsplit(":", 1)[1]))


@pytest.mark.parametrize(
    "target", ["http://127.0.0.1/", "http://169.254.169.254/latest/meta-data/"]
)
async def test_redirect_to_a_private_address_goes_back_to_the_client(
    store: Store, follower_keys: Keys, upstream2: Upstream, target: str
) -> None:
    async with running_forwarder(store, follower_keys, upstream2), \
            client_for(store, follower_keys, "follower") as client:
        url = f"{upstream2.url}/redirect?to={target}"
        async with await client.request("GET", url) as response:
            assert response.status == 302
            assert response.header("Location") == target
    assert upstream2.hits["/redirect"] == 1


async def test_allowed_redirect_is_followed_when_the_policy_says_so(
    store: Store, follower_keys: Keys, upstream2: Upstream
) -> None:
    async with running_forwarder(store, follower_keys, upstream2), \
            client_for(store, follower_keys, "follower") as follower:
        url = f"{upstream2.url}/redirect?to={upstream2.url}/echo/landed"
        async with await follower.request("GET", url) as response:
            assert response.status == 200
            assert (await _json(response))["path"] == "/echo/landed"
    assert upstream2.hits["/echo/landed"] == 1


async def test_redirects_are_returned_when_the_client_does_not_follow(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    async with running_forwarder(store, keys, upstream), client_for(store, keys) as plain:
        url = f"{upstream.url}/redirect?to={upstream.url}/echo/landed"
        async with await plain.request("GET", url) as response:
            assert response.status == 302
    assert upstream.hits["/echo/landed"] == 0


async def test_no_forwarder_fails_fast(store: Store, keys: Keys, upstream: Upstream) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client_for(store, keys) as client:
        with pytest.raises(NoForwarder, match="no forwarder is alive"):
            await client.request("GET", f"{upstream.url}/echo", timeout=60)
    assert loop.time() - started < 30  # far below the request's own timeout
    assert [k async for k in store.list("requests/")] == []


def _bad_request(keys: Keys, upstream: Upstream, case: str) -> tuple[str, bytes]:
    """A request head that must never reach the network, stored under gpu01's mailbox."""
    rid = new_request_id(1_795_305_600)
    sender = keys.clients["gpu01"]
    if case == "unknown-sender":
        sender = PrivateKey.generate("gpu01")  # same name, another key
    elif case == "wrong-sender":
        sender = keys.clients["locked"]  # registered, but not this mailbox's owner
    sealed = seal_request(RequestHead("GET", f"{upstream.url}/echo"), request_id=rid,
                          sender=sender, recipient=keys.forwarder.public, now=1_795_305_600)
    data = sealed.data
    if case == "tampered":
        data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
    return layout.head_key("requests", "gpu01", rid), data


@pytest.mark.parametrize("case", ["unknown-sender", "wrong-sender", "tampered"])
async def test_unauthenticated_requests_are_removed_without_reaching_upstream(
    store: Store, keys: Keys, upstream: Upstream, case: str
) -> None:
    head, data = _bad_request(keys, upstream, case)
    await store.put(head, data)
    async with running_forwarder(store, keys, upstream) as forwarder:
        async def deleted() -> bool:
            return not await store.exists(head)

        await eventually(deleted, what=f"the forwarder to delete {head}")
        assert forwarder.counters.rejected == 1
    assert upstream.hits["/echo"] == 0
    assert [k async for k in store.list("responses/")] == []


async def test_an_object_that_is_not_a_request_is_left_in_place_and_reported_once(
    store: Store, keys: Keys, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """Never delete what does not parse as the protocol's own key (see tests/security)."""
    caplog.set_level(logging.WARNING, "wonders.forwarder")
    await store.put("requests/gpu01/garbage", b"not an envelope")
    async with running_forwarder(store, keys, upstream) as forwarder:
        await eventually(lambda: "requests/gpu01/garbage" in caplog.text,
                         what="the odd name to be reported")
        async with client_for(store, keys) as client:  # polled many times meanwhile
            async with await client.request("GET", f"{upstream.url}/echo") as response:
                assert response.status == 200
        assert forwarder.counters.rejected == 0
    assert await store.exists("requests/gpu01/garbage")
    assert caplog.text.count("requests/gpu01/garbage") == 1


async def test_a_host_header_that_differs_from_the_url_is_refused(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    host = upstream.url.split("://")[1]
    async with running_forwarder(store, keys, upstream), client_for(store, keys) as client:
        async with await client.request("GET", f"{upstream.url}/echo",
                                        (("Host", "internal.example"),)) as response:
            assert response.status == 400
            assert response.header("X-Wonders-Error") == "host-mismatch"
        async with await client.request("GET", f"{upstream.url}/echo",
                                        (("Host", host.upper()),)) as response:
            assert response.status == 200  # the same host, however it is spelled
    assert upstream.hits["/echo"] == 1


def test_scheduling_is_round_robin_across_clients() -> None:
    from wonders.relay.forwarder._service import _fair

    flood = [layout.EnvelopeKey("requests", "busy", new_request_id(1000 + i), None)
             for i in range(10)]
    late = layout.EnvelopeKey("requests", "quiet", new_request_id(2000), None)
    order = [p.client for p in _fair([*flood, late])]
    assert order[:2] == ["busy", "quiet"]  # the newcomer does not wait behind the flood
    assert [p.request_id for p in _fair(flood)] == sorted(p.request_id for p in flood)


async def test_expired_request_is_answered_not_executed(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    strict = dataclasses.replace(FAST, skew=0.0)
    async with running_forwarder(store, keys, upstream, strict), \
            client_for(store, keys, lifetime=0.0) as client:
        async with await client.request("GET", f"{upstream.url}/echo") as response:
            assert response.status == 504
            assert response.header("X-Wonders-Error") == "request-expired"
            assert "waited longer than its lifetime" in (await response.read()).decode()
    assert upstream.hits["/echo"] == 0


async def test_the_client_rides_out_a_mailbox_outage_then_times_out(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    """Store failures on the client's side are retried until the request's deadline."""
    inner = DirectoryStore(tmp_path / "mailbox")
    flaky = OutageStore(inner)
    async with running_forwarder(inner, keys, upstream), client_for(flaky, keys) as client:
        flaky.down = True
        pending = asyncio.create_task(client.request("GET", f"{upstream.url}/echo",
                                                     timeout=30))
        await eventually(lambda: flaky.calls_while_down >= 3,
                         what="the client to meet the outage three times")
        assert not pending.done()
        flaky.down = False
        async with await asyncio.wait_for(pending, 30) as response:
            assert response.status == 200
        flaky.down = True
        with pytest.raises(RelayTimeout, match="the mailbox stayed out of reach"):
            await client.request("GET", f"{upstream.url}/echo", timeout=1)
        flaky.down = False
    assert upstream.hits["/echo"] == 1


async def test_a_request_asking_for_too_long_a_lifetime_is_refused(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    async with running_forwarder(store, keys, upstream), \
            client_for(store, keys, lifetime=7200.0) as client:
        async with await client.request("GET", f"{upstream.url}/echo") as response:
            assert response.status == 400
            assert response.header("X-Wonders-Error") == "request-lifetime"
            assert "this forwarder accepts 3600 s" in (await response.read()).decode()
    assert upstream.hits["/echo"] == 0
    assert [k async for k in store.list("requests/")] == []


async def test_a_replayed_head_is_not_executed_twice(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    """A bucket writer copies an answered request head back into the mailbox."""
    captured: dict[str, bytes] = {}
    original_put = store.put

    async def recording_put(key: str, data: bytes, *, create_only: bool = False) -> None:
        if key.startswith("requests/") and key.endswith("/head"):
            captured[key] = data
        await original_put(key, data, create_only=create_only)

    store.put = recording_put  # type: ignore[method-assign]
    # The copy is young, so the forwarder, which loses the race for its claim 0, first
    # looks again after recheck_interval (stale_after / 2 by default): made short here,
    # so that the wait below is bounded by a deadline, not by the recheck's timing.
    settings = dataclasses.replace(FAST, recheck_interval=0.05)
    async with running_forwarder(store, keys, upstream, settings) as forwarder, \
            client_for(store, keys) as client:
        async with await client.request("POST", f"{upstream.url}/echo", body=b"once"):
            pass
        (key, data), = captured.items()
        await original_put(key, data)  # the replay
        forwarder._wake.set()
        deadline = time.monotonic() + 30  # the forwarder removes the copy
        while await store.exists(key):
            assert time.monotonic() < deadline, "the replayed head was not removed"
            await asyncio.sleep(0.01)
    assert upstream.hits["/echo"] == 1


class _SwappingView:
    """The client's view of the mailbox, where an attacker swapped response heads: every
    response head it reads is the captured response to another request."""

    def __init__(self, inner: Store, other: bytes) -> None:
        self._inner, self._other = inner, other

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        if key.startswith("responses/") and key.endswith("/head"):
            return self._other
        return await self._inner.get(key, max_bytes=max_bytes)


async def test_a_swapped_response_is_refused_by_the_client(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    captured: list[bytes] = []
    original_put = store.put

    async def recording_put(key: str, data: bytes, *, create_only: bool = False) -> None:
        if key.startswith("responses/") and key.endswith("/head"):
            captured.append(data)
        await original_put(key, data, create_only=create_only)

    store.put = recording_put  # type: ignore[method-assign]
    async with running_forwarder(store, keys, upstream):
        async with client_for(store, keys) as client:
            async with await client.request("GET", f"{upstream.url}/echo/first"):
                pass
        view = _SwappingView(store, captured[0])
        async with client_for(view, keys) as client:  # type: ignore[arg-type]
            with pytest.raises(EnvelopeError) as info:
                await client.request("GET", f"{upstream.url}/echo/second")
    assert info.value.reason == "not-bound"


async def test_janitor_removes_only_what_outlived_its_expiry(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    from wonders.relay.forwarder import Forwarder

    now = 1_795_305_600.0
    settings = dataclasses.replace(FAST, max_request_lifetime=600.0, skew=60.0,
                                   response_lifetime=300.0)
    old, fresh = new_request_id(now - 1000), new_request_id(now - 10)
    # unread responses go after 600 + 60 + 300 = 960 s
    unread_old, unread_recent = new_request_id(now - 1000), new_request_id(now - 900)
    for rid in (old, fresh):
        await store.put(layout.claim_key(rid, 0), b"{}")
        await store.put(layout.done_key(rid), b"")
        await store.put(layout.head_key("requests", "gpu01", rid), b"x")
    for rid in (unread_old, unread_recent):
        await store.put(layout.head_key("responses", "gpu01", rid), b"x")
    forwarder = Forwarder(store, keys.forwarder, keys.policy, settings, clock=lambda: now)
    removed = await forwarder.sweep()
    left = sorted([k async for k in store.list("")])
    assert removed == 4  # old's claim and done marker, its request, the old response
    assert left == sorted([
        layout.claim_key(fresh, 0), layout.done_key(fresh),
        layout.head_key("requests", "gpu01", fresh),
        layout.head_key("responses", "gpu01", unread_recent),
    ])


@pytest.mark.slow
async def test_three_forwarders_execute_each_request_exactly_once(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    count = 300
    settings = [dataclasses.replace(FAST, id=f"fw-{i}") for i in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        forwarders = [
            await stack.enter_async_context(running_forwarder(store, keys, upstream, s))
            for s in settings
        ]
        client = await stack.enter_async_context(client_for(store, keys))
        semaphore = asyncio.Semaphore(48)

        async def one(i: int) -> int:
            async with semaphore:
                response = await client.request("POST", f"{upstream.url}/echo/{i}", body=b"%d" % i)
                async with response:
                    doc = await _json(response)
                    assert doc["path"] == f"/echo/{i}"
                    return response.status

        statuses = await asyncio.gather(*(one(i) for i in range(count)))
        served = [f.counters.allowed for f in forwarders]
    assert statuses == [200] * count
    assert sum(upstream.hits.values()) == count
    assert all(upstream.hits[f"/echo/{i}"] == 1 for i in range(count))
    assert sum(served) == count
    assert sum(1 for n in served if n > 0) >= 2  # the work was shared, not serialised


async def test_a_request_in_flight_keeps_its_policy_across_a_reload(
    store: Store, keys: Keys, upstream: Upstream, tmp_path: Path
) -> None:
    """The policy is reloaded without gpu01 while gpu01's request waits upstream: that
    request still finishes under the policy it started with; the next one is refused."""
    from wonders.policy import load_policy

    path = tmp_path / "keys" / "policy.toml"
    text = path.read_text()
    without = text[: text.index("[clients.gpu01]")] + text[text.index("[clients.locked]"):]
    path.write_text(without)
    reduced = load_policy(path)
    async with running_forwarder(store, keys, upstream) as forwarder, \
            client_for(store, keys) as client:
        pending = asyncio.create_task(
            client.request("GET", f"{upstream.url}/hold", timeout=30))
        await asyncio.wait_for(upstream.held.wait(), 30)
        forwarder.reload(reduced)
        upstream.release.set()
        async with await pending as response:
            assert (response.status, await response.read()) == (200, b"released GET")
        # gpu01's key is no longer registered: its next request cannot be authenticated,
        # so it is removed unanswered (only known senders get answers) and times out.
        with pytest.raises(RelayTimeout):
            await client.request("GET", f"{upstream.url}/echo", timeout=1)
        await eventually(lambda: forwarder.counters.rejected == 1,
                         what="the forwarder to reject the request")
    assert upstream.hits["/echo"] == 0


async def test_an_upstream_that_does_not_answer_hits_the_read_timeout(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    impatient = dataclasses.replace(FAST, read_timeout=0.5)
    async with running_forwarder(store, keys, upstream, impatient), \
            client_for(store, keys) as client:
        async with await client.request("GET", f"{upstream.url}/hold") as response:
            assert response.status == 504
            assert response.header("X-Wonders-Error") == "upstream-timeout"
            assert "did not answer in time" in (await response.read()).decode()
        upstream.release.set()


async def test_a_steady_token_stream_is_delivered_in_segments_before_it_ends(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    # Events 10 ms apart, for up to 10 s: a flush timer that restarts with every chunk
    # would hold them all until the stream ends. The stream only ends early when the
    # client has seen several events in separate segments.
    async with running_forwarder(store, keys, upstream), client_for(store, keys) as client:
        async with await client.request("GET", f"{upstream.url}/ticks?ms=10&n=1000") as response:
            assert response.header("Content-Type") == "text/event-stream"
            received = b""
            pieces = 0
            async for piece in response.iter_body():
                received += piece
                pieces += 1
                if not upstream.ticks_stop.is_set() and pieces >= 3:
                    assert not upstream.ticks_ended.is_set()  # it is still streaming
                    upstream.ticks_stop.set()
            events = received.split(b"\n\n")[:-1]
    assert upstream.ticks_stop.is_set()
    assert events == [f"data: {n}".encode() for n in range(len(events))]  # none lost
