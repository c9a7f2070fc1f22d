"""Item 7: nothing executed goes unaudited, even when a forwarder is killed. Before the
upstream sees a byte, a signed intent (the request's audit essentials) is stored beside
the claim; a forwarder that takes the request over, or the killed one restarted,
completes the record, and ``audit verify`` reports an intent no record completes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli.test_forward_cli import Process, processes  # noqa: F401 (a fixture)
from tests.eventually import eventually
from tests.relay.harness import (
    FAST,
    Keys,
    Upstream,
    WrappedStore,
    client_for,
    running_forwarder,
)
from tests.security.conftest import records
from wonders.audit import AuditWriter, verify_log
from wonders.crypto import write_key_files
from wonders.errors import StoreError
from wonders.mailbox import DirectoryStore, Store
from wonders.relay.forwarder import Forwarder, ForwarderSettings


class _Killable(WrappedStore):
    """The store as a forwarder sees it; once ``dead``, nothing it does reaches it."""

    dead = False

    def _on(self, action: str, key: str) -> None:
        if self.dead:
            raise StoreError("the process was killed (a test)")


@contextlib.asynccontextmanager
async def _doomed(store: Store, keys: Keys, upstream: Upstream,
                  settings: ForwarderSettings) -> AsyncIterator[tuple[Forwarder, _Killable]]:
    """A forwarder to be killed with :func:`_kill`: afterwards nothing it does reaches the
    store, as if its process were gone (its heartbeat stays, as a killed one's does)."""
    view = _Killable(store)
    forwarder = Forwarder(view, keys.forwarder, keys.policy,
                          dataclasses.replace(settings, grace=0.1),
                          upstream_ca=str(upstream.ca_file))
    task = asyncio.create_task(forwarder.run())
    await asyncio.wait_for(forwarder.ready.wait(), 30)
    try:
        yield forwarder, view
    finally:
        # Nothing reaches the store any more: what the process does from here on is as
        # good as not done. (stop() rather than cancel(): on Python 3.11, wait_for can
        # swallow a cancellation that arrives with its timeout.)
        view.dead = True
        for each in forwarder._active.values():
            each.cancel()
        forwarder.stop()
        await asyncio.wait_for(task, 30)


async def _kill(forwarder: Forwarder, view: _Killable, upstream: Upstream) -> None:
    view.dead = True
    upstream.release.set()  # a connection held open upstream would hold up the kill
    tasks = list(forwarder._active.values())
    for each in tasks:
        each.cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


async def _problems(store: Store, keys: Keys) -> list[str]:
    return [str(p) for p in (await verify_log(store, keys.forwarder.public)).problems]


@pytest.mark.parametrize("completion", [True, False], ids=["completed", "disabled"])
async def test_a_survivor_records_the_post_a_killed_forwarder_was_executing(
    store: Store, keys: Keys, upstream: Upstream, monkeypatch: pytest.MonkeyPatch,
    completion: bool,
) -> None:
    if not completion:
        async def nothing(self: Forwarder, rid: str, attempt: int) -> None:
            return None

        monkeypatch.setattr(Forwarder, "_complete", nothing)
    async with client_for(store, keys) as client:
        async with _doomed(store, keys, upstream, dataclasses.replace(
                FAST, id="fw-a", heartbeat_interval=0.2)) \
                as (doomed, view):
            pending = asyncio.create_task(
                client.request("POST", f"{upstream.url}/hold", body=b"x", timeout=60))
            await asyncio.wait_for(upstream.held.wait(), 30)  # the upstream has it
            await _kill(doomed, view, upstream)  # before its record is in any batch
        survivor = dataclasses.replace(FAST, id="fw-b", stale_after=0.5)
        async with running_forwarder(store, keys, upstream, survivor):
            async with await asyncio.wait_for(pending, 60) as response:
                assert response.status == 502
                assert response.header("X-Wonders-Error") == "not-retried"
    assert upstream.hits["/hold"] == 1
    mine = sorted((r["attempt"], r["error"], r["decision"])
                   for r in await records(store, keys.forwarder))
    if completion:
        assert mine == [(0, "forwarder-died", "allow"), (1, "not-retried", "-")]
        assert await _problems(store, keys) == []
    else:
        assert mine == [(1, "not-retried", "-")]
        # reported once fw-a's last heartbeat is past its interval
        found = await eventually(lambda: _problems(store, keys),
                                 what="verify to report the incomplete attempt")
        assert len(found) == 1, found
        assert "attempt 0 of client gpu01 (POST https://localhost" in found[0]
        assert "by forwarder fw-a" in found[0]
        assert "no audit record completes it" in found[0]


@pytest.mark.parametrize("completion", [True, False], ids=["completed", "disabled"])
async def test_a_restarted_forwarder_records_what_it_answered_before_it_was_killed(
    store: Store, keys: Keys, upstream: Upstream, monkeypatch: pytest.MonkeyPatch,
    completion: bool,
) -> None:
    """Killed after answering, before the batch with the record was written: the request
    is gone from the mailbox, so no one takes it over; the restart completes it."""
    if not completion:
        async def nothing(self: AuditWriter, *args: object) -> None:
            return None

        monkeypatch.setattr(AuditWriter, "_complete_orphans", nothing)
    never = dataclasses.replace(FAST, audit_interval=3600)
    async with _doomed(store, keys, upstream, never) as (doomed, view), \
            client_for(store, keys) as client:
        async with await client.request("GET", f"{upstream.url}/echo") as response:
            assert response.status == 200
        await _kill(doomed, view, upstream)
    assert await records(store, keys.forwarder) == []
    async with running_forwarder(store, keys, upstream):
        pass
    mine = [(r["attempt"], r["error"], r["method"]) for r in await records(store, keys.forwarder)]
    if completion:
        assert mine == [(0, "forwarder-died", "GET")]
        assert await _problems(store, keys) == []
    else:
        assert mine == []
        problems = await _problems(store, keys)
        assert len(problems) == 1, problems
        assert "no audit record completes it" in problems[0]


@pytest.mark.slow
async def test_a_sigkilled_forwarder_process_leaves_no_unaudited_post(
    tmp_path: Path, upstream: Upstream, keys: Keys,
    processes: list[Process],  # noqa: F811 (the fixture imported above)
) -> None:
    """``wonders forward`` killed with SIGKILL while the upstream holds its POST; the
    restarted process answers 502 not-retried and records the dead attempt."""
    from tests.cli.test_forward_cli import _config, _start, _until_alive

    write_key_files(keys.forwarder, tmp_path / "keys", force=True)
    (tmp_path / "mailbox").mkdir()
    mailbox = DirectoryStore(tmp_path / "mailbox")
    config = _config(tmp_path, upstream)
    first = _start(tmp_path, config, processes)
    await _until_alive(mailbox, keys, first)
    async with client_for(mailbox, keys) as client:
        pending = asyncio.create_task(
            client.request("POST", f"{upstream.url}/hold", body=b"payload", timeout=60))
        await asyncio.wait_for(upstream.held.wait(), 30)
        os.kill(first.proc.pid, signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        upstream.release.set()
        second = _start(tmp_path, config, processes)
        async with await asyncio.wait_for(pending, 60) as response:
            assert response.status == 502
        second.proc.send_signal(signal.SIGTERM)
        assert await second.wait() == 0
    assert upstream.hits["/hold"] == 1
    mine = sorted((r["attempt"], r["error"]) for r in await records(mailbox, keys.forwarder))
    assert mine == [(0, "forwarder-died"), (1, "not-retried")]
    assert await _problems(mailbox, keys) == []
