"""Hardening item 9: sizes are checked before objects are read.

A 3 GiB ``head`` made the forwarder grow to 1.9 GB: ``get`` read whatever was there. Now
every reader passes the largest size the object can have, and the store refuses a larger
one before reading it.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import boto3
import pytest

from tests.relay.harness import Upstream, WrappedStore, client_for, make_keys, running_forwarder
from wonders.crypto import new_request_id
from wonders.errors import StoreError
from wonders.mailbox import DirectoryStore, S3Store, layout

GiB = 1 << 30


async def test_the_directory_store_refuses_a_3_gib_head_before_reading_it(tmp_path: Path) -> None:
    key = layout.head_key("requests", "gpu01", new_request_id(time.time()))
    path = tmp_path / key
    path.parent.mkdir(parents=True)
    with path.open("wb") as f:
        os.truncate(f.fileno(), 3 * GiB)  # sparse: no disk used
    store = DirectoryStore(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(StoreError) as info:
            await store.get(key, max_bytes=layout.MAX_HEAD_BYTES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes allocated to refuse it"
    message = str(info.value)
    assert key in message
    assert f"{3 * GiB} bytes, over the {layout.MAX_HEAD_BYTES}-byte limit" in message
    assert "\n" not in message


async def test_s3_refuses_an_object_by_its_length_before_reading_it(
    bucket: str, s3_endpoint: str
) -> None:
    size = 6 << 20
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").put_object(
        Bucket=bucket, Key="mailbox/requests/gpu01/x/head", Body=b"\0" * size)
    async with S3Store(bucket, "mailbox", endpoint_url=s3_endpoint, max_attempts=2) as store:
        await store.check()  # the client exists before memory is traced
        tracemalloc.start()
        try:
            with pytest.raises(StoreError) as info:
                await store.get("requests/gpu01/x/head", max_bytes=1 << 20)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2 << 20, f"{peak} bytes allocated to refuse it"
        assert f"{size} bytes, over the {1 << 20}-byte limit" in str(info.value)
        # the connection went back to a usable state: the next read works
        await store.put("small", b"ok")
        assert await store.get("small", max_bytes=2) == b"ok"


class _LyingBody:
    """A body whose length header said it was small, and that never ends."""

    def __init__(self) -> None:
        self.read_bytes = 0

    async def read(self, amt: int | None = None) -> bytes:
        assert amt is not None, "read everything: unbounded"
        self.read_bytes += amt
        return b"\0" * amt


async def test_s3_never_reads_more_than_the_limit_even_if_the_length_lies() -> None:
    store = S3Store("bucket", endpoint_url="http://127.0.0.1:9")
    body = _LyingBody()
    with pytest.raises(StoreError, match="over the 1000-byte limit"):
        await store._read(body, "k", 1000)
    assert body.read_bytes == 1001


class _Spy(WrappedStore):
    """Records the largest object any reader got back."""

    largest = 0

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        data = await (self.inner.get(key) if max_bytes is None
                      else self.inner.get(key, max_bytes=max_bytes))
        self.largest = max(self.largest, len(data))
        return data


async def test_the_forwarder_refuses_an_oversized_head_and_keeps_serving(
    tmp_path: Path, upstream: Upstream
) -> None:
    (tmp_path / "mailbox").mkdir()
    store = _Spy(DirectoryStore(tmp_path / "mailbox"))
    keys = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))
    huge = tmp_path / "mailbox" / layout.head_key("requests", "gpu01", new_request_id(time.time()))
    huge.parent.mkdir(parents=True)
    with huge.open("wb") as f:
        os.truncate(f.fileno(), layout.MAX_HEAD_BYTES + (8 << 20))  # sparse
    async with running_forwarder(store, keys, upstream), client_for(store, keys) as client:
        response = await client.request("GET", f"{upstream.url}/echo", timeout=30)
        async with response:
            assert response.status == 200
            await response.read()
    # listed at the first poll, so handled by the time the forwarder has stopped: refused
    # unread and removed, and the next request was served meanwhile
    assert not huge.exists()
    assert store.largest <= layout.MAX_HEAD_BYTES
