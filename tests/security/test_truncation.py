"""Item 6: rolling back (or deleting) ``audit/head/<forwarder>.json`` together with the
newest batches hid them from ``audit verify``, and a restarted forwarder continued its
chain from the cut. The chain's tip is now also in the signed heartbeat and in the
forwarder's state directory."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import pytest

from tests.eventually import eventually
from tests.relay.harness import FAST, Keys, Upstream, client_for, running_forwarder
from wonders.audit import batch_keys, parse_head, verify_log
from wonders.errors import ObjectNotFound, WondersError
from wonders.mailbox import Store, layout
from wonders.relay.forwarder import Forwarder
from wonders.relay.records import parse_heartbeat

AUDITED = dataclasses.replace(FAST, audit_interval=0.02)


async def _three_batches(forwarder: Forwarder, store: Store, keys: Keys,
                         upstream: Upstream) -> list[tuple[str, bytes]]:
    """Three requests, one batch each; the head object after each batch."""
    heads = []
    async with client_for(store, keys) as client:
        for n in range(3):
            async with await client.request("GET", f"{upstream.url}/echo/{n}") as response:
                assert response.status == 200
            key = layout.audit_head_key(AUDITED.id)

            async def written(n: int = n, key: str = key) -> bool:  # the writer's next turn
                with contextlib.suppress(ObjectNotFound):
                    return parse_head(await store.get(key), keys.forwarder.public).seq == n
                return False

            await eventually(written, what=f"batch {n} and its head object")
            heads.append((key, await store.get(key)))

    async def anchored() -> bool:  # the next heartbeat names the newest batch
        beat = parse_heartbeat(await store.get(layout.heartbeat_key(AUDITED.id)),
                               keys.forwarder.public)
        return beat is not None and beat.audit["seq"] == 2

    await eventually(anchored, what="a heartbeat naming batch 2")
    return heads


async def _newest_deleted(store: Store, count: int) -> None:
    keys = await batch_keys(store, None, time.time())
    for key in keys[-count:]:
        await store.delete(key)


async def _problems(store: Store, keys: Keys) -> list[str]:
    return [str(p) for p in (await verify_log(store, keys.forwarder.public)).problems]


@pytest.mark.parametrize("head", ["rolled-back", "deleted"])
async def test_verify_sees_deleted_newest_batches_past_the_head(
    store: Store, keys: Keys, upstream: Upstream, head: str
) -> None:
    async with running_forwarder(store, keys, upstream, AUDITED) as forwarder:
        heads = await _three_batches(forwarder, store, keys, upstream)
        assert await _problems(store, keys) == []
        await _newest_deleted(store, 2)
        key, old = heads[0]
        if head == "rolled-back":
            await store.put(key, old)
        else:
            await store.delete(key)
        problems = await _problems(store, keys)
        assert len(problems) == 1, problems
        assert "batches 1-2 of forwarder fw-test missing" in problems[0]
        assert "the heartbeat of fw-test names batch 2" in problems[0]


@pytest.mark.parametrize("head", ["rolled-back", "deleted"])
async def test_a_restart_refuses_to_continue_from_the_cut(
    store: Store, keys: Keys, upstream: Upstream, tmp_path: Path, head: str
) -> None:
    """With a state directory (beside the spool file) the tip survives a clean stop,
    which deletes the heartbeat."""
    spool = tmp_path / "state" / "spool.jsonl"
    async with running_forwarder(store, keys, upstream, AUDITED,
                                 audit_spool=spool) as forwarder:
        heads = await _three_batches(forwarder, store, keys, upstream)
    await _newest_deleted(store, 1)
    key, old = heads[1]
    if head == "rolled-back":
        await store.put(key, old)
    else:
        await store.delete(key)
    with pytest.raises(WondersError, match=r"ends at batch 1 .* names batch 2"):
        async with running_forwarder(store, keys, upstream, AUDITED, audit_spool=spool):
            pass
    assert len(await batch_keys(store, None, time.time())) == 2  # nothing written after


async def test_a_restart_after_a_crash_checks_the_last_heartbeat(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    """Without a state directory, a forwarder that died leaves its signed heartbeat, whose
    tip the restart checks before it continues the chain."""
    async with running_forwarder(store, keys, upstream, AUDITED) as forwarder:
        heads = await _three_batches(forwarder, store, keys, upstream)
        beat = await store.get(layout.heartbeat_key(AUDITED.id))
    await store.put(layout.heartbeat_key(AUDITED.id), beat)  # as a killed one leaves it
    await _newest_deleted(store, 1)
    await store.put(*heads[1])
    with pytest.raises(WondersError, match="its last heartbeat"):
        async with running_forwarder(store, keys, upstream, AUDITED):
            pass
