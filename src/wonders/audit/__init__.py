"""The audit log: one record per attempt, in signed, hash-chained batches in the bucket.
The record and its redaction, the chain (encode, parse, verify), intents, and the writer
the forwarder feeds (:class:`AuditWriter`); the local chain tip is in :mod:`.tip`."""

from typing import TYPE_CHECKING

from wonders.exports import lazy

if TYPE_CHECKING:
    from wonders.audit._log import (
        FORWARDER_DIED,
        REDACTED,
        AuditError,
        AuditTruncated,
        AuditWriter,
        Batch,
        ChainHead,
        Intent,
        Problem,
        batch_keys,
        default_spool,
        encode_batch,
        heartbeats_of,
        incomplete_intents,
        is_credential,
        iso_time,
        parse_batch,
        parse_head,
        parse_intent,
        parse_time,
        read_batches,
        redact_headers,
        redact_target,
        redact_url,
        verify_log,
    )

__all__ = [
    "FORWARDER_DIED",
    "REDACTED",
    "AuditError",
    "AuditTruncated",
    "AuditWriter",
    "Batch",
    "ChainHead",
    "Intent",
    "Problem",
    "batch_keys",
    "default_spool",
    "encode_batch",
    "heartbeats_of",
    "incomplete_intents",
    "is_credential",
    "iso_time",
    "parse_batch",
    "parse_head",
    "parse_intent",
    "parse_time",
    "read_batches",
    "redact_headers",
    "redact_target",
    "redact_url",
    "verify_log",
]

__getattr__, __dir__ = lazy(__name__, dict.fromkeys(__all__, "._log"))
