"""Time-ordered request ids (ULID layout): 48-bit milliseconds ‖ 80 random bits, Crockford
base32, 26 characters. Lexicographic order is issue order, so a mailbox listing is in time
order and ``start_after`` resumes a scan. No I/O here beyond the random source.
"""

from __future__ import annotations

import os
import re

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_PATTERN = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")


def new_request_id(now: float, random: bytes | None = None) -> str:
    """A new id for time ``now`` (Unix seconds); ``random`` (10 bytes) is for tests."""
    ms = int(now * 1000)
    if not 0 <= ms < 1 << 48:
        raise ValueError(f"time {now!r} is outside the id range")
    rand = os.urandom(10) if random is None else random
    if len(rand) != 10:
        raise ValueError("random part must be 10 bytes")
    value = (ms << 80) | int.from_bytes(rand, "big")
    return "".join(_ALPHABET[(value >> shift) & 31] for shift in range(125, -1, -5))


def request_id_time(request_id: str) -> float:
    """The issue time (Unix seconds) encoded in an id."""
    if not ID_PATTERN.fullmatch(request_id):
        raise ValueError(f"not a request id: {request_id!r}")
    value = 0
    for ch in request_id:
        value = (value << 5) | _ALPHABET.index(ch)
    return (value >> 80) / 1000
