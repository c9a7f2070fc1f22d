"""A mailbox writer can give an object any name (on S3 too, under its own prefix): a
name that is not a valid object key must not stop the forwarder.

Before: the listing reported ``requests/gpu01/bad name/head``; the forwarder took it for
junk and deleted it, ``check_key`` raised ValueError, and the poll loop died with it.
"""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from tests.relay.harness import Upstream, client_for, make_keys, running_forwarder
from wonders.mailbox import DirectoryStore, S3Store, Store

BAD_NAMES = ["requests/gpu01/bad name/head", "requests/gpu01/ümlaut/head",
             "requests/gpu01/x/y/z/w/head"]


def _plant(store: Store, key: str, data: bytes, request: pytest.FixtureRequest) -> None:
    """Write an object under any name, as a mailbox writer can (not through the store)."""
    if isinstance(store, DirectoryStore):
        path = store.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    assert isinstance(store, S3Store)
    boto3.client("s3", endpoint_url=request.getfixturevalue("s3_endpoint"),
                 region_name="us-east-1").put_object(
        Bucket=store.bucket, Key=store.prefix + key, Body=data)


async def test_objects_with_unusable_names_do_not_stop_the_forwarder(
    store: Store, tmp_path: Path, upstream: Upstream, request: pytest.FixtureRequest
) -> None:
    for name in BAD_NAMES:
        _plant(store, name, b"junk", request)
    keys = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))
    async with running_forwarder(store, keys, upstream), \
            client_for(store, keys) as client:
        response = await client.request("GET", f"{upstream.url}/echo", timeout=20)
        async with response:
            assert response.status == 200
            await response.read()
    listed = [k async for k in store.list("")]
    assert not any(" " in k or "ü" in k for k in listed)
