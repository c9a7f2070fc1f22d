"""Parties and helpers for the envelope tests."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from wonders.crypto import BodyOpener, PrivateKey, new_request_id

#: A fixed "now" (2026-11-22T00:00:00Z) so expiry checks are deterministic.
NOW = 1_795_305_600.0


def rid(n: int = 0) -> str:
    """A deterministic request id for time NOW."""
    return new_request_id(NOW, n.to_bytes(10, "big"))


def read_body(opener: BodyOpener, segments: Iterable[bytes]) -> bytes:
    """Feed every segment, require the trailer, return the body."""
    body = b"".join(opener.feed(segment) for segment in segments)
    opener.close()
    return body


@pytest.fixture(scope="session")
def fw() -> PrivateKey:
    return PrivateKey.generate("fw1")


@pytest.fixture(scope="session")
def gpu01() -> PrivateKey:
    return PrivateKey.generate("gpu01")


@pytest.fixture(scope="session")
def gpu02() -> PrivateKey:
    return PrivateKey.generate("gpu02")
