"""The mailbox: where requests and responses wait. The :class:`Store` protocol, its two
adapters (:class:`S3Store` over aiobotocore, :class:`DirectoryStore` over a shared
filesystem), :func:`open_store` for a mailbox URL, the key layout (:mod:`.layout`), and
how both sides wait for it: adaptive polling (:class:`Backoff`, :func:`wait_event`) woken
by filesystem events (:func:`watch`) or MinIO notifications.

Everything above the adapters speaks :class:`Store`. Names load lazily: importing
:mod:`wonders.mailbox.layout` does not import aiobotocore.
"""

from typing import TYPE_CHECKING

from wonders.exports import lazy

if TYPE_CHECKING:
    from wonders.mailbox import layout
    from wonders.mailbox._directory import (
        DIR_MODE,
        FILE_MODE,
        PRIVATE_MODE,
        TOP_DIRS,
        DirectoryStore,
    )
    from wonders.mailbox._notify import listen_minio
    from wonders.mailbox._open import open_store
    from wonders.mailbox._polling import Backoff, wait_event
    from wonders.mailbox._s3 import S3Store
    from wonders.mailbox._store import MAX_KEY, OddKeys, Store, check_key, check_prefix, is_key
    from wonders.mailbox._watch import watch

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "MAX_KEY",
    "PRIVATE_MODE",
    "TOP_DIRS",
    "Backoff",
    "DirectoryStore",
    "OddKeys",
    "S3Store",
    "Store",
    "check_key",
    "check_prefix",
    "is_key",
    "layout",
    "listen_minio",
    "open_store",
    "wait_event",
    "watch",
]

__getattr__, __dir__ = lazy(__name__, {
    "layout": ".layout",
    **dict.fromkeys(["DIR_MODE", "FILE_MODE", "PRIVATE_MODE", "TOP_DIRS", "DirectoryStore"],
                    "._directory"),
    "listen_minio": "._notify",
    "open_store": "._open",
    "Backoff": "._polling",
    "wait_event": "._polling",
    "S3Store": "._s3",
    **dict.fromkeys(["MAX_KEY", "OddKeys", "Store", "check_key", "check_prefix", "is_key"],
                    "._store"),
    "watch": "._watch",
})
