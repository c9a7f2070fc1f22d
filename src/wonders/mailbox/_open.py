"""Mailbox URLs: ``s3://bucket[/prefix]`` and ``file:///absolute/dir``. No I/O here."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from wonders.errors import ConfigError
from wonders.mailbox._directory import DirectoryStore
from wonders.mailbox._store import Store, check_prefix

__all__ = ["open_store"]

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_EXAMPLES = "use s3://BUCKET/PREFIX or file:///ABSOLUTE/DIR"


def open_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    path_style: bool = False,
    max_attempts: int = 5,
    notifications: str = "none",
) -> Store:
    """The store a mailbox URL names. Connecting happens on first use (``check()``).

    ``notifications="minio"``: the S3 endpoint is MinIO; its bucket notifications wake the
    pollers as objects appear (polling stays as the fallback)."""
    if notifications not in ("none", "minio"):
        raise ConfigError(f"notifications {notifications!r}: expected \"none\" or \"minio\"")
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"mailbox {url!r}: a file URL needs an absolute path; {_EXAMPLES}")
        if parts.query or parts.fragment:
            raise ConfigError(f"mailbox {url!r}: a file URL takes no query or fragment")
        if endpoint_url:
            raise ConfigError(f"mailbox {url!r}: an endpoint only applies to s3:// mailboxes")
        if notifications != "none":
            raise ConfigError(f"mailbox {url!r}: notifications only apply to s3:// mailboxes "
                              "(a directory mailbox wakes on filesystem events by itself)")
        return DirectoryStore(unquote(parts.path))
    if parts.scheme == "s3":
        bucket = parts.netloc
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise ConfigError(f"mailbox {url!r}: {bucket!r} is not a valid bucket name")
        if parts.query or parts.fragment:
            raise ConfigError(
                f"mailbox {url!r}: give the endpoint with --endpoint, not in the URL"
            )
        prefix = parts.path.strip("/")
        if prefix:
            try:
                check_prefix(prefix + "/")
            except ValueError:
                raise ConfigError(
                    f"mailbox {url!r}: prefix {prefix!r} may hold only letters, digits, "
                    "'.', '_', '-' and '/'"
                ) from None
        if notifications == "minio" and not endpoint_url:
            raise ConfigError(f"mailbox {url!r}: MinIO notifications need the MinIO endpoint "
                              "(AWS S3 has no notification stream)")
        from wonders.mailbox._s3 import S3Store  # aiobotocore: loaded for an S3 mailbox only

        return S3Store(
            bucket, prefix, endpoint_url=endpoint_url, region=region, path_style=path_style,
            max_attempts=max_attempts, notifications=notifications == "minio",
        )
    raise ConfigError(f"mailbox {url!r}: unsupported scheme {parts.scheme!r}; {_EXAMPLES}")
