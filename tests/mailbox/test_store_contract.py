"""The Store contract: one suite, run against the directory store and a real S3 endpoint."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import open_backend
from wonders.errors import ObjectExists, ObjectNotFound
from wonders.mailbox import DirectoryStore, Store, is_key


@pytest.fixture(params=["directory", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each backend, both in the fast tier: this is the contract the rest relies on."""
    async with open_backend(request, tmp_path) as backend:
        yield backend


async def _keys(store: Store, prefix: str, start_after: str | None = None) -> list[str]:
    return [key async for key in store.list(prefix, start_after=start_after)]


async def test_put_then_get_returns_the_bytes(store: Store) -> None:
    await store.put("requests/gpu01/a/head", b"\x00sealed\xff")
    assert await store.get("requests/gpu01/a/head") == b"\x00sealed\xff"


async def test_an_empty_object_is_stored_and_read_as_empty(store: Store) -> None:
    await store.put("x/empty", b"")
    assert await store.get("x/empty") == b""
    assert await store.exists("x/empty")


async def test_plain_put_replaces(store: Store) -> None:
    await store.put("k", b"one")
    await store.put("k", b"two")
    assert await store.get("k") == b"two"


async def test_create_only_refuses_a_taken_key_and_keeps_the_first(store: Store) -> None:
    await store.put("claims/01", b"first", create_only=True)
    with pytest.raises(ObjectExists, match="claims/01"):
        await store.put("claims/01", b"second", create_only=True)
    assert await store.get("claims/01") == b"first"


async def test_concurrent_create_only_has_exactly_one_winner(store: Store) -> None:
    async def attempt(i: int) -> bool:
        try:
            await store.put("claims/race", f"writer {i}".encode(), create_only=True)
        except ObjectExists:
            return False
        return True

    wins = await asyncio.gather(*(attempt(i) for i in range(12)))
    assert wins.count(True) == 1
    winner = wins.index(True)
    assert await store.get("claims/race") == f"writer {winner}".encode()


async def test_a_missing_object_is_not_found_by_get_stream_or_exists(store: Store) -> None:
    with pytest.raises(ObjectNotFound, match="nothing/here"):
        await store.get("nothing/here")
    with pytest.raises(ObjectNotFound):
        async for _ in store.stream("nothing/here"):
            pass
    assert not await store.exists("nothing/here")


async def test_a_prefix_is_not_an_object(store: Store) -> None:
    await store.put("dir/inside", b"x")
    assert not await store.exists("dir")
    with pytest.raises(ObjectNotFound):
        await store.get("dir")


async def test_stream_yields_the_object_in_bounded_pieces(store: Store) -> None:
    data = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32 + 7)
    await store.put("big", data)
    pieces = [piece async for piece in store.stream("big", chunk_size=256 * 1024)]
    assert b"".join(pieces) == data
    assert len(pieces) >= len(data) // (256 * 1024)
    assert max(len(p) for p in pieces) <= 256 * 1024


async def test_list_is_sorted_and_filtered_by_prefix(store: Store) -> None:
    keys = [
        "requests/gpu01/01B/head",
        "requests/gpu01/01A/body/00000001",
        "requests/gpu01/01A/body/00000000",
        "requests/gpu01/01A/head",
        "requests/gpu02/01C/head",
        "requests/gpu01-old/01D/head",
        "responses/gpu01/01A/head",
    ]
    await asyncio.gather(*(store.put(k, b"x") for k in keys))
    assert await _keys(store, "requests/gpu01/") == [
        "requests/gpu01/01A/body/00000000",
        "requests/gpu01/01A/body/00000001",
        "requests/gpu01/01A/head",
        "requests/gpu01/01B/head",
    ]
    # a prefix may end inside a key segment, as on S3
    assert await _keys(store, "requests/gpu01") == sorted(
        k for k in keys if k.startswith("requests/gpu01")
    )
    assert await _keys(store, "") == sorted(keys)
    assert await _keys(store, "nothing/") == []


async def test_list_start_after_resumes_a_scan(store: Store) -> None:
    keys = [f"requests/c/{i:03d}/head" for i in range(10)]
    await asyncio.gather(*(store.put(k, b"x") for k in keys))
    assert await _keys(store, "requests/c/", start_after=keys[6]) == keys[7:]
    assert await _keys(store, "requests/c/", start_after="requests/c/004") == keys[4:]
    assert await _keys(store, "requests/c/", start_after=keys[-1]) == []


async def test_list_skips_objects_whose_names_are_not_keys(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone who may write to the mailbox can make an object under any name: a listing
    skips (and logs once) one that is not a valid key, leaves it, and never raises, so
    that every key it yields can be read and deleted."""
    from tests.security._mailbox import exists_raw, odd_names, put_raw

    caplog.set_level(logging.WARNING, "wonders.store")
    odd = [n for n in odd_names(store, "01M808TX000000000000000001") if not is_key(n)]
    for name in odd:
        await put_raw(store, name)
    await store.put("requests/gpu01/ok", b"x")
    for _ in range(2):
        listed = await _keys(store, "requests/")
        assert listed == ["requests/gpu01/ok"]
        for key in listed:
            await store.get(key)
    assert await _keys(store, "requests/gpu01/", start_after="requests/gpu01/a") == listed
    for name in odd:
        assert await exists_raw(store, name), name
    if isinstance(store, DirectoryStore):  # a trailing slash makes a directory, no object
        odd = [n for n in odd if not n.endswith("/")]
    assert len(caplog.records) == len(odd)


@pytest.mark.slow
async def test_list_returns_more_than_one_page(store: Store) -> None:
    keys = [f"q/{i:05d}" for i in range(1005)]  # S3 pages hold 1000 keys
    semaphore = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with semaphore:
            await store.put(key, b"")

    await asyncio.gather(*(put(k) for k in keys))
    assert await _keys(store, "q/") == keys


async def test_delete_is_idempotent(store: Store) -> None:
    await store.put("responses/gpu01/01A/head", b"x")
    await store.delete("responses/gpu01/01A/head")
    await store.delete("responses/gpu01/01A/head")
    assert not await store.exists("responses/gpu01/01A/head")
    assert await _keys(store, "responses/") == []
    await store.delete("never/was")


async def test_readers_never_see_a_partial_object(store: Store) -> None:
    versions = [bytes([v]) * (2 * 1024 * 1024) for v in range(1, 5)]
    await store.put("hot", versions[0])
    done = asyncio.Event()

    async def writer() -> None:
        for version in versions[1:] * 3:
            await store.put("hot", version)
        done.set()

    async def reader() -> int:
        reads = 0
        while not done.is_set():
            assert await store.get("hot") in versions
            reads += 1
        return reads

    results = await asyncio.gather(writer(), reader(), reader())
    assert sum(r for r in results if isinstance(r, int)) > 0


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "../up", "a/../b", ".hidden", "a/.tmp-x", "a/", "sp ace", "é"]
)
async def test_invalid_keys_are_refused(store: Store, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        await store.put(key, b"x")


async def test_check_passes_on_a_usable_store_and_changes_nothing(store: Store) -> None:
    await store.put("requests/gpu01/a/head", b"x")
    await store.check()
    await store.check("requests/gpu01/")
    await store.check("responses/")  # nothing under it yet
    assert await _keys(store, "") == ["requests/gpu01/a/head"]
    assert await store.get("requests/gpu01/a/head") == b"x"


async def test_get_with_a_size_limit(store: Store) -> None:
    from wonders.errors import ObjectTooLarge

    await store.put("sized", b"0123456789")
    assert await store.get("sized", max_bytes=10) == b"0123456789"
    with pytest.raises(ObjectTooLarge, match=r"sized is 10 bytes, over the 9-byte limit") as info:
        await store.get("sized", max_bytes=9)
    assert (info.value.key, info.value.size, info.value.limit) == ("sized", 10, 9)
    await store.put("nothing", b"")
    assert await store.get("nothing", max_bytes=0) == b""
    with pytest.raises(ObjectNotFound):
        await store.get("missing", max_bytes=10)
