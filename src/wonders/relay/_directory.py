"""``DirectoryStore``: the mailbox in a directory (``file:///path``), for clusters that share
a filesystem (NFS, GPFS, Lustre) and for the zero-setup local mode.

Each object is a file at ``root/<key>``. Writers publish atomically: the bytes go to a
temporary dot-file in the target directory, which is then renamed over the key (plain put)
or hard-linked to it (create-only: ``link`` fails if the name exists, atomically, also over
NFS), so a reader never sees a partial object and two create-only writers never both win.
Blocking filesystem calls run in the store's own pool of I/O threads (not asyncio's small
default pool, which other work shares): nothing here blocks the event loop, and a burst of
mailbox I/O cannot starve, say, a heartbeat write.
"""

from __future__ import annotations

import asyncio
import builtins
import errno
import functools
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Self, TypeVar

from wonders.errors import ObjectExists, ObjectNotFound, StoreError
from wonders.relay._store import OddKeys, check_key, check_prefix, is_key

__all__ = ["DirectoryStore"]

_T = TypeVar("_T")
_TMP = ".tmp-"
_KEY_CEILING = "\x7f"  # above every character a key may hold

log = logging.getLogger("wonders.store")


class DirectoryStore:
    """A mailbox in a local or shared directory. The directory must exist."""

    def __init__(self, root: str | os.PathLike[str], *, threads: int = 32) -> None:
        self.root = Path(root).absolute()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wonders-dir")
        self._odd = OddKeys(log)

    async def _io(self, fn: Callable[..., _T], *args: object) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    def _error(self, action: str, key: str, exc: OSError) -> StoreError:
        cause = exc.strerror or str(exc)
        hint = ""
        if exc.errno == errno.ENOSPC:
            hint = "; free some space"
        elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = f"; check the permissions of {self.root}"
        return StoreError(f"{self.url}: cannot {action} {key}: {cause}{hint}")

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    # ------------------------------------------------------------------ lifecycle

    async def check(self, prefix: str = "") -> None:
        def probe() -> None:
            if not self.root.is_dir():
                raise StoreError(
                    f"{self.url}: no such directory; create it or fix the mailbox URL"
                )
            if not os.access(self.root, os.W_OK | os.X_OK):
                raise StoreError(f"{self.url}: directory is not writable by this user")

        await self._io(probe)

    async def close(self) -> None:
        self._pool.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---------------------------------------------------------------------- write

    async def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        path = self._path(key)
        try:
            created = await self._io(self._put, path, data, create_only)
        except OSError as exc:
            raise self._error("write", key, exc) from None
        if not created:
            raise ObjectExists(f"{self.url}: {key} already exists")

    def _put(self, path: Path, data: bytes, create_only: bool) -> bool:
        """Publish ``data`` at ``path``; False if create-only found the name taken."""
        # Deletes remove parents that became empty. One can land while this put is making
        # them (after it made responses/gpu01/, before it made gpu01/<id>/ inside) or
        # before its temporary file exists: then make them again. Once the temporary file
        # is in place its directory is not empty, so nothing can remove it.
        for attempt in range(8):
            tmp = path.parent / f"{_TMP}{path.name}-{secrets.token_hex(6)}"
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:  # a file stands where a directory must be
                raise NotADirectoryError(errno.ENOTDIR, "a parent is a file", path) from None
            except FileNotFoundError:
                if attempt == 7:
                    raise
                continue
            try:
                with open(fd, "wb") as f:
                    f.write(data)
                if create_only:
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        return False
                else:
                    os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)  # gone after a replace; a link leaves it
            return True
        raise AssertionError("unreachable")

    async def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            await self._io(self._delete, path)
        except OSError as exc:
            raise self._error("delete", key, exc) from None

    def _delete(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:  # not empty (or already gone): stop climbing
                return
            parent = parent.parent

    # ----------------------------------------------------------------------- read

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await self._io(path.read_bytes)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"{self.url}: no object {key}") from None
        except OSError as exc:
            raise self._error("read", key, exc) from None

    async def stream(self, key: str, *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            f: IO[bytes] = await self._io(open, path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"{self.url}: no object {key}") from None
        except OSError as exc:
            raise self._error("read", key, exc) from None
        try:
            while chunk := await self._io(f.read, chunk_size):
                yield chunk
        except OSError as exc:
            raise self._error("read", key, exc) from None
        finally:
            f.close()

    async def exists(self, key: str) -> bool:
        return await self._io(self._path(key).is_file)

    async def list(self, prefix: str, *, start_after: str | None = None) -> AsyncIterator[str]:
        check_prefix(prefix)
        try:
            keys = await self._io(self._list, prefix, start_after)
        except OSError as exc:
            raise self._error("list", prefix or "/", exc) from None
        for key in keys:
            if is_key(key):
                yield key
            else:  # someone who may write here made it: skip it, never raise
                self._odd.report(key, f"{self.url}: not a valid object key; skipped")

    def _list(self, prefix: str, start_after: str | None) -> builtins.list[str]:
        top = prefix.rpartition("/")[0]
        found: builtins.list[str] = []
        pending = [top]
        while pending:
            rel = pending.pop()
            try:
                entries = builtins.list(os.scandir(self.root / rel if rel else self.root))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue  # temporary files and anything that is not a key
                key = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    # Descend only where keys can both match the prefix and come after
                    # start_after (every key below is < key + "/" + ceiling).
                    inside = key + "/"
                    if not (inside.startswith(prefix) or prefix.startswith(inside)):
                        continue
                    if start_after is not None and inside + _KEY_CEILING <= start_after:
                        continue
                    pending.append(key)
                elif key.startswith(prefix) and (start_after is None or key > start_after):
                    found.append(key)
        found.sort()
        return found
