"""Filesystem wakeups on a directory mailbox: a request is answered although neither side
would poll again within the test's deadline."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from tests.relay.harness import FAST, client_for, make_keys, running_forwarder, serve_upstream
from wonders.mailbox import DirectoryStore, watch

# Polls once at start, then every 60 s: only an event can make either side look sooner.
SLOW = dataclasses.replace(FAST, poll_fast=60.0, poll_slow=60.0)
DEADLINE = 30.0


async def test_both_sides_wake_on_filesystem_events(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "mailbox")
    store.root.mkdir()
    async with serve_upstream(tmp_path) as upstream:
        keys = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))
        async with running_forwarder(store, keys, upstream, SLOW), \
                client_for(store, keys, poll_fast=60.0, poll_slow=60.0) as client:
            for path in ("/echo", "/bytes/300000", "/echo"):  # inline, streamed, and again
                async with asyncio.timeout(DEADLINE):
                    response = await client.request("GET", upstream.url + path)
                    async with response:
                        assert response.status == 200
                        await response.read()


async def test_the_watcher_follows_the_prefix_as_it_comes_and_goes(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    woken = asyncio.Event()
    task = watch(store, "responses/gpu01/", woken.set)
    assert task is not None
    try:
        async def expect_wake(action: str) -> None:
            try:
                await asyncio.wait_for(woken.wait(), DEADLINE)
            except TimeoutError:
                raise AssertionError(f"no wake after {action}") from None
            woken.clear()

        await expect_wake("start")  # one wake at start: a poll covers what was there
        for _ in range(2):  # the prefix is removed when empty, then made again
            await store.put("responses/gpu01/01J0000000000000000000000A/head", b"x")
            await expect_wake("head")
            await store.put("responses/gpu01/01J0000000000000000000000A/body/00000000", b"y")
            await expect_wake("segment")
            await store.delete("responses/gpu01/01J0000000000000000000000A/body/00000000")
            await store.delete("responses/gpu01/01J0000000000000000000000A/head")
            assert not (tmp_path / "responses" / "gpu01").exists()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_watcher_never_follows_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    root = tmp_path / "mailbox"
    (root / "requests").mkdir(parents=True)
    (root / "requests" / "gpu01").symlink_to(outside, target_is_directory=True)
    store = DirectoryStore(root)
    woken = asyncio.Event()
    task = watch(store, "requests/", woken.set)
    assert task is not None
    try:
        await asyncio.wait_for(woken.wait(), DEADLINE)
        # a directory made afterwards is watched: the watcher has settled once it wakes
        woken.clear()
        (root / "requests" / "gpu02").mkdir()
        await asyncio.wait_for(woken.wait(), DEADLINE)
        import gc

        from asyncinotify import Inotify
        watchers = [o for o in gc.get_objects() if isinstance(o, Inotify)]
        watched = {w.path for i in watchers for w in i.watches}
        assert root / "requests" / "gpu02" in watched
        assert not any(p == outside or outside in p.parents for p in watched)
        assert root / "requests" / "gpu01" not in watched
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_no_events_from_s3_polling_stays() -> None:
    class NotADirectoryStore:
        pass

    assert watch(NotADirectoryStore(), "requests/", lambda: None) is None  # type: ignore[arg-type]
