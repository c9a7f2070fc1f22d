"""Soak: 2,000 requests at 64 concurrent through three forwarders sharing a mailbox:
none lost, none executed twice, one audit record each, and the audit log verifies."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path

import pytest

from tests.relay.harness import FAST, Upstream, client_for, make_keys, running_forwarder
from wonders.audit import batch_keys, read_batches, verify_log
from wonders.mailbox import DirectoryStore

REQUESTS, CONCURRENT = 2000, 64

POLICY = """
[clients.gpu01]
bundle = "gpu01.pub"
allow = ["localhost"]
allow_private = ["127.0.0.0/8"]
ports = [{port}]
rate_per_minute = "unlimited"
max_concurrent = 64
[clients.locked]
bundle = "locked.pub"
[clients.follower]
bundle = "follower.pub"
"""


@pytest.mark.slow
async def test_three_forwarders_soak_two_thousand_requests_none_lost_or_repeated(
    tmp_path: Path, upstream: Upstream
) -> None:
    keys = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]), POLICY)
    store = DirectoryStore(tmp_path)
    statuses: list[int] = []
    began = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        forwarders = [
            await stack.enter_async_context(running_forwarder(
                store, keys, upstream, dataclasses.replace(FAST, id=f"fw{n}",
                                                           audit_interval=0.2)))
            for n in range(3)
        ]
        client = await stack.enter_async_context(client_for(store, keys))
        gate = asyncio.Semaphore(CONCURRENT)

        async def one(n: int) -> None:
            async with gate, await client.request("GET", f"{upstream.url}/echo/{n}",
                                                  timeout=120) as response:
                await response.read()
                statuses.append(response.status)

        await asyncio.gather(*(one(n) for n in range(REQUESTS)))
        elapsed = time.monotonic() - began
        shares = [f.counters.requests for f in forwarders]
    assert statuses == [200] * REQUESTS
    executed = {path: count for path, count in upstream.hits.items() if path.startswith("/echo/")}
    assert len(executed) == REQUESTS
    assert set(executed.values()) == {1}  # none executed twice
    assert sum(shares) == REQUESTS
    keys_ = await batch_keys(store, None, time.time())
    records = [r async for b in read_batches(store, keys_, keys.forwarder.public)
               for r in b.records]  # type: ignore[union-attr]
    assert len(records) == REQUESTS
    assert sorted(r["path"] for r in records) == sorted(f"/echo/{n}" for n in range(REQUESTS))
    result = await verify_log(store, keys.forwarder.public)
    assert result.problems == []
    assert result.forwarders == 3
    print(f"\n{REQUESTS} requests in {elapsed:.1f} s ({REQUESTS / elapsed:.0f}/s); "
          f"shares {shares}")
