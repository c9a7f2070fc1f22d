"""Hardening item 12: directory mailbox permissions.

Files followed the umask (0644: the plaintext audit log readable by every local user), a
world-writable mailbox was accepted, and a permission failure was retried (and logged)
every second, forever. The tests run as whatever user runs them (often root, whom
permission bits do not stop), so denials are injected where the store meets the kernel.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.relay.harness import FAST, make_keys
from wonders.cli import main
from wonders.crypto import new_request_id
from wonders.errors import StoreError, StorePermissionError
from wonders.mailbox import DirectoryStore, layout
from wonders.relay.forwarder import Forwarder

TOP_DIRS = ("requests", "responses", "claims", "status", "audit")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000], ids=lambda m: f"umask-{m:03o}")
async def test_the_store_sets_its_modes_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        store = DirectoryStore(tmp_path)
        await store.put("requests/gpu01/01A/head", b"x")
        await store.put("claims/01A/0000", b"c", create_only=True)
        await store.put("audit/2026/11/23/fw1/000000000000.jsonl", b"log")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "requests/gpu01/01A/head") == 0o640
    assert _mode(tmp_path / "claims/01A/0000") == 0o640
    assert _mode(tmp_path / "audit/2026/11/23/fw1/000000000000.jsonl") == 0o600
    for directory in ("requests", "requests/gpu01", "requests/gpu01/01A", "audit/2026/11/23"):
        assert _mode(tmp_path / directory) == 0o2770, directory


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o703], ids=lambda m: f"mode-{m:04o}")
async def test_check_refuses_a_world_writable_mailbox(tmp_path: Path, mode: int) -> None:
    root = tmp_path / "mailbox"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(StoreError) as info:
        await DirectoryStore(root).check()
    message = str(info.value)
    assert f"run chmod o-rwx {root}" in message
    assert f"mode {mode:04o}" in message
    if mode & stat.S_ISVTX:
        assert "sticky bit does not help" in message
    assert info.value.exit_code != 0


def _deny(monkeypatch: pytest.MonkeyPatch, match: str) -> None:
    """Make ``os.open`` of names starting with ``match`` fail with EACCES."""
    real_open = os.open

    def denied(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if os.path.basename(os.fsdecode(path)).startswith(match):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", denied)


async def test_a_permission_failure_names_the_path_and_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = DirectoryStore(tmp_path)
    await store.put("requests/gpu01/01A/head", b"x")
    _deny(monkeypatch, ".tmp-")
    with pytest.raises(StorePermissionError) as info:
        await store.put("requests/gpu01/01A/head", b"y")
    message = str(info.value)
    assert f"permission denied on {tmp_path}/requests/gpu01/01A/head" in message
    assert "chgrp -R " in message
    assert f"find {tmp_path} -type d -exec chmod g+s" in message
    assert "\n" not in message


async def test_the_forwarder_reports_a_permission_failure_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A request head the forwarder may not read: said once, with the fix, and looked at
    again after stale_after, not every second."""
    (tmp_path / "mailbox").mkdir()
    rid = new_request_id(time.time())
    store = DirectoryStore(tmp_path / "mailbox")
    await store.put(layout.head_key("requests", "gpu01", rid), b"sealed head")
    keys = make_keys(tmp_path, 443)
    forwarder = Forwarder(store, keys.forwarder, keys.policy, FAST)
    [parsed] = [p async for p in forwarder._list_heads()]
    _deny(monkeypatch, "head")
    caplog.set_level(logging.INFO, "wonders")
    for _ in range(3):  # three polls' worth of attempts
        await forwarder._start(parsed)
    said = [r for r in caplog.records if r.levelno >= logging.WARNING and rid in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert "permission denied on" in said[0].getMessage()
    assert "chgrp -R" in said[0].getMessage()
    assert forwarder._recheck[rid] >= time.time() + FAST.stale_after - 5
    await store.close()


def _other_group() -> grp.struct_group:
    """A group this user may give files to, other than its own primary group."""
    mine = os.getegid()
    gids = [g.gr_gid for g in grp.getgrall()] if os.geteuid() == 0 else os.getgroups()
    for gid in gids:
        if gid != mine:
            return grp.getgrgid(gid)
    pytest.skip("this user is in no second group")


def test_init_gives_a_directory_mailbox_to_its_group(tmp_path: Path) -> None:
    group = _other_group()
    root = tmp_path / "mailbox"
    result = CliRunner().invoke(main, [
        "init", "forwarder", "--name", "fw1", "--mailbox", root.as_uri(), "--dir",
        str(tmp_path / "fwd"), "--group", group.gr_name])
    assert result.exit_code == 0, result.output
    for path in (root, *(root / name for name in TOP_DIRS)):
        assert path.stat().st_gid == group.gr_gid, path
        assert _mode(path) == 0o2770, path
    assert f"group {group.gr_name}, mode 2770" in result.output
    assert f"usermod -aG {group.gr_name} USER" in result.output
    assert f"chgrp -R {group.gr_name} {root}" in result.output
    assert f"find {root} -type d -exec chmod g+s" in result.output


def test_init_refuses_a_world_writable_mailbox(tmp_path: Path) -> None:
    root = tmp_path / "mailbox"
    root.mkdir()
    root.chmod(0o1777)
    result = CliRunner().invoke(main, [
        "init", "client", "--name", "gpu01", "--mailbox", root.as_uri(), "--dir",
        str(tmp_path / "gpu")])
    assert result.exit_code == 2
    assert f"run chmod o-rwx {root}" in result.output
    assert not (tmp_path / "gpu").exists()  # refused before anything was written


async def test_deleting_the_last_object_keeps_the_top_level_directories(tmp_path: Path) -> None:
    """Review: removing empty parents climbed to the root, so the next job's write made
    requests/ anew, owned by that job's user."""
    from wonders.mailbox import DirectoryStore

    root = tmp_path / "mailbox"
    root.mkdir(mode=0o700)
    async with DirectoryStore(root) as store:
        await store.put("requests/gpu01/01M800000000000000000000AA/head", b"x")
        await store.delete("requests/gpu01/01M800000000000000000000AA/head")
    assert [p.name for p in root.iterdir()] == ["requests"]
    assert list((root / "requests").iterdir()) == []
