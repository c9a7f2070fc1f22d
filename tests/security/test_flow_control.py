"""A client that stops reading cannot make the forwarder fill the mailbox (hardening
item 8).

Before the fix the forwarder stored every segment of a response as fast as the upstream
sent it, whether or not the client read them: one response put over 600 MB in the mailbox.
Now at most ``max_unread_segments`` wait unread, the upstream is read no faster than the
client consumes, and a client that reads nothing for ``read_timeout`` ends its response.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from tests.eventually import eventually
from tests.relay.harness import FAST, POLICY, Upstream, client_for, make_keys, running_forwarder
from wonders.mailbox import Store

MIB = 1024 * 1024


async def test_a_client_that_stops_reading_holds_the_upstream_back(
    store: Store, tmp_path: Path, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "wonders")
    unlimited = POLICY.replace('max_response_bytes = "32 MiB"',
                               'max_response_bytes = "unlimited"')
    keys = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]), unlimited)
    window, size = 4, 64 * MIB
    settings = dataclasses.replace(FAST, segment_size=MIB, max_unread_segments=window,
                                   read_timeout=1.0)
    path = f"/bytes/{size}"
    async with running_forwarder(store, keys, upstream, settings) as forwarder, \
            client_for(store, keys) as client:
        response = await client.request("GET", f"{upstream.url}{path}")
        body = response.iter_body()
        assert await anext(body)  # the head and one segment; then no more
        most = 0

        async def given_up() -> bool:  # counting the unread segments meanwhile
            nonlocal most
            segments = [k async for k in store.list(f"responses/gpu01/{response.id}/body/")]
            most = max(most, len(segments))
            return forwarder.in_flight == 0

        # sampled every 10 ms, so that a pile-up beyond the window is seen
        await eventually(given_up, what="the forwarder to give up on the reader",
                         max_interval=0.01)
        assert most <= window + 1
        assert upstream.sent[path] < size  # it was never read to the end
        assert "error=client-stopped-reading" in caplog.text
        await response.aclose()


async def test_a_slow_reader_still_gets_the_whole_body(
    store: Store, tmp_path: Path, upstream: Upstream
) -> None:
    """Flow control holds the forwarder back; it never loses or reorders a byte."""
    keys = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))
    settings = dataclasses.replace(FAST, segment_size=256 * 1024, max_unread_segments=2)
    size = 3 * MIB + 5
    async with running_forwarder(store, keys, upstream, settings), \
            client_for(store, keys) as client:
        async with await client.request("GET", f"{upstream.url}/bytes/{size}") as response:
            body = b""
            async for piece in response.iter_body():
                body += piece
                listed = [k async for k in store.list(f"responses/gpu01/{response.id}/body/")]
                assert len(listed) <= 2 + 1
    assert body == (bytes(range(256)) * 4096 * 4)[:size]


def test_wonders_init_writes_a_finite_max_response_bytes(tmp_path: Path) -> None:
    from wonders.cli.onboard import _POLICY_SKELETON
    from wonders.crypto import PrivateKey, write_key_files
    from wonders.policy import parse_policy

    write_key_files(PrivateKey.generate("gpu01"), tmp_path)
    text = _POLICY_SKELETON.format(name="fw1") + '\n[clients.gpu01]\nbundle = "gpu01.pub"\n'
    policy = parse_policy(text, base=tmp_path)
    assert policy.clients["gpu01"].max_response_bytes == 10 * 1024**3
