"""Keys, sealed envelopes and body streams: the cryptography of wonders.

Pure code: nothing here touches the network or a store. The only I/O is reading and
writing key files (:func:`load_private_key`, :func:`write_key_files`, …).
"""

from wonders.crypto._envelope import (
    MAGIC,
    MAX_HEAD_OBJECT,
    MAX_INLINE,
    MAX_SEGMENT,
    MAX_SEGMENT_OBJECT,
    PROTOCOL_VERSION,
    BodyOpener,
    BodySealer,
    Headers,
    OpenedRequest,
    OpenedResponse,
    RequestHead,
    RequestRef,
    ResponseHead,
    Sealed,
    Trailer,
    open_request,
    open_response,
    seal_request,
    seal_response,
)
from wonders.crypto._ids import new_request_id, request_id_time
from wonders.crypto._keys import (
    PrivateKey,
    PublicBundle,
    check_name,
    key_id,
    load_private_key,
    load_public_bundle,
    parse_private_key,
    parse_public_bundle,
    write_key_files,
)

__all__ = [
    "MAGIC",
    "MAX_HEAD_OBJECT",
    "MAX_INLINE",
    "MAX_SEGMENT",
    "MAX_SEGMENT_OBJECT",
    "PROTOCOL_VERSION",
    "BodyOpener",
    "BodySealer",
    "Headers",
    "OpenedRequest",
    "OpenedResponse",
    "PrivateKey",
    "PublicBundle",
    "RequestHead",
    "RequestRef",
    "ResponseHead",
    "Sealed",
    "Trailer",
    "check_name",
    "key_id",
    "load_private_key",
    "load_public_bundle",
    "new_request_id",
    "open_request",
    "open_response",
    "parse_private_key",
    "parse_public_bundle",
    "request_id_time",
    "seal_request",
    "seal_response",
    "write_key_files",
]
