"""Item 5: a mailbox writer without keys replays an executed request by deleting its
claims and copying its sealed head back. The forwarder recognises the id until the
request expires, also after a restart, without trusting what the mailbox says."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tests.relay.harness import FAST, Keys, Upstream, client_for, running_forwarder
from tests.security.conftest import records, until
from wonders.mailbox import Store, layout


class _Recorder:
    """Captures the request heads a client stores, as a bucket reader could."""

    def __init__(self, store: Store) -> None:
        self.heads: dict[str, bytes] = {}
        self._put = store.put

        async def put(key: str, data: bytes, *, create_only: bool = False) -> None:
            if key.startswith("requests/") and key.endswith("/head"):
                self.heads[key] = data
            await self._put(key, data, create_only=create_only)

        store.put = put  # type: ignore[method-assign]


async def _replay(store: Store, key: str, data: bytes) -> None:
    """Delete every claim of the request (and its done marker), put its head back."""
    rid = key.split("/")[2]
    for claim in [k async for k in store.list(layout.claim_prefix(rid))]:
        await store.delete(claim)
    await store.put(key, data)


async def _gone(store: Store, key: str) -> None:
    async def missing() -> bool:
        return not await store.exists(key)

    await until(missing, f"the forwarder to remove {key}")


@pytest.mark.parametrize("spool", [False, True], ids=["audit-log", "state-dir"])
async def test_a_replayed_post_runs_once_even_after_a_restart(
    store: Store, keys: Keys, upstream: Upstream, tmp_path: Path, spool: bool
) -> None:
    """Before the fix the copied head found no claim, won attempt 0 and ran again. The
    restart rebuilds the executed ids from the audit log, or reads them from the state
    directory beside the spool file."""
    options: dict[str, Any] = {"audit_spool": tmp_path / "state" / "spool.jsonl"} if spool else {}
    recorder = _Recorder(store)
    async with running_forwarder(store, keys, upstream, **options) as forwarder, \
            client_for(store, keys) as client:
        async with await client.request("POST", f"{upstream.url}/echo", body=b"once") as r:
            assert r.status == 200
        (key, data), = recorder.heads.items()
        await _replay(store, key, data)
        forwarder._wake.set()
        await _gone(store, key)
    assert upstream.hits["/echo"] == 1
    async with running_forwarder(store, keys, upstream, **options):
        await _replay(store, key, data)
        await _gone(store, key)
    assert upstream.hits["/echo"] == 1
    rid = key.split("/")[2]
    mine = [r for r in await records(store, keys.forwarder) if r["id"] == rid]
    assert [(r["decision"], r["error"]) for r in mine] == [
        ("allow", None), ("rejected", "replay"), ("rejected", "replay")]
    assert all(r["method"] == "POST" for r in mine)
    assert [k async for k in store.list(layout.RESPONSES)] == []  # nothing answered twice


async def test_a_replay_to_another_forwarder_is_refused_by_the_intent(
    store: Store, keys: Keys, upstream: Upstream
) -> None:
    """A second forwarder never saw the request; the intent that the first one stored
    (signed, create-only) for attempt 0 tells it the request ran, when only the claims
    and done marker were deleted."""
    recorder = _Recorder(store)
    async with running_forwarder(store, keys, upstream), client_for(store, keys) as client:
        async with await client.request("POST", f"{upstream.url}/echo", body=b"once") as r:
            assert r.status == 200
    (key, data), = recorder.heads.items()
    rid = key.split("/")[2]
    for claim in (layout.claim_key(rid, 0), layout.done_key(rid)):
        await store.delete(claim)
    await store.put(key, data)
    other = dataclasses.replace(FAST, id="fw-other")
    async with running_forwarder(store, keys, upstream, other):
        await _gone(store, key)
    assert upstream.hits["/echo"] == 1
    refused = [r for r in await records(store, keys.forwarder)
               if r["id"] == rid and r["forwarder"] == "fw-other"]
    assert [(r["decision"], r["error"]) for r in refused] == [("rejected", "replay")]
