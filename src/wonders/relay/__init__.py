"""The relay: mailbox stores (S3 and directory), their URLs and the object layout.

I/O lives here, in thin adapters (:class:`S3Store` over aiobotocore, :class:`DirectoryStore`
over the filesystem); everything above them speaks the :class:`Store` protocol.
"""

from wonders.relay import layout
from wonders.relay._directory import DirectoryStore
from wonders.relay._mailbox import open_store
from wonders.relay._s3 import S3Store
from wonders.relay._store import Store, check_key, check_prefix

__all__ = [
    "DirectoryStore",
    "S3Store",
    "Store",
    "check_key",
    "check_prefix",
    "layout",
    "open_store",
]
