"""One failed store call never stalls a download (issue 13).

Seen once in CI (second session, before flow control existed): the 512 MiB download of
``test_512_mib_with_both_processes_peak_memory_reported`` broke off at exactly 256 MiB,
after the client had waited its whole idle timeout (300 s, the run took twice its usual
time) for "body segment 64". The forwarder's put of that segment had failed once: the
directory store of the time raised "a parent is a file" when the client's delete of
segment 63 emptied and removed ``body/`` between the put's ``mkdir`` and its check that the
directory exists (``test_a_put_lands_while_a_delete_empties_and_removes_its_directory``
holds that race shut). The forwarder gave up the response on that one error, with nothing
stored to tell the client, which could only time out.

The store race is gone, but the rest stood: one failed segment put, or one failed delete of
a read segment (the only sign the forwarder has that it was read), ended a download after a
long silence. Now the forwarder stores a segment again until the store takes it, and the
client deletes a read segment again until the store takes that.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from tests.relay.harness import (
    FAST,
    Upstream,
    WrappedStore,
    client_for,
    make_keys,
    running_forwarder,
)
from wonders.errors import StoreError
from wonders.mailbox import Store

SEGMENT = 64 * 1024
SEGMENTS = 12
SIZE = SEGMENT * SEGMENTS
#: The client gives up on a segment after this long; the forwarder waits this long for room.
CLIENT_TIMEOUT, READ_TIMEOUT = 20.0, 10.0


class FailsOnce(WrappedStore):
    """The first ``action`` on the key ending in ``suffix`` fails with a StoreError, as a
    transient store failure does; every other call goes through."""

    def __init__(self, inner: Store, action: str, suffix: str) -> None:
        super().__init__(inner)
        self.action, self.suffix = action, suffix
        self.failed = False

    def _on(self, action: str, key: str) -> None:
        if not self.failed and action == self.action and key.endswith(self.suffix):
            self.failed = True
            raise StoreError(f"{self.inner.url}: cannot {action} {key}: a parent is a file "
                             "(one transient failure, made by the test)")


async def _download(forwarder_store: Store, client_store: Store, tmp_path: Path,
                    upstream: Upstream) -> tuple[bytes, list[str]]:
    """The body of /bytes/SIZE in segments of SEGMENT, and the objects of the response left
    once it is closed. Before the fix, reading raised RelayTimeout: "no body segment N"."""
    keys = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))
    settings = dataclasses.replace(FAST, segment_size=SEGMENT, read_timeout=READ_TIMEOUT,
                                   flush_delay=5.0)  # full segments only: the index is known
    async with running_forwarder(forwarder_store, keys, upstream, settings), \
            client_for(client_store, keys) as client:
        response = await client.request("GET", f"{upstream.url}/bytes/{SIZE}",
                                        timeout=CLIENT_TIMEOUT)
        async with response:
            body = await response.read()
    # once the client is closed, its deletes in the background are done
    left = [k async for k in client_store.list(f"responses/gpu01/{response.id}/")]
    return body, left


async def test_a_segment_the_store_fails_to_take_once_is_stored_again(
    store: Store, tmp_path: Path, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "wonders")
    failing = FailsOnce(store, "s3:PutObject", "body/00000005")
    body, left = await _download(failing, store, tmp_path, upstream)
    assert failing.failed
    assert body == (bytes(range(256)) * 4096)[:SIZE]
    assert "body/00000005, retrying" in caplog.text  # the failure is said, once
    assert left == []


async def test_a_read_segment_whose_delete_failed_does_not_hold_the_response_back(
    store: Store, tmp_path: Path, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "wonders")
    failing = FailsOnce(store, "s3:DeleteObject", "body/00000003")
    body, left = await _download(store, failing, tmp_path, upstream)
    assert failing.failed
    assert body == (bytes(range(256)) * 4096)[:SIZE]
    assert "client-stopped-reading" not in caplog.text
    assert "could not delete" in caplog.text  # said, and done again
    assert left == []
