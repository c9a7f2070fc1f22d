"""The one exception tree of wonders.

Every error that wonders raises on purpose derives from :class:`WondersError`, and every
message says what went wrong and, where there is one, what to do about it. Foreign
exceptions (botocore, aiohttp, OSError) are converted at the adapter that meets them and
never leak past it.

::

    WondersError
    ├── KeyFileError          a key or public bundle file is missing, unsafe or malformed
    ├── EnvelopeError         a sealed object failed to open; ``reason`` says why
    ├── StoreError            the mailbox (S3 or directory) failed
    │   ├── ObjectNotFound    no object at that key
    │   ├── ObjectExists      a create-only put found the key taken
    │   ├── UnsafeObject      refused unread: a symbolic link, a special file, …
    │   │   └── ObjectTooLarge    … or an object over the caller's size limit
    │   └── StorePermissionError  the mailbox's permissions forbid it (says what to run)
    ├── RelayError            a relayed request got no usable answer; ``status`` for the app
    │   ├── NoForwarder       no forwarder heartbeat is fresh (503)
    │   └── RelayTimeout      no answer, or the answer stalled, within the deadline (504)
    └── ConfigError           bad configuration or command-line input
        └── PolicyError       the egress policy file is invalid (names the key path)

``exit_code`` is the status the ``wonders`` command exits with: 1 for a failure, 2 for
input that must be fixed before anything can run (configuration, policy).

No I/O here.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "REASONS",
    "ConfigError",
    "EnvelopeError",
    "KeyFileError",
    "NoForwarder",
    "ObjectExists",
    "ObjectNotFound",
    "ObjectTooLarge",
    "PolicyError",
    "RelayError",
    "RelayTimeout",
    "StoreError",
    "StorePermissionError",
    "UnsafeObject",
    "WondersError",
]


class WondersError(Exception):
    """Base of every error wonders raises on purpose."""

    exit_code: int = 1


class KeyFileError(WondersError):
    """A private key or public bundle file cannot be used (missing, unsafe, malformed)."""


#: Reason codes of :class:`EnvelopeError`, with what each one means. They are part of the
#: protocol (docs/PROTOCOL.md) and of the test vectors: do not rename them.
REASONS: Final[dict[str, str]] = {
    "malformed": "the bytes are not a well-formed wonders object",
    "unsupported": "the object uses a protocol version this peer does not speak",
    "wrong-recipient": "the object was sealed to another key, or its key material was altered",
    "tampered": "authentication failed: the object was altered, or signed by another key",
    "unknown-sender": "the sender's key id is not registered (or not the pinned forwarder)",
    "wrong-sender": "signed by a known key, but not by the one this mailbox belongs to",
    "expired": "issued too long ago: its expiry time has passed",
    "not-yet-valid": "issued in the future, beyond the allowed clock skew",
    "not-bound": "bound to another request (a response), or stored under another id",
    "truncated": "the body stream ended before its final segment",
    "incomplete": "the sender ended the body stream with an error (for example a size limit)",
}


class EnvelopeError(WondersError):
    """A sealed head or body segment failed to open.

    Nothing from an object that raised this may be used: opening functions verify before
    they return anything.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown envelope error reason {reason!r}")
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class StoreError(WondersError):
    """The mailbox store failed; the message names the store and the cause."""


class ObjectNotFound(StoreError):
    """No object is stored at the key."""


class ObjectExists(StoreError):
    """A create-only put found an object already stored at the key."""


class UnsafeObject(StoreError):
    """What stands at a key (or on the way to it) is refused without being used: a symbolic
    link, a special file (FIFO, device, socket), or an object over the caller's size limit.
    Callers treat it like a malformed object: logged, refused, never retried."""


class ObjectTooLarge(UnsafeObject):
    """An object is larger than the reader's limit; it was refused before being read.

    Attributes:
        key: the object key.
        size: its size in bytes, as the store reported it (or as far as it was read).
        limit: the largest size the reader accepts.
    """

    def __init__(self, message: str, *, key: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.key, self.size, self.limit = key, size, limit


class StorePermissionError(StoreError):
    """The mailbox's permissions forbid an operation; the message names the path and what
    to run. Retrying does not help until someone runs it, so callers report it once."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class RelayError(WondersError):
    """A relayed request got no usable answer.

    Attributes:
        status: the HTTP status an application should see (502, 503, 504).
        code: the ``X-Wonders-Error`` value naming the case.
    """

    status = 502
    code = "relay-error"


class NoForwarder(RelayError):
    """No forwarder has written a fresh heartbeat: nothing would answer."""

    status = 503
    code = "no-forwarder"


class RelayTimeout(RelayError):
    """The forwarder did not answer, or its answer stalled, before the deadline."""

    status = 504
    code = "timeout"


class ConfigError(WondersError):
    """Invalid configuration or command-line input."""

    exit_code = 2


class PolicyError(ConfigError):
    """The egress policy cannot be loaded; the message names the file and the key path."""
