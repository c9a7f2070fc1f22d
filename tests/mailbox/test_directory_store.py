"""DirectoryStore behaviour beyond the contract: its files, and its errors."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from wonders.errors import ObjectExists, StoreError
from wonders.mailbox import MAX_KEY, DirectoryStore


async def test_objects_are_plain_files_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    await store.put("requests/gpu01/01A/head", b"one")
    await store.put("requests/gpu01/01A/head", b"two")
    await store.put("claims/01A", b"c", create_only=True)
    with pytest.raises(ObjectExists):
        await store.put("claims/01A", b"d", create_only=True)
    assert (tmp_path / "requests/gpu01/01A/head").read_bytes() == b"two"
    leftovers = [p for p in tmp_path.rglob(".*")]
    assert leftovers == []


async def test_temporary_and_dot_files_are_never_listed(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    await store.put("requests/a/head", b"x")
    (tmp_path / "requests/a/.tmp-head-123").write_bytes(b"partial")
    (tmp_path / ".nfs0001").write_bytes(b"")
    assert [k async for k in store.list("")] == ["requests/a/head"]


async def test_delete_removes_empty_directories_up_to_the_top_level(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    await store.put("responses/gpu01/01A/body/00000000", b"x")
    await store.put("responses/gpu01/01B/head", b"x")
    await store.delete("responses/gpu01/01A/body/00000000")
    assert not (tmp_path / "responses/gpu01/01A").exists()
    assert (tmp_path / "responses/gpu01/01B/head").exists()
    await store.delete("responses/gpu01/01B/head")
    assert [p.name for p in tmp_path.iterdir()] == ["responses"]  # the operator's to keep
    assert list((tmp_path / "responses").iterdir()) == []


async def test_check_names_a_missing_directory(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "nope")
    with pytest.raises(StoreError, match=r"no such directory; create it") as info:
        await store.check()
    assert (tmp_path / "nope").as_uri() in str(info.value)


async def test_a_file_in_the_way_of_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path)
    await store.put("requests/a", b"x")
    with pytest.raises(StoreError, match=r"cannot write requests/a/head: .*file") as info:
        await store.put("requests/a/head", b"y")
    assert not isinstance(info.value, ObjectExists)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("create_only", [True, False])
async def test_put_survives_a_parent_removed_while_it_is_being_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, create_only: bool
) -> None:
    """Two deletes climbing through responses/gpu01/ can remove it right after a put
    re-created it and before the put made gpu01/<id>/ inside (seen once in CI as 'No such
    file or directory'). The interleaving is forced here: the put must retry and land."""
    store = DirectoryStore(tmp_path)
    real_mkdir = os.mkdir
    removed: list[str] = []

    def mkdir_then_lose_it(path: str, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)
        if Path(path).name == "gpu01" and not removed:
            removed.append(path)
            os.rmdir(path, dir_fd=dir_fd)  # the other delete's rmdir, landing in the window

    monkeypatch.setattr(os, "mkdir", mkdir_then_lose_it)
    await store.put("responses/gpu01/01A/head", b"x", create_only=create_only)
    assert removed
    assert await store.get("responses/gpu01/01A/head") == b"x"


async def test_a_put_lands_while_a_delete_empties_and_removes_its_directory(
    tmp_path: Path,
) -> None:
    """What a streamed response does all the time: the client deletes the segment it read
    while the forwarder stores the next one beside it, and the delete removes body/ once it
    is empty. The store of the second session lost this race now and then (Path.mkdir
    found body/, the delete removed it, the check that it is a directory said no) and the
    put failed with 'a parent is a file': the trigger of the stall in CI
    (tests/relay/test_stalls.py). Eight responses race at once, 100 segments each."""
    store = DirectoryStore(tmp_path)
    ids = [f"01M8VJ2H0E4S98NWRPX4AKKW{n:02d}" for n in range(8)]

    def segment(rid: str, n: int) -> str:
        return f"responses/gpu01/{rid}/body/{n:08d}"

    for rid in ids:
        await store.put(f"responses/gpu01/{rid}/head", b"head")
        await store.put(segment(rid, 0), b"0")
    for n in range(1, 100):
        await asyncio.gather(*(step for rid in ids for step in (
            store.delete(segment(rid, n - 1)), store.put(segment(rid, n), b"%d" % n))))
    assert [k async for k in store.list("responses/")] == [
        key for rid in ids for key in (segment(rid, 99), f"responses/gpu01/{rid}/head")]


async def test_a_hard_link_at_a_key_is_replaced_never_written_through(tmp_path: Path) -> None:
    """Writes create a new file and rename it into place, so a planted hard link to a file
    elsewhere is replaced (that file keeps its bytes), and a delete removes only the name."""
    (tmp_path / "mailbox").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"theirs")
    key = "requests/gpu01/01A/head"
    (tmp_path / "mailbox" / key).parent.mkdir(parents=True)
    os.link(elsewhere, tmp_path / "mailbox" / key)
    store = DirectoryStore(tmp_path / "mailbox")
    await store.put(key, b"ours")
    assert elsewhere.read_bytes() == b"theirs"
    assert await store.get(key) == b"ours"
    os.unlink(tmp_path / "mailbox" / key)
    os.link(elsewhere, tmp_path / "mailbox" / key)
    await store.delete(key)
    assert elsewhere.read_bytes() == b"theirs"


async def test_the_root_may_be_a_link_resolved_once(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "configured").symlink_to(tmp_path / "real")
    store = DirectoryStore(tmp_path / "configured")
    assert store.root == tmp_path / "real"
    await store.check()
    await store.put("status/x", b"1")
    assert (tmp_path / "real/status/x").read_bytes() == b"1"


async def test_an_unreadable_client_dir_does_not_hide_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = DirectoryStore(tmp_path)
    await store.put("requests/a/01A/head", b"x")
    await store.put("requests/b/01B/head", b"x")
    real_open = os.open

    def refusing_open(path: str, flags: int, mode: int = 0o777, *,
                      dir_fd: int | None = None) -> int:
        if path == "a" and dir_fd is not None:
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", refusing_open)
    for _ in range(3):
        assert [k async for k in store.list("requests/")] == ["requests/b/01B/head"]
    warnings = [r for r in caplog.records if "requests/a" in r.getMessage()]
    assert len(warnings) == 1  # once, not at every poll
    assert "Permission denied" in warnings[0].getMessage()


async def test_a_planted_maze_of_directories_is_not_entered_past_any_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Directories nested deeper than any key can reach are not entered: a maze costs
    neither recursion nor descriptors (listing recurses, one descriptor a level)."""
    store = DirectoryStore(tmp_path)
    await store.put("requests/gpu01/01A/head", b"x")
    levels = MAX_KEY  # "a/" a level: twice as deep as any key reaches
    fd = os.open(tmp_path / "requests", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("a", dir_fd=fd)
            inner = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("head", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
    finally:
        os.close(fd)
    real_open = os.open
    depth = [0]

    def counting_open(path: str, flags: int, mode: int = 0o777, *,
                      dir_fd: int | None = None) -> int:
        if path == "a":
            depth[0] += 1
        return real_open(path, flags, mode, dir_fd=dir_fd)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "open", counting_open)
            assert [k async for k in store.list("requests/")] == ["requests/gpu01/01A/head"]
        assert depth[0] <= MAX_KEY // 2
        assert any("nested deeper than any object key" in r.getMessage()
                   for r in caplog.records)
    finally:
        shutil.rmtree(tmp_path / "requests" / "a")  # deep trees trouble later cleanups


def test_throttle_says_a_thing_once_per_interval() -> None:
    from wonders.text import Throttle

    now = [0.0]
    throttle = Throttle(60.0, size=2, clock=lambda: now[0])
    assert throttle("a")
    assert not throttle("a")
    now[0] = 61.0
    assert throttle("a")
    assert throttle("b")
    assert throttle("c")  # "a" is forgotten: the memory is bounded
    assert throttle("a")
