"""The relay: mailbox stores, object layout, egress policy, the forwarder, and the GPU
side of the protocol (:class:`RelayClient`).

I/O lives in thin adapters (:class:`S3Store` over aiobotocore, :class:`DirectoryStore` over
the filesystem, the forwarder's aiohttp upstream); everything above them speaks the
:class:`Store` protocol.
"""

from wonders.relay import layout
from wonders.relay._directory import DirectoryStore
from wonders.relay._mailbox import open_store
from wonders.relay._s3 import S3Store
from wonders.relay._store import Store, check_key, check_prefix, is_key
from wonders.relay.client import RelayClient, RelayResponse
from wonders.relay.forwarder import Forwarder, ForwarderSettings
from wonders.relay.policy import Policy, load_policy

__all__ = [
    "DirectoryStore",
    "Forwarder",
    "ForwarderSettings",
    "Policy",
    "RelayClient",
    "RelayResponse",
    "S3Store",
    "Store",
    "check_key",
    "check_prefix",
    "is_key",
    "layout",
    "load_policy",
    "open_store",
]
