"""Fixtures and helpers shared by the hardening regression tests."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.eventually import eventually
from tests.relay.harness import Keys, Upstream, make_keys
from wonders.audit import Batch, batch_keys, read_batches
from wonders.crypto import PrivateKey
from wonders.mailbox import Store


@pytest.fixture
def keys(tmp_path: Path, upstream: Upstream) -> Keys:
    return make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))


async def until(condition: Callable[[], Awaitable[bool]], what: str,
                within: float = 30.0) -> None:
    """:func:`tests.eventually.eventually` under its old name, for the replay tests (being
    edited on another branch); new code calls ``eventually``."""
    await eventually(condition, within, what=what)


async def records(store: Store, signer: PrivateKey) -> list[dict[str, Any]]:
    """Every record of every verified batch."""
    keys = await batch_keys(store, None, time.time())
    found = [item async for item in read_batches(store, keys, signer.public)]
    assert all(isinstance(b, Batch) for b in found), found
    return [r for b in found if isinstance(b, Batch) for r in b.records]
