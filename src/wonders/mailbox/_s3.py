"""``S3Store``: the mailbox in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, …).

One long-lived aiobotocore client per store, created on first use. Credentials come from
the standard AWS chain (environment, shared profile, instance role); ``endpoint_url``
points at MinIO and other servers, ``path_style`` forces path addressing.

- Uploads carry S3's own SHA-256 checksum (``ChecksumAlgorithm="SHA256"``) so the server
  rejects a corrupted upload; downloads ask for it back (``ChecksumMode``) and botocore
  checks it where the server returns one.
- Create-only puts use ``If-None-Match: *``. botocore retries failed attempts; when a retry
  of our own create answers 412 (the first attempt succeeded but its reply was lost), the
  object is read back: if it holds our bytes, the put succeeded.
- A bucket policy without ``s3:ListBucket`` makes S3 answer 403 ``AccessDenied`` for a
  missing key; reads map that to :class:`ObjectNotFound` and say so in the message.
- ``get(max_bytes=…)`` refuses an object whose ``Content-Length`` is over the limit
  before reading its body, and never reads more than the limit + 1 bytes.
- ``list`` reports only keys that are valid object keys: anyone who may write under a
  prefix can give an object any name, and a name wonders cannot use is not one of its
  objects.
- botocore and aiohttp errors are converted here, into one line that names the endpoint,
  the bucket and the cause; a body cut short is one too (aiohttp raises it, not botocore),
  so callers that ride out store failures ride out that one as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, NoReturn, Self

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from wonders.errors import ObjectExists, ObjectNotFound, ObjectTooLarge, StoreError
from wonders.mailbox._store import OddKeys, check_key, check_prefix

__all__ = ["S3Store"]

log = logging.getLogger("wonders.store")
_CHUNK = 1 << 20

_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
     "InvalidClientTokenId", "AuthorizationHeaderMalformed"}
)
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})

log = logging.getLogger("wonders.store")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _retried(exc: ClientError) -> bool:
    return int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0)) > 0


class S3Store:
    """A mailbox in an S3 bucket, under an optional key prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        path_style: bool = False,
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_connections: int = 64,
        notifications: bool = False,
    ) -> None:
        """``notifications``: the endpoint is MinIO, whose bucket notifications wake the
        pollers (see :mod:`wonders.mailbox._notify`)."""
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix:
            check_prefix(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self.notifications = notifications
        self._config = AioConfig(
            region_name=region,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_connections,
            s3={"addressing_style": "path" if path_style else "auto"},
        )
        self._client: Any = None
        self._exit: contextlib.AsyncExitStack | None = None
        self._lock = asyncio.Lock()
        # names that are not keys, reported once each (bounded), never again on each listing
        self._odd = OddKeys(log)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def _where(self) -> str:
        endpoint = self.endpoint_url or "AWS S3"
        return f"{self.url} at {endpoint}"

    # ------------------------------------------------------------------ lifecycle

    async def _s3(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    stack = contextlib.AsyncExitStack()
                    with self._mapped("connect to"):
                        client = await stack.enter_async_context(
                            get_session().create_client(
                                "s3", endpoint_url=self.endpoint_url, config=self._config
                            )
                        )
                    self._exit, self._client = stack, client
        return self._client

    async def close(self) -> None:
        if self._exit is not None:
            exit_stack, self._exit, self._client = self._exit, None, None
            await exit_stack.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def check(self, prefix: str = "") -> None:
        s3 = await self._s3()
        with self._mapped("list", prefix or "/"):
            await s3.list_objects_v2(
                Bucket=self.bucket, Prefix=self.prefix + check_prefix(prefix), MaxKeys=1
            )

    # -------------------------------------------------------------- error mapping

    @contextlib.contextmanager
    def _mapped(self, action: str, key: str = "", *, missing: bool = False) -> Iterator[None]:
        """Convert botocore errors raised inside into StoreError (one line)."""
        what = f"{action} {key}".strip()
        try:
            yield
        except ClientError as exc:
            self._raise_client_error(exc, what, key, missing)
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StoreError(
                f"{self._where}: no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from None
        except BotoConnectionError as exc:
            cause = getattr(exc, "kwargs", {}).get("error") or type(exc).__name__
            raise StoreError(f"{self._where}: cannot reach the endpoint ({cause})") from None
        except BotoCoreError as exc:
            raise StoreError(f"{self._where}: cannot {what}: {exc}") from None
        except aiohttp.ClientError as exc:
            # a body cut short (ClientPayloadError) is aiohttp's alone: botocore maps only
            # what goes wrong before the body is read
            raise StoreError(f"{self._where}: cannot {what}: the connection broke off "
                             f"({type(exc).__name__}: {exc})") from None

    def _raise_client_error(self, exc: ClientError, what: str, key: str, missing: bool) -> NoReturn:
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            raise StoreError(f"{self._where}: bucket {self.bucket!r} does not exist") from None
        if missing and (code in _MISSING_CODES or status == 404):
            raise ObjectNotFound(f"{self._where}: no object {key}") from None
        if missing and code in ("AccessDenied", "403"):
            raise ObjectNotFound(
                f"{self._where}: no object {key}, or not readable (S3 answers AccessDenied "
                "for a missing key when the credentials lack s3:ListBucket)"
            ) from None
        if code in _CREDENTIAL_CODES:
            raise StoreError(
                f"{self._where}: credentials rejected ({code}); check AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            ) from None
        if code in ("AccessDenied", "403"):
            raise StoreError(
                f"{self._where}: access denied to {what}; the bucket policy does not "
                "grant it to these credentials"
            ) from None
        message = exc.response.get("Error", {}).get("Message") or code
        raise StoreError(f"{self._where}: cannot {what}: {message} ({code or status})") from None

    # ---------------------------------------------------------------------- write

    async def put(self, key: str, data: bytes, *, create_only: bool = False) -> None:
        full = self.prefix + check_key(key)
        s3 = await self._s3()
        extra = {"IfNoneMatch": "*"} if create_only else {}
        with self._mapped("write", key):
            try:
                await s3.put_object(
                    Bucket=self.bucket, Key=full, Body=data, ChecksumAlgorithm="SHA256", **extra
                )
            except ClientError as exc:
                if create_only and _code(exc) in ("PreconditionFailed", "412"):
                    if _retried(exc) and await self._holds(s3, full, data):
                        return  # our first attempt landed; only its reply was lost
                    raise ObjectExists(f"{self._where}: {key} already exists") from None
                if create_only and _code(exc) == "ConditionalRequestConflict":
                    raise ObjectExists(
                        f"{self._where}: {key} is being created by another writer"
                    ) from None
                raise

    async def _holds(self, s3: Any, full: str, data: bytes) -> bool:
        try:
            response = await s3.get_object(Bucket=self.bucket, Key=full)
            async with response["Body"] as body:
                if int(response.get("ContentLength", len(data))) != len(data):
                    return False
                return bool(await self._read(body, full, len(data)) == data)
        except (ClientError, ObjectTooLarge):
            return False

    async def delete(self, key: str) -> None:
        full = self.prefix + check_key(key)
        s3 = await self._s3()
        with self._mapped("delete", key):
            await s3.delete_object(Bucket=self.bucket, Key=full)

    # ----------------------------------------------------------------------- read

    async def get(self, key: str, *, max_bytes: int | None = None) -> bytes:
        full = self.prefix + check_key(key)
        s3 = await self._s3()
        with self._mapped("read", key, missing=True):
            response = await s3.get_object(Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
            async with response["Body"] as body:  # leaving it unread closes the connection
                if max_bytes is None:
                    data: bytes = await body.read()
                    return data
                size = int(response.get("ContentLength") or 0)
                if size > max_bytes:
                    raise self._too_large(key, size, max_bytes)
                return await self._read(body, key, max_bytes)

    def _too_large(self, key: str, size: int, limit: int) -> ObjectTooLarge:
        return ObjectTooLarge(
            f"{self._where}: {key} is {size} bytes, over the {limit}-byte limit for it; "
            "refused unread", key=key, size=size, limit=limit)

    async def _read(self, body: Any, key: str, max_bytes: int) -> bytes:
        """At most ``max_bytes + 1`` bytes of ``body``, whatever its stated length."""
        pieces: list[bytes] = []
        total = 0
        while total <= max_bytes:
            piece: bytes = await body.read(min(_CHUNK, max_bytes + 1 - total))
            if not piece:
                break
            pieces.append(piece)
            total += len(piece)
        if total > max_bytes:
            raise self._too_large(key, total, max_bytes)
        return b"".join(pieces)

    async def stream(self, key: str, *, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        full = self.prefix + check_key(key)
        s3 = await self._s3()
        with self._mapped("read", key, missing=True):
            response = await s3.get_object(Bucket=self.bucket, Key=full, ChecksumMode="ENABLED")
        async with response["Body"] as body:
            while True:
                with self._mapped("read", key):
                    chunk = await body.read(chunk_size)
                if not chunk:
                    return
                yield chunk

    async def exists(self, key: str) -> bool:
        full = self.prefix + check_key(key)
        s3 = await self._s3()
        try:
            with self._mapped("read", key, missing=True):
                await s3.head_object(Bucket=self.bucket, Key=full)
        except ObjectNotFound:
            return False
        return True

    async def list(self, prefix: str, *, start_after: str | None = None) -> AsyncIterator[str]:
        full = self.prefix + check_prefix(prefix)
        s3 = await self._s3()
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
        if start_after is not None:
            kwargs["StartAfter"] = self.prefix + start_after
        while True:
            with self._mapped("list", prefix or "/"):
                page = await s3.list_objects_v2(**kwargs)
            for item in page.get("Contents", ()):
                key = item["Key"][len(self.prefix) :]
                try:
                    check_key(key)
                except ValueError:
                    self._odd.report(key, f"{self.url}: ignored: not a valid object key "
                                          "(letters, digits, '.', '_', '-' only)")
                    continue
                yield key
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
            kwargs["ContinuationToken"] = token
