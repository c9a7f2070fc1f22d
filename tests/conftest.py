"""Shared fixtures: a clean environment and a real S3 endpoint (moto's server on loopback)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import botocore.loaders
import botocore.session
import pytest
from moto.server import ThreadedMotoServer

from tests.relay.harness import Upstream, serve_upstream
from wonders.mailbox import DirectoryStore, S3Store, Store

_SCRUBBED = (
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
    "all_proxy", "no_proxy", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "WONDERS_CONFIG",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    for name in _SCRUBBED:
        monkeypatch.delenv(name, raising=False)
    # moto accepts any credentials unless told otherwise; these never leave the machine.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    empty = tmp_path_factory.mktemp("aws")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    # a forwarder keeps state beside its default spool file: never the real home's
    monkeypatch.setenv("XDG_STATE_HOME", str(empty / "state"))


@pytest.fixture(scope="session", autouse=True)
def _one_botocore_loader() -> Iterator[None]:
    """Each S3Store opens its own botocore session, and each session parses the S3
    service model again: 0.3 s of JSON for every store a test makes. One loader for the
    test session parses it once. It loads the same files (as one session's clients share
    its loader), so the stores behave as before; they are only quicker to open."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore.session, "create_loader",
                      functools.cache(botocore.loaders.create_loader))
        yield


_MOTO = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # serve until the test session closes this pipe (or dies)
server.stop()
"""


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of moto's S3 server, in its own process on a free loopback port, for the whole
    session (its own process, so it does not share the tests' interpreter lock)."""
    server = subprocess.Popen(
        [sys.executable, "-c", _MOTO], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )
    assert server.stdout is not None
    assert server.stdin is not None
    line = server.stdout.readline()
    if not line.strip().isdigit():
        server.kill()
        raise RuntimeError(f"moto server did not start (said {line!r})")
    yield f"http://127.0.0.1:{int(line)}"
    server.stdin.close()
    server.wait(timeout=30)


@pytest.fixture
def inprocess_s3_endpoint() -> Iterator[str]:
    """A moto server in this process, for tests that switch moto's own settings."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


_buckets = itertools.count()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the moto server."""
    name = f"wonders-test-{next(_buckets)}"
    boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    ).create_bucket(Bucket=name)
    return name


@contextlib.asynccontextmanager
async def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """An empty store of the backend ``request.param`` names ("directory" or "s3")."""
    backend: Store
    if request.param == "directory":
        (tmp_path / "mailbox").mkdir()
        backend = DirectoryStore(tmp_path / "mailbox")
    else:
        name = request.getfixturevalue("bucket")
        endpoint = request.getfixturevalue("s3_endpoint")
        backend = S3Store(name, "mailbox", endpoint_url=endpoint, max_attempts=2)
    async with backend:
        yield backend


@pytest.fixture(params=["directory", pytest.param("s3", marks=pytest.mark.slow)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """Each store backend, empty. Through moto, every store call is an HTTP request and a
    relayed request costs 5-10 times what it costs in a directory, so the S3 variant of the
    tests built on the store is in the slow tier (CI runs it); the store's own suites
    (tests/relay/test_store_contract.py, test_s3_store.py) keep S3 in the fast tier."""
    async with open_backend(request, tmp_path) as backend:
        yield backend


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    """A loopback HTTPS upstream on 127.0.0.1 whose CA only the forwarder is given (the
    proxy tests override this with one on 127.0.0.2, outside NO_PROXY's names)."""
    async with serve_upstream(tmp_path) as server:
        yield server
