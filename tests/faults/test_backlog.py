"""A backlog of 10,000 requests is drained, and listing it costs keys in proportion to the
backlog, not to its square (the forwarder works through a listed backlog from memory)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.eventually import eventually
from tests.relay.harness import FAST, Keys, Upstream, make_keys, running_forwarder
from wonders.crypto import RequestHead, new_request_id, seal_request
from wonders.mailbox import DirectoryStore, layout
from wonders.relay.records import PING_URL

BACKLOG = 10_000


class CountingStore(DirectoryStore):
    """Counts the keys listed under ``requests/``."""

    listed = 0

    async def list(self, prefix: str, *, start_after: str | None = None) -> AsyncIterator[str]:
        async for key in super().list(prefix, start_after=start_after):
            if key.startswith(layout.REQUESTS):
                self.listed += 1
            yield key


@pytest.mark.slow
async def test_a_backlog_of_ten_thousand_is_drained_with_linear_listing(
    tmp_path: Path, upstream: Upstream
) -> None:
    keys: Keys = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))
    store = CountingStore(tmp_path / "mailbox")
    sender, recipient = keys.clients["gpu01"], keys.forwarder.public
    now = time.time()

    async def put(n: int) -> None:
        rid = new_request_id(now, n.to_bytes(10, "big"))
        sealed = seal_request(RequestHead("GET", PING_URL), request_id=rid, sender=sender,
                              recipient=recipient, now=now, lifetime=3000)
        await store.put(layout.head_key("requests", "gpu01", rid), sealed.data)

    for start in range(0, BACKLOG, 500):
        await asyncio.gather(*(put(n) for n in range(start, start + 500)))
    store.listed = 0
    began = time.monotonic()
    async with running_forwarder(store, keys, upstream, FAST) as forwarder:
        await eventually(lambda: forwarder.counters.requests >= BACKLOG, 600,
                         what=f"{BACKLOG} requests to be drained",
                         explain=lambda: f"{forwarder.counters.requests} drained")
        drained = time.monotonic() - began
    answers = [k async for k in DirectoryStore(tmp_path / "mailbox").list("responses/")]
    assert len(answers) == BACKLOG
    per_request = store.listed / BACKLOG
    print(f"\n{BACKLOG} requests drained in {drained:.1f} s; {store.listed} keys listed "
          f"({per_request:.1f} per request)")
    # Re-listing the whole backlog on every poll would list ~BACKLOG/2 keys per request.
    assert per_request < 30
