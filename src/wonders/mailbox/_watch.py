"""Wakeups from the filesystem: a poller of a directory mailbox lists again as soon as an
object appears below its prefix, instead of at its next poll interval (and, on MinIO
with ``notifications = "minio"``, from its bucket notifications: :mod:`._notify`).

inotify (through ``asyncinotify``) reports the writes made on this host. On a shared
filesystem (NFS, GPFS, Lustre) writes from *other* hosts raise no event, so the pollers
keep polling at their intervals: events only ever make a poll sooner, never replace it.
Watches never follow a symbolic link, and their number is capped (past the cap, the
deeper directories are left to polling).

:func:`watch` is the one entry point: it returns a task that calls ``wake()`` whenever an
object may have appeared, or None where the store gives no events (S3, or no inotify).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from wonders.mailbox._directory import DirectoryStore
from wonders.mailbox._store import Store

if TYPE_CHECKING:
    from asyncinotify import Inotify

__all__ = ["watch"]

log = logging.getLogger("wonders.watch")

#: Watches one watcher may hold: request and response directories come and go with their
#: requests, so a few thousand cover any backlog worth waking for.
MAX_WATCHES = 4096


def watch(store: Store, prefix: str, wake: Callable[[], None]) -> asyncio.Task[None] | None:
    """Call ``wake()`` whenever an object may have appeared below ``prefix`` (a
    directory, ending in ``/``), until the returned task is cancelled. None where the
    store gives no events (S3 without notifications, or no inotify): then polling alone
    finds new objects."""
    s3 = sys.modules.get("wonders.mailbox._s3")  # an S3Store exists only once it is loaded
    if s3 is not None and isinstance(store, s3.S3Store):
        if not store.notifications:
            return None
        from wonders.mailbox import listen_minio

        return asyncio.create_task(listen_minio(store, prefix, wake),
                                   name=f"wonders-notify-{prefix}")
    if not isinstance(store, DirectoryStore):
        return None
    try:
        from asyncinotify import Inotify  # Linux only
    except (ImportError, OSError):
        return None
    try:
        inotify = Inotify()
    except OSError as exc:  # ENOSYS, or the per-user limit of inotify instances reached
        log.info("no filesystem events for %s (%s); polling only", store.url, exc)
        return None
    watcher = _Watcher(inotify, store.root, prefix, wake)
    return asyncio.create_task(watcher.run(), name=f"wonders-watch-{prefix}")


class _Watcher:
    def __init__(self, inotify: Inotify, root: Path, prefix: str,
                 wake: Callable[[], None]) -> None:
        from asyncinotify import Mask

        self._inotify = inotify
        self._mask = Mask.CREATE | Mask.MOVED_TO | Mask.ONLYDIR | Mask.DONT_FOLLOW
        self._isdir = Mask.ISDIR
        self._overflow = Mask.Q_OVERFLOW
        self._root = root
        self._target = root / prefix.strip("/") if prefix.strip("/") else root
        self._wake = wake
        self._capped = False

    async def run(self) -> None:
        try:
            await self._run()
        except Exception as exc:  # never fatal: polling alone still finds everything
            log.warning("filesystem events for %s stopped (%s); polling only", self._target,
                        exc)

    async def _run(self) -> None:
        with self._inotify:
            self._attach()
            async for event in self._inotify:
                if event.mask & self._overflow:
                    self._wake()  # events were lost: a poll finds what they were
                    continue
                path, name = event.path, event.name
                if path is None or name is None or str(name).startswith("."):
                    continue  # a temporary file, not an object (yet)
                if path == self._target or self._target in path.parents:
                    if event.mask & self._isdir:
                        self._add_tree(path)
                    self._wake()
                elif path in self._target.parents and event.mask & self._isdir:
                    self._attach()  # a directory on the way to the prefix appeared

    def _add(self, path: Path) -> bool:
        if len(self._inotify.watches) >= MAX_WATCHES:
            if not self._capped:
                log.info("%d directories watched; deeper ones are left to polling",
                         MAX_WATCHES)
                self._capped = True
            return False
        try:
            self._inotify.add_watch(path, self._mask)
        except OSError:  # gone already, not a directory, or a link: polling covers it
            return False
        return True

    def _attach(self) -> None:
        """Watch each existing directory from the root down to the prefix, and the tree
        below the prefix once it exists."""
        for ancestor in [*reversed(self._target.parents), self._target]:
            if ancestor != self._root and self._root not in ancestor.parents:
                continue  # above the mailbox root
            if ancestor == self._target:
                self._add_tree(ancestor)
            elif not self._add(ancestor):
                break
        self._wake()  # what appeared before the watches were in place: poll once

    def _add_tree(self, top: Path) -> None:
        pending = [top]
        while pending:
            path = pending.pop()
            if not self._add(path):
                continue
            with contextlib.suppress(OSError), os.scandir(path) as entries:
                pending.extend(Path(entry.path) for entry in entries
                               if not entry.name.startswith(".")
                               and entry.is_dir(follow_symlinks=False))
