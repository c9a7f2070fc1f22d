"""Mailbox URLs."""

from __future__ import annotations

from pathlib import Path

import pytest

from wonders.errors import ConfigError
from wonders.mailbox import DirectoryStore, S3Store, open_store


def test_a_file_url_opens_a_directory_store(tmp_path: Path) -> None:
    store = open_store(tmp_path.as_uri())
    assert isinstance(store, DirectoryStore)
    assert store.root == tmp_path
    assert store.url == tmp_path.as_uri()


def test_a_file_url_is_unescaped(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/with%20space")
    assert isinstance(store, DirectoryStore)
    assert store.root == tmp_path / "with space"


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://wonders-mailbox", "wonders-mailbox", ""),
        ("s3://wonders-mailbox/", "wonders-mailbox", ""),
        ("s3://wonders-mailbox/cluster-a", "wonders-mailbox", "cluster-a/"),
        ("s3://wonders-mailbox/cluster-a/v1/", "wonders-mailbox", "cluster-a/v1/"),
    ],
)
def test_an_s3_url_names_the_bucket_and_the_prefix(url: str, bucket: str, prefix: str) -> None:
    store = open_store(url, endpoint_url="http://127.0.0.1:9000", path_style=True)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == (bucket, prefix)
    assert store.endpoint_url == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://bucket/x", "unsupported scheme 'http'; use s3://BUCKET/PREFIX or file:///"),
        ("/shared/dir", "unsupported scheme ''"),
        ("file://relative/dir", "needs an absolute path"),
        ("file:///d?x=1", "takes no query"),
        ("s3://Bad_Bucket/x", "'Bad_Bucket' is not a valid bucket name"),
        ("s3://ab/x", "'ab' is not a valid bucket name"),
        ("s3:///x", "'' is not a valid bucket name"),
        ("s3://bucket/x?endpoint=http://h", "give the endpoint with --endpoint"),
        ("s3://bucket/bad prefix", "prefix 'bad prefix' may hold only"),
        ("s3://bucket/a/../b", "may hold only"),
    ],
)
def test_bad_urls_are_clear_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match="mailbox") as info:
        open_store(url)
    assert message in str(info.value)


def test_an_endpoint_is_refused_for_a_directory_mailbox(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only applies to s3"):
        open_store(tmp_path.as_uri(), endpoint_url="http://127.0.0.1:9000")
