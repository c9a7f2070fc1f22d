"""Hardening item 3: the directory store never follows a link, and never touches what is
not its own.

Anyone who can write the mailbox directory can plant a symbolic link at any level, or a
FIFO where an object should be. Each test plants one and checks that nothing outside the
mailbox is read, listed, written or deleted, and that no reader blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest

from tests.relay.harness import FAST, make_keys
from wonders.crypto import new_request_id
from wonders.errors import ObjectNotFound, StoreError
from wonders.mailbox import DirectoryStore, layout
from wonders.relay.forwarder import Forwarder

OLD_ID = new_request_id(time.time() - 10 * 86400)  # long expired: the janitor's to remove
SECRET = b"outside the mailbox: never to be read, listed, written or deleted"


def _tree(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*")) if p.is_file()}


@pytest.fixture
def mailbox(tmp_path: Path) -> Path:
    (tmp_path / "mailbox").mkdir()
    return tmp_path / "mailbox"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the mailbox holding files shaped like mailbox objects."""
    top = tmp_path / "outside"
    for rel in (f"gpu01/{OLD_ID}/head", f"gpu01/{OLD_ID}/body/00000000", "gpu01/junk-id/head"):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_bytes(SECRET)
    return top


async def test_a_linked_requests_dir_never_makes_the_forwarder_delete_outside(
    tmp_path: Path, mailbox: Path, outside: Path
) -> None:
    """The reported attack: requests/ -> a directory elsewhere; the forwarder's listing
    removed 'junk' there at once, and the janitor everything old."""
    before = _tree(outside)
    (mailbox / "requests").symlink_to(outside)
    keys = make_keys(tmp_path, 443)
    future = time.time() + 30 * 86400
    async with DirectoryStore(mailbox) as store:
        forwarder = Forwarder(store, keys.forwarder, keys.policy, FAST, clock=lambda: future)
        errors: list[str] = []
        try:
            heads = [p async for p in forwarder._list_heads()]
        except StoreError as exc:
            heads = []
            errors.append(str(exc))
        try:
            await forwarder.sweep()
        except StoreError as exc:
            errors.append(str(exc))
    assert heads == []
    assert _tree(outside) == before
    assert errors
    assert all(f"{mailbox}/requests is a symbolic link" in e and "remove it" in e
               for e in errors)


LINK_LEVELS = ["requests", "requests/gpu01", f"requests/gpu01/{OLD_ID}",
               f"requests/gpu01/{OLD_ID}/body"]


@pytest.mark.parametrize("level", LINK_LEVELS,
                         ids=["root-child", "client-dir", "id-dir", "body-dir"])
async def test_no_operation_goes_through_a_linked_directory(
    mailbox: Path, outside: Path, level: str
) -> None:
    """A link at the root's child, a client dir, an id dir or a body dir: the key below it
    is not read, listed, deleted, and a write there fails instead of landing outside."""
    depth = level.count("/")
    target = outside / "/".join(["gpu01", OLD_ID, "body"][:depth]) if depth else outside
    link = mailbox / level
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    body = layout.body_key("requests", "gpu01", OLD_ID, 0)
    head = layout.head_key("requests", "gpu01", OLD_ID)
    before = _tree(outside)
    async with DirectoryStore(mailbox) as store:
        for key in (body, head) if depth < 3 else (body,):
            got: bytes | None = None
            with contextlib.suppress(StoreError):
                got = await store.get(key)
            assert got != SECRET
            with contextlib.suppress(StoreError):
                assert not await store.exists(key)
            with contextlib.suppress(StoreError):
                await store.delete(key)
            with pytest.raises(StoreError, match="is a symbolic link"):
                await store.put(key, b"new", create_only=True)
            with pytest.raises(StoreError, match="is a symbolic link"):
                await store.put(key, b"new")
        listed: list[str] = []
        with contextlib.suppress(StoreError):
            listed = [k async for k in store.list("")]
        with contextlib.suppress(StoreError):
            listed += [k async for k in store.list("requests/")]
        assert listed == []
        chunks: list[bytes] = []
        with contextlib.suppress(StoreError):
            chunks = [c async for c in store.stream(body)]
        assert SECRET not in chunks
    assert _tree(outside) == before


async def test_a_link_at_the_key_itself_is_never_read_or_followed(
    mailbox: Path, outside: Path
) -> None:
    key = layout.head_key("requests", "gpu01", OLD_ID)
    secret = outside / f"gpu01/{OLD_ID}/head"
    (mailbox / key).parent.mkdir(parents=True)
    (mailbox / key).symlink_to(secret)
    async with DirectoryStore(mailbox) as store:
        assert [k async for k in store.list("requests/")] == []
        with pytest.raises(StoreError, match="is a symbolic link"):
            await store.get(key)
        with pytest.raises(StoreError, match="is a symbolic link"):
            [c async for c in store.stream(key)]
        assert not await store.exists(key)
        await store.put(key, b"new")  # replaces the link itself, never writes through it
        assert secret.read_bytes() == SECRET
        assert await store.get(key) == b"new"
        await store.delete(key)
    assert secret.read_bytes() == SECRET


@pytest.mark.parametrize("trigger", ["gpu01", OLD_ID], ids=["client-dir", "id-dir"])
async def test_a_link_swapped_in_during_a_write_is_not_followed(
    mailbox: Path, outside: Path, monkeypatch: pytest.MonkeyPatch, trigger: str
) -> None:
    """The attacker swaps requests/gpu01 for a link while the write is under way: just
    before the store opens gpu01 (or, once it holds gpu01, before it opens the id dir;
    older code: before it created its temporary file). Nothing may land outside."""
    key = layout.head_key("requests", "gpu01", OLD_ID)
    (mailbox / key).parent.mkdir(parents=True)
    (outside / OLD_ID).mkdir()
    before = _tree(outside)
    real_open = os.open
    swapped: list[str] = []

    def swapping_open(path: str, flags: int, mode: int = 0o777, *,
                      dir_fd: int | None = None) -> int:
        name = os.path.basename(os.fsdecode(path))
        if not swapped and (name == trigger or name.startswith(".tmp-")):
            swapped.append(name)
            (mailbox / "requests/gpu01").rename(mailbox / "requests/moved")
            (mailbox / "requests/gpu01").symlink_to(outside)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", swapping_open)
    async with DirectoryStore(mailbox) as store:
        with contextlib.suppress(StoreError):
            await store.put(key, b"new")
    assert swapped
    assert _tree(outside) == before


async def test_a_fifo_at_a_key_never_blocks_a_reader_nor_is_listed(mailbox: Path) -> None:
    key = layout.head_key("requests", "gpu01", OLD_ID)
    fifo = mailbox / key
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    async with DirectoryStore(mailbox) as store:
        try:
            assert [k async for k in store.list("requests/")] == []
            assert not await store.exists(key)
            with pytest.raises(StoreError, match="is a FIFO, not a regular file") as info:
                await asyncio.wait_for(store.get(key), 10)  # a blocked open fails here
            assert not isinstance(info.value, ObjectNotFound)
        finally:
            # If a reader is stuck in open(), a writer lets it go (so the test can end).
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
