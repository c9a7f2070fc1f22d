"""``DirectoryStore``: the mailbox in a directory (``file:///path``), for clusters that share
a filesystem (NFS, GPFS, Lustre) and for the zero-setup local mode.

Each object is a file at ``root/<key>``. Writers publish atomically: the bytes go to a
temporary dot-file in the target directory, which is then renamed over the key (plain put)
or hard-linked to it (create-only: ``link`` fails if the name exists, atomically, also over
NFS), so a reader never sees a partial object and two create-only writers never both win.
Blocking filesystem calls run in the store's own pool of I/O threads (not asyncio's small
default pool, which other work shares): nothing here blocks the event loop, and a burst of
mailbox I/O cannot starve, say, a heartbeat write.

**The mailbox is shared, so nothing in it is trusted.** Any user or job that can write
the directory may plant anything in it, so the store:

- never follows a symbolic link below the root: every path is walked one component at a
  time from a descriptor of the root (``O_NOFOLLOW | O_DIRECTORY``, then ``openat``,
  ``unlinkat``, ``renameat``, ``linkat``, ``mkdirat``, ``rmdirat`` relative to the last
  directory descriptor), so a link swapped in at any moment is refused, never used. A link
  on the way is a :class:`~wonders.errors.UnsafeObject` naming it; ``list`` neither reports
  nor enters one. The root itself may be a link the operator made: it is resolved once,
  when the store is created;
- takes only regular files as objects: a FIFO, device or socket is refused without
  blocking (``O_NONBLOCK``, then ``fstat``), and never listed;
- checks an object's size (``fstat``) before reading it, and never reads more than the
  caller's limit;
- writes files only by creating new ones (``O_EXCL``) and renaming or linking them into
  place, so a planted hard link or file is replaced, never written through;
- sets modes itself, whatever the umask: directories ``2770`` (setgid, so what is made
  inside belongs to the mailbox's group), objects ``0640`` (the writer, and the group,
  read; nobody writes in place: objects are replaced whole), audit objects ``0600``;
- refuses (in :meth:`check`) a root that every user may write, and reports a permission
  failure as :class:`~wonders.errors.StorePermissionError` with the command that fixes it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import functools
import grp
import logging
import os
import secrets
import stat
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NoReturn, Self, TypeVar

from wonders.errors import (
    ObjectExists,
    ObjectNotFound,
    ObjectTooLarge,
    StoreError,
    StorePermissionError,
    UnsafeObject,
)
from wonders.mailbox._store import MAX_KEY, OddKeys, check_key, check_prefix

__all__ = ["DIR_MODE", "FILE_MODE", "PRIVATE_MODE", "TOP_DIRS", "DirectoryStore"]

log = logging.getLogger("wonders.store")

_T = TypeVar("_T")
_TMP = ".tmp-"
_KEY_CEILING = "\x7f"  # above every character a key may hold

#: Modes the store gives what it makes, whatever the umask (see the module docstring).
DIR_MODE = 0o2770
FILE_MODE = 0o640
PRIVATE_MODE = 0o600
#: Keys under these prefixes are for their writer alone (the plaintext audit log).
_PRIVATE_PREFIXES = ("audit/",)
#: The mailbox's top-level directories, which :meth:`DirectoryStore.check` looks at.
TOP_DIRS = ("requests", "responses", "claims", "status", "audit")

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC
_CHUNK = 1 << 20
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device",
          stat.S_IFBLK: "a device", stat.S_IFDIR: "a directory", stat.S_IFLNK: "a symbolic link"}


def _mode_for(key: str) -> int:
    return PRIVATE_MODE if key.startswith(_PRIVATE_PREFIXES) else FILE_MODE


class DirectoryStore:
    """A mailbox in a local or shared directory. The directory must exist (a write makes
    it, mode 0700, if it does not).

    ``root`` is resolved once, here: if it is (or passes through) a symbolic link, the
    store uses the directory it points to now. Below the root no link is ever followed.
    """

    def __init__(self, root: str | os.PathLike[str], *, threads: int = 32) -> None:
        self.root = Path(os.path.realpath(Path(root).absolute()))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wonders-dir")
        # what is not an object, reported once each (bounded), never again on each listing
        self._odd = OddKeys(log)

    async def _io(self, fn: Callable[..., _T], *args: object) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    # ------------------------------------------------------------------ messages

    def _where(self, rel: str) -> str:
        return str(self.root / rel) if rel else str(self.root)

    def _fix_permissions(self) -> str:
        try:
            gid = os.stat(self.root).st_gid
            group = grp.getgrgid(gid).gr_name
        except (OSError, KeyError):
            group = "GROUP"
        root = self.root
        return (f"as the owner of the files (or root) run: chgrp -R {group} {root} && "
                f"chmod -R g+rwX,o-rwx {root} && find {root} -type d -exec chmod g+s {{}} +  "
                "(every user of the mailbox must be in that group; see 'A shared directory' "
                "in docs/operating.md)")

    def _error(self, action: str, key: str, exc: OSError) -> StoreError:
        cause = exc.strerror or str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM):
            path = exc.filename if isinstance(exc.filename, str) else self._where(key)
            return StorePermissionError(
                f"{self.url}: cannot {action} {key}: permission denied on {path}; "
                f"{self._fix_permissions()}", path=path)
        hint = ""
        if exc.errno == errno.ENOSPC:
            hint = "; free some space"
        elif exc.errno == errno.EROFS:
            hint = f"; {self.root} is on a read-only filesystem"
        return StoreError(f"{self.url}: cannot {action} {key}: {cause}{hint}")

    def _link_error(self, rel: str) -> UnsafeObject:
        return UnsafeObject(
            f"{self.url}: {self._where(rel)} is a symbolic link; wonders never follows links "
            f"in the mailbox: remove it (rm {self._where(rel)})")

    def _special_error(self, rel: str, mode: int) -> UnsafeObject:
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        return UnsafeObject(
            f"{self.url}: {self._where(rel)} is {kind}, not a regular file; wonders keeps "
            f"objects only in regular files: remove it (rm {self._where(rel)})")

    # -------------------------------------------------------------------- walking

    @staticmethod
    def _located(exc: OSError, path: str) -> OSError:
        """``exc`` naming ``path`` (calls relative to a descriptor name only the last part)."""
        exc.filename = path
        return exc

    def _open_root(self, create: bool) -> int:
        try:
            return os.open(self.root, _DIR)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                raise self._link_error("") from None
            raise self._located(exc, str(self.root)) from None
        with contextlib.suppress(FileExistsError):
            os.makedirs(self.root, mode=0o700)
        return self._open_root(False)

    def _not_a_directory(self, fd: int, name: str, rel: str, exc: OSError) -> NoReturn:
        """Raise what an open of ``name`` as a directory meant: a link, or something else."""
        try:
            mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        except OSError:
            mode = 0
        if stat.S_ISLNK(mode) or exc.errno in (errno.ELOOP, errno.EMLINK):
            raise self._link_error(rel) from None
        raise NotADirectoryError(errno.ENOTDIR, "a file stands where a directory must be",
                                 self._where(rel)) from None

    def _subdir(self, fd: int, name: str, rel: str, create: bool) -> int:
        """A descriptor of directory ``name`` in directory ``fd``, never through a link;
        made with DIR_MODE if missing and ``create``."""
        made = False
        for _ in range(8):
            try:
                child = os.open(name, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
                    self._not_a_directory(fd, name, rel, exc)
                raise self._located(exc, self._where(rel)) from None
            else:
                if made:
                    with contextlib.suppress(OSError):  # someone else's by now: theirs to set
                        os.fchmod(child, DIR_MODE)
                return child
            try:
                os.mkdir(name, DIR_MODE, dir_fd=fd)
                made = True
            except FileExistsError:
                pass  # made by another writer meanwhile (or a file: the open says)
            except OSError as exc:
                raise self._located(exc, self._where(rel)) from None
        raise FileNotFoundError(errno.ENOENT, "removed while being made", self._where(rel))

    def _dir(self, parts: builtins.list[str], create: bool) -> int:
        """A descriptor of the directory ``root/parts…``, walked without following links."""
        fd = self._open_root(create)
        try:
            for i, name in enumerate(parts):
                child = self._subdir(fd, name, "/".join(parts[: i + 1]), create)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_object(self, key: str) -> int:
        """A read descriptor of the regular file at ``key``; raises FileNotFoundError,
        UnsafeObject, or ObjectNotFound for a directory."""
        parts = key.split("/")
        parent = self._dir(parts[:-1], create=False)
        try:
            try:
                mode = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False).st_mode
            except OSError as exc:
                raise self._located(exc, self._where(key)) from None
            if stat.S_ISDIR(mode):
                raise ObjectNotFound(f"{self.url}: no object {key}")
            if not stat.S_ISREG(mode):  # never opened: opening a device can do things
                raise self._special_error(key, mode)
            try:
                fd = os.open(parts[-1], _READ, dir_fd=parent)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK):  # swapped in since the stat
                    raise self._link_error(key) from None
                raise self._located(exc, self._where(key)) from None
        finally:
            os.close(parent)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # swapped in since the stat; O_NONBLOCK: did not block
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise ObjectNotFound(f"{self.url}: no object {key}")
            raise self._special_error(key, mode)
        return fd

    # ------------------------------------------------------------------ lifecycle

    async def check(self, prefix: str = "") -> None:
        await self._io(self._check)

    def _check(self) -> None:
        root = self.root
        try:
            st = os.stat(root)
        except FileNotFoundError:
            raise StoreError(f"{self.url}: no such directory; create it or fix the mailbox URL") \
                from None
        except OSError as exc:
            raise self._error("use", "the mailbox", self._located(exc, str(root))) from None
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"{self.url}: not a directory; fix the mailbox URL")
        if st.st_mode & stat.S_IWOTH:
            sticky = (" (the sticky bit does not help: they could still plant links and "
                      "files under names wonders will use)") if st.st_mode & stat.S_ISVTX else ""
            raise StoreError(
                f"{self.url}: the mailbox directory is writable by every user (mode "
                f"{stat.S_IMODE(st.st_mode):04o}){sticky}; anyone could plant links and "
                f"files in it: run chmod o-rwx {root}")
        if not os.access(root, os.W_OK | os.X_OK):
            raise StorePermissionError(
                f"{self.url}: the directory is not writable by this user; "
                f"{self._fix_permissions()}", path=str(root))
        fd = self._open_root(False)
        try:
            for name in TOP_DIRS:
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise self._link_error(name)
        finally:
            os.close(fd)

    async def close(self) -> None:
        self._pool.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---------------------------------------------------------------------- write

    async def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        check_key(key)
        try:
            created = await self._io(self._put, key, data, create_only)
        except OSError as exc:
            raise self._error("write", key, exc) from None
        if not created:
            raise ObjectExists(f"{self.url}: {key} already exists")

    def _put(self, key: str, data: bytes, create_only: bool) -> bool:
        """Publish ``data`` at ``key``; False if create-only found the name taken."""
        # Deletes remove parents that became empty. One can land while this put is making
        # them (after it made responses/gpu01/, before it made gpu01/<id>/ inside) or
        # before its temporary file exists: then make them again. Once the temporary file
        # is in place its directory is not empty, so nothing can remove it.
        parts = key.split("/")
        name, mode = parts[-1], _mode_for(key)
        for attempt in range(8):
            try:
                parent = self._dir(parts[:-1], create=True)
            except FileNotFoundError:
                if attempt == 7:
                    raise
                continue
            try:
                tmp = f"{_TMP}{name}-{secrets.token_hex(6)}"
                try:
                    fd = os.open(tmp, _CREATE, PRIVATE_MODE, dir_fd=parent)
                except FileNotFoundError:  # the directory was removed after we opened it
                    if attempt == 7:
                        raise
                    continue
                try:
                    os.fchmod(fd, mode)  # the umask does not decide
                    with open(fd, "wb") as f:
                        f.write(data)
                    if create_only:
                        try:
                            os.link(tmp, name, src_dir_fd=parent, dst_dir_fd=parent,
                                    follow_symlinks=False)
                        except FileExistsError:
                            return False
                    else:
                        os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
                finally:
                    with contextlib.suppress(FileNotFoundError):  # gone after a rename
                        os.unlink(tmp, dir_fd=parent)
                return True
            except OSError as exc:
                if exc.filename is None or not os.path.isabs(str(exc.filename)):
                    self._located(exc, self._where(key))
                raise
            finally:
                os.close(parent)
        raise AssertionError("unreachable")

    async def delete(self, key: str) -> None:
        check_key(key)
        try:
            await self._io(self._delete, key)
        except OSError as exc:
            raise self._error("delete", key, exc) from None

    def _delete(self, key: str) -> None:
        """Remove the name ``key`` (never what a link points to), then the directories
        that became empty, up to the top-level ones (``requests/``, …), which stay as the
        operator made them: a job's next write must not make them anew as its own."""
        parts = key.split("/")
        try:
            fds = [self._open_root(False)]
        except FileNotFoundError:
            return
        try:
            for i, name in enumerate(parts[:-1]):
                try:
                    fds.append(self._subdir(fds[-1], name, "/".join(parts[: i + 1]), False))
                except (FileNotFoundError, NotADirectoryError):
                    return  # nothing there: deleting is idempotent
            try:
                os.unlink(parts[-1], dir_fd=fds[-1])
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise self._located(exc, self._where(key)) from None
            for i in range(len(parts) - 2, 0, -1):
                try:
                    os.rmdir(parts[i], dir_fd=fds[i])
                except OSError:  # not empty (or already gone): stop climbing
                    return
        finally:
            for fd in fds:
                os.close(fd)

    # ----------------------------------------------------------------------- read

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        check_key(key)
        try:
            return await self._io(self._get, key, max_bytes)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"{self.url}: no object {key}") from None
        except OSError as exc:
            raise self._error("read", key, exc) from None

    def _too_large(self, key: str, size: int, limit: int) -> ObjectTooLarge:
        return ObjectTooLarge(
            f"{self.url}: {key} is {size} bytes, over the {limit}-byte limit for it; "
            "refused unread", key=key, size=size, limit=limit)

    def _get(self, key: str, max_bytes: int | None) -> bytes:
        fd = self._open_object(key)
        try:
            size = os.fstat(fd).st_size
            if max_bytes is not None and size > max_bytes:
                raise self._too_large(key, size, max_bytes)
            # Never more than the limit + 1, even if the file grew since the fstat.
            limit = None if max_bytes is None else max_bytes + 1
            pieces: builtins.list[bytes] = []
            total = 0
            while limit is None or total < limit:
                piece = os.read(fd, _CHUNK if limit is None else min(_CHUNK, limit - total))
                if not piece:
                    break
                pieces.append(piece)
                total += len(piece)
            data = b"".join(pieces)
            if max_bytes is not None and len(data) > max_bytes:
                raise self._too_large(key, len(data), max_bytes)
            return data
        except OSError as exc:
            raise self._located(exc, self._where(key)) from None
        finally:
            os.close(fd)

    async def stream(self, key: str, *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        check_key(key)
        try:
            fd = await self._io(self._open_object, key)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"{self.url}: no object {key}") from None
        except OSError as exc:
            raise self._error("read", key, exc) from None
        try:
            while chunk := await self._io(os.read, fd, chunk_size):
                yield chunk
        except OSError as exc:
            raise self._error("read", key, exc) from None
        finally:
            os.close(fd)

    async def exists(self, key: str) -> bool:
        check_key(key)
        try:
            return await self._io(self._exists, key)
        except OSError as exc:
            raise self._error("read", key, exc) from None

    def _exists(self, key: str) -> bool:
        parts = key.split("/")
        try:
            parent = self._dir(parts[:-1], create=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            return stat.S_ISREG(os.stat(parts[-1], dir_fd=parent, follow_symlinks=False).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False
        finally:
            os.close(parent)

    async def list(self, prefix: str, *, start_after: str | None = None) -> AsyncIterator[str]:
        check_prefix(prefix)
        try:
            keys = await self._io(self._list, prefix, start_after)
        except OSError as exc:
            raise self._error("list", prefix or "/", exc) from None
        for key in keys:
            yield key

    def _skip(self, rel: str, why: str) -> None:
        self._odd.report(rel, f"{self.url}: ignored: {why}")

    def _list(self, prefix: str, start_after: str | None) -> builtins.list[str]:
        top = prefix.rpartition("/")[0]
        try:
            fd = self._dir(top.split("/") if top else [], create=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        found: builtins.list[str] = []
        try:
            self._visit(fd, top, prefix, start_after, found)
        finally:
            os.close(fd)
        found.sort()
        return found

    def _visit(self, fd: int, rel: str, prefix: str, start_after: str | None,
               found: builtins.list[str]) -> None:
        """Collect the keys in directory ``fd`` (at ``rel``) and below it."""
        try:
            with os.scandir(fd) as it:
                entries = builtins.list(it)
        except OSError as exc:
            raise self._located(exc, self._where(rel)) from None
        for entry in entries:
            if entry.name.startswith("."):
                continue  # temporary files and anything that is not a key
            key = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                is_file = entry.is_file(follow_symlinks=False)
            except OSError:
                continue  # gone since the scan
            if is_dir:
                # Descend only where keys can both match the prefix and come after
                # start_after (every key below is < key + "/" + ceiling).
                inside = key + "/"
                if not (inside.startswith(prefix) or prefix.startswith(inside)):
                    continue
                if len(inside) >= MAX_KEY:  # no key is that deep: a planted maze, not entered
                    self._skip(key, "nested deeper than any object key: remove it")
                    continue
                if start_after is not None and inside + _KEY_CEILING <= start_after:
                    continue
                try:
                    child = os.open(entry.name, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    # One client's unreadable or swapped directory does not hide the others.
                    self._skip(key, "a symbolic link (wonders never follows links in the "
                               "mailbox): remove it" if exc.errno in (errno.ELOOP, errno.EMLINK)
                               else f"cannot open it: {exc.strerror}")
                    continue
                try:
                    self._visit(child, key, prefix, start_after, found)
                except OSError as exc:
                    self._skip(key, f"cannot list it: {exc.strerror}")
                finally:
                    os.close(child)
            elif not (key.startswith(prefix) and (start_after is None or key > start_after)):
                continue
            elif not is_file:
                kind = "a symbolic link" if entry.is_symlink() else "not a regular file"
                self._skip(key, f"{kind}; wonders keeps objects only in regular files: "
                                "remove it")
            else:
                try:
                    found.append(check_key(key))
                except ValueError:
                    self._skip(key, "not a valid object key (letters, digits, '.', '_', "
                                    "'-' only): remove it")
