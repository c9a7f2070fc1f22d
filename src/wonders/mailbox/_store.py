"""The mailbox ``Store`` protocol and the key rules every backend enforces.

A store holds immutable objects under ``/``-separated keys. Both backends (S3 and a
directory) give the same semantics, checked by one contract suite:

- ``put`` publishes atomically: a reader sees the whole object or nothing;
  ``create_only=True`` fails with :class:`~wonders.errors.ObjectExists` if the key is taken
  (an S3 conditional write, or a hard link in a directory);
- ``get`` raises :class:`~wonders.errors.ObjectNotFound` for a missing key, and
  :class:`~wonders.errors.ObjectTooLarge` for an object over ``max_bytes``, before reading
  it (never more than ``max_bytes + 1`` bytes are read, whatever the object's stated size);
  ``stream`` yields an object in pieces, for large ones;
- ``list`` yields keys that start with a prefix, in ascending (byte) order, after
  ``start_after`` if given. An object whose name is not a valid key (anyone who may write
  to the mailbox can make one: spaces, ``..``, unicode, over :data:`MAX_KEY`) is skipped,
  left in place and logged once (:class:`OddKeys`), never raised: no listed name can stop
  a reader, and every key a listing yields can be read and deleted;
- ``delete`` is idempotent.

No I/O here.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator
from typing import Protocol, Self, runtime_checkable

__all__ = ["MAX_KEY", "OddKeys", "Store", "check_key", "check_prefix", "is_key"]

#: One segment of a key: plain characters, not starting with a dot (the directory store
#: keeps its temporary files under dot names, so no key can collide with one).
_SEGMENT = r"[A-Za-z0-9_\-][A-Za-z0-9._\-]*"
_KEY = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")
_PREFIX = re.compile(rf"(?:{_SEGMENT}/)*[A-Za-z0-9._\-]*")
MAX_KEY = 512


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid object key, else raise ValueError."""
    if len(key) > MAX_KEY or not _KEY.fullmatch(key):
        raise ValueError(f"invalid object key {key!r}")
    return key


def is_key(key: str) -> bool:
    """Whether ``key`` is a valid object key (:func:`check_key` without the exception)."""
    return len(key) <= MAX_KEY and _KEY.fullmatch(key) is not None


class OddKeys:
    """Names already reported as odd (not a valid key, or not this protocol's), so that
    each is logged once however often it is listed. The memory is bounded: past ``limit``
    names, one last line says that further ones go unreported."""

    def __init__(self, logger: logging.Logger, limit: int = 1024) -> None:
        self._log = logger
        self._limit = limit
        self._seen: set[str] = set()
        self._full = False
        self._lock = threading.Lock()  # the directory store reports from its I/O threads

    def report(self, key: str, why: str) -> None:
        with self._lock:
            if key in self._seen or self._full:
                return
            if len(self._seen) >= self._limit:
                self._full = True
                self._log.warning("%d odd object names reported; not reporting more",
                                  self._limit)
                return
            self._seen.add(key)
        shown = key if len(key) <= 200 else key[:200] + "..."
        self._log.warning("odd object %r left in place: %s", shown, why)


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if keys can start with it ('' lists everything)."""
    if len(prefix) > MAX_KEY or not _PREFIX.fullmatch(prefix) or prefix.startswith("."):
        raise ValueError(f"invalid key prefix {prefix!r}")
    return prefix


@runtime_checkable
class Store(Protocol):
    """An asynchronous object store holding the mailbox."""

    @property
    def url(self) -> str:
        """Where the store is, for messages (``s3://bucket/prefix`` or ``file:///dir``)."""
        ...

    async def check(self, prefix: str = "") -> None:
        """Raise StoreError (one line: where, and why) unless the store is usable."""
        ...

    async def put(self, key: str, data: bytes, *, create_only: bool = False) -> None: ...

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes: ...

    def stream(self, key: str, *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]: ...

    async def exists(self, key: str) -> bool: ...

    def list(self, prefix: str, *, start_after: str | None = None) -> AsyncIterator[str]: ...

    async def delete(self, key: str) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...
