"""S3Store behaviour beyond the contract: checksums, lost replies, and one-line errors.

All against moto's S3 server on a loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import boto3
import moto.settings
import pytest
from botocore.exceptions import ClientError

from wonders.errors import ObjectExists, ObjectNotFound, StoreError
from wonders.mailbox import S3Store


@pytest.fixture
async def s3store(bucket: str, s3_endpoint: str) -> AsyncIterator[S3Store]:
    async with S3Store(bucket, "pfx", endpoint_url=s3_endpoint, max_attempts=3) as store:
        yield store


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


async def test_uploads_carry_a_sha256_checksum_the_server_stores(
    s3store: S3Store, bucket: str, s3_endpoint: str
) -> None:
    data = b"sealed bytes" * 1000
    await s3store.put("requests/gpu01/x/head", data)
    head = boto3.client("s3", endpoint_url=s3_endpoint).head_object(
        Bucket=bucket, Key="pfx/requests/gpu01/x/head", ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


async def test_prefix_confines_the_store(bucket: str, s3_endpoint: str) -> None:
    async with (
        S3Store(bucket, "a", endpoint_url=s3_endpoint) as a,
        S3Store(bucket, "b/", endpoint_url=s3_endpoint) as b,
    ):
        await a.put("k", b"from a")
        await b.put("k", b"from b")
        assert [k async for k in a.list("")] == ["k"]
        assert await a.get("k") == b"from a"
        assert await b.get("k") == b"from b"
        assert a.url == f"s3://{bucket}/a/"


def _lose_first_reply(seen: list[int]) -> Any:
    """A botocore needs-retry hook that makes attempt 1 look lost, whatever it returned."""

    def hook(attempts: int, **kwargs: Any) -> int | None:
        seen.append(attempts)
        return 0 if attempts == 1 else None  # retry at once, as after a dropped reply

    return hook


async def test_create_only_whose_reply_was_lost_succeeds(s3store: S3Store) -> None:
    """Attempt 1 creates the object; its reply is 'lost'; the retry gets 412. The store
    reads the object back, finds its own bytes, and reports success."""
    seen: list[int] = []
    client = await s3store._s3()
    client.meta.events.register_first("needs-retry.s3.PutObject", _lose_first_reply(seen))
    await s3store.put("claims/01", b"my claim token", create_only=True)
    assert seen[:2] == [1, 2]
    assert await s3store.get("claims/01") == b"my claim token"


async def test_create_only_retry_that_finds_another_writers_object_fails(
    s3store: S3Store,
) -> None:
    await s3store.put("claims/01", b"another forwarder's claim", create_only=True)
    seen: list[int] = []
    client = await s3store._s3()
    client.meta.events.register_first("needs-retry.s3.PutObject", _lose_first_reply(seen))
    with pytest.raises(ObjectExists):
        await s3store.put("claims/01", b"my claim token", create_only=True)
    assert seen[:2] == [1, 2]
    assert await s3store.get("claims/01") == b"another forwarder's claim"


async def test_missing_bucket_is_one_line_naming_endpoint_and_bucket(s3_endpoint: str) -> None:
    async with S3Store("no-such-bucket", endpoint_url=s3_endpoint) as store:
        for attempt in (store.check(), store.get("k"), store.put("k", b"x")):
            with pytest.raises(StoreError) as info:
                await attempt
            message = _one_line(info.value)
            assert s3_endpoint in message
            assert "'no-such-bucket' does not exist" in message
            assert not isinstance(info.value, ObjectNotFound)


async def test_wrong_credentials_are_one_line(
    inprocess_s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = inprocess_s3_endpoint
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="creds-test")
    async with S3Store("creds-test", endpoint_url=endpoint, max_attempts=1) as store:
        await store.put("k", b"x")
        monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # check keys
        for attempt in (store.check(), store.get("k"), store.put("k", b"y")):
            with pytest.raises(StoreError) as info:
                await attempt
            message = _one_line(info.value)
            assert "credentials rejected (InvalidAccessKeyId)" in message
            assert endpoint in message


async def test_unreachable_endpoint_is_one_line() -> None:
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    async with S3Store("bucket", endpoint_url=endpoint, max_attempts=1) as store:
        with pytest.raises(StoreError) as info:
            await store.check()
    message = _one_line(info.value)
    assert f"s3://bucket/ at {endpoint}: cannot reach the endpoint" in message


async def test_a_body_cut_short_by_the_endpoint_is_a_store_error_in_one_line() -> None:
    """The connection breaks in the middle of an object's body (an endpoint restarting, a
    proxy giving up). aiohttp raises ClientPayloadError there, which is no botocore error:
    it went past the mapping, and the client, which rides out StoreError, ended the
    download at once (the proxy then broke the connection on an unhandled exception)."""

    async def cut_short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nthe first bytes only")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(cut_short, "127.0.0.1", 0)
    endpoint = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def stream(store: S3Store) -> None:
        async for _ in store.stream("k"):
            pass

    async with server, S3Store("bucket", endpoint_url=endpoint, max_attempts=1) as store:
        for read in (store.get("k"), store.get("k", max_bytes=4096), stream(store)):
            with pytest.raises(StoreError) as info:
                await read
            message = _one_line(info.value)
            assert f"s3://bucket/ at {endpoint}: cannot read k: " in message


def _client_error(code: str, status: int, operation: str = "GetObject") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


@pytest.mark.parametrize(
    ("code", "status", "missing", "expected", "text"),
    [
        ("AccessDenied", 403, True, ObjectNotFound, "lack s3:ListBucket"),
        ("403", 403, True, ObjectNotFound, "lack s3:ListBucket"),
        ("AccessDenied", 403, False, StoreError, "access denied to write k"),
        ("NoSuchKey", 404, True, ObjectNotFound, "no object k"),
        ("SignatureDoesNotMatch", 403, True, StoreError, "credentials rejected"),
        ("SlowDown", 503, False, StoreError, "cannot write k: m (SlowDown)"),
    ],
)
def test_each_s3_error_becomes_a_one_line_store_error(
    code: str, status: int, missing: bool, expected: type[StoreError], text: str
) -> None:
    """S3 answers AccessDenied (not 404) for a missing key when the credentials lack
    s3:ListBucket; moto does not model that, so the mapping is checked directly."""
    store = S3Store("bucket", endpoint_url="http://127.0.0.1:9")
    mapped = store._mapped("read" if missing else "write", "k", missing=missing)
    with pytest.raises(StoreError) as info, mapped:
        raise _client_error(code, status)
    assert type(info.value) is expected
    assert text in _one_line(info.value)
