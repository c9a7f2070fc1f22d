"""MinIO bucket notifications as wakeups: a poller of an S3 mailbox on MinIO lists again as
soon as an object is created below its prefix, instead of at its next poll interval.

MinIO's ListenBucketNotification extension (``GET /BUCKET?prefix=…&events=…``, signed like
any S3 call) answers with a stream of JSON lines, ``{"Records": [...]}`` per event and
blank lines to keep the connection open. AWS S3 has no such call. Events are hints: each
one only makes the poller LIST sooner, and what the LIST finds is verified as always, so a
forged or lost event costs at most one LIST or one poll interval. When the stream breaks,
the listener reconnects with a backoff while polling goes on at its own intervals.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from urllib.parse import quote, urlencode

import aiohttp
from aiobotocore.session import get_session
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

from wonders.mailbox._s3 import S3Store

__all__ = ["listen_minio"]

log = logging.getLogger("wonders.notify")

EVENTS = ("s3:ObjectCreated:*",)
#: Longest line accepted from the stream: one event's JSON is well under this.
MAX_LINE = 1 << 20


async def signed_listen_request(store: S3Store, prefix: str) -> tuple[str, dict[str, str]]:
    """The URL and signed headers of a ListenBucketNotification call for ``prefix`` (below
    the store's own prefix)."""
    if store.endpoint_url is None:
        raise ValueError("bucket notifications need a MinIO endpoint (AWS S3 has none)")
    query = urlencode([("prefix", store.prefix + prefix), ("suffix", ""),
                       *(("events", e) for e in EVENTS)])
    url = f"{store.endpoint_url.rstrip('/')}/{quote(store.bucket)}?{query}"
    credentials = await get_session().get_credentials()
    if credentials is None:
        raise ValueError("no AWS credentials for the notification stream")
    frozen = await credentials.get_frozen_credentials()
    request = AWSRequest(method="GET", url=url, headers={})
    S3SigV4Auth(frozen, "s3", store.region or "us-east-1").add_auth(request)
    return url, {k: str(v) for k, v in request.headers.items()}


async def listen_minio(store: S3Store, prefix: str, wake: Callable[[], None], *,
                       retry_max: float = 30.0) -> None:
    """Call ``wake()`` for each object created below ``prefix``, until cancelled."""
    delay = 0.5
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            try:
                url, headers = await signed_listen_request(store, prefix)
                async with session.get(url, headers=headers) as response:
                    if response.status != 200:
                        body = (await response.content.read(500)).decode("utf-8", "replace")
                        raise OSError(f"HTTP {response.status}: {body.strip()[:200]}")
                    log.info("bucket notifications for %s%s: listening", store.url, prefix)
                    delay = 0.5
                    wake()  # what was created before the stream opened: poll once
                    await _read_events(response, wake)
                raise OSError("the stream ended")
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                log.warning("bucket notifications for %s%s: %s; polling meanwhile, "
                            "reconnecting in %.1f s", store.url, prefix, exc, delay)
            await asyncio.sleep(delay)  # the reconnection backoff
            delay = min(delay * 2, retry_max)


async def _read_events(response: aiohttp.ClientResponse, wake: Callable[[], None]) -> None:
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        if len(buffer) > MAX_LINE and b"\n" not in buffer:
            raise OSError("a notification line over 1 MiB")
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if _has_records(line):
                wake()


def _has_records(line: bytes) -> bool:
    line = line.strip()
    if not line:
        return False  # keep-alive
    try:
        doc = json.loads(line)
    except ValueError:
        return False
    return isinstance(doc, dict) and bool(doc.get("Records"))
